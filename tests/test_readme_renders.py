"""README.rst is valid reStructuredText (it is the package's long description)."""
import io
import pathlib

import docutils.core

README = pathlib.Path(__file__).parent.parent / 'README.rst'


def test_readme_renders_without_warnings():
    errors = io.StringIO()
    docutils.core.publish_string(README.read_text(), writer='html',
                                 settings_overrides={'report_level': 2, 'halt_level': 5,
                                                     'warning_stream': errors})
    assert errors.getvalue() == ''
