"""``python -m tgext.asyncjob``: the command line of :mod:`tgext.asyncjob.cli`."""
import sys

from .cli import main

sys.exit(main())
