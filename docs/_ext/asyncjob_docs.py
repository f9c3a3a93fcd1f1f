"""Sphinx directives that insert text generated from the code, so that it cannot go
stale: ``.. asyncjob-settings::`` is the table of every setting, from
:func:`tgext.asyncjob.settings.rst_reference`."""
from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective


class SettingsTable(SphinxDirective):
    """The settings reference table, built from ``tgext.asyncjob.settings.SETTINGS``."""

    def run(self) -> list[nodes.Node]:
        from tgext.asyncjob import settings
        self.env.note_dependency(settings.__file__)  # rebuilt when the definition changes
        return self.parse_text_to_nodes(settings.rst_reference())


def setup(app: Sphinx) -> dict:
    app.add_directive('asyncjob-settings', SettingsTable)
    return {'parallel_read_safe': True, 'parallel_write_safe': True}
