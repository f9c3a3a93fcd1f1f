"""README.rst is valid reStructuredText (it is the package's long description), on its
own: plain docutils, as PyPI renders it, not Sphinx."""
import io
import pathlib

import docutils.core
from docutils.writers import html5_polyglot

README = pathlib.Path(__file__).parent.parent / 'README.rst'


def test_readme_renders_without_warnings():
    errors = io.StringIO()
    # A writer object, not its name: the one spelling docutils 0.21 (Sphinx 8.1, the last
    # on Python 3.10) and 0.22 both accept.
    docutils.core.publish_string(README.read_text(), writer=html5_polyglot.Writer(),
                                 settings_overrides={'report_level': 2, 'halt_level': 5,
                                                     'warning_stream': errors})
    assert errors.getvalue() == ''
