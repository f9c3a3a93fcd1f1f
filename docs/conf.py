"""Sphinx configuration: ``sphinx-build -W -b html docs build/docs`` (tests/test_docs.py
builds it so, warnings as errors). No network: no intersphinx, a built-in theme."""
import configparser
import pathlib
import sys

HERE = pathlib.Path(__file__).parent
sys.path.insert(0, str(HERE / '_ext'))

_metadata = configparser.ConfigParser()
_metadata.read(HERE.parent / 'setup.cfg')

project = 'tgext.asyncjob'
release = version = _metadata['metadata']['version']
copyright = 'the tgext.asyncjob authors, MIT License'

extensions = ['sphinx.ext.autodoc', 'asyncjob_docs']
root_doc = 'index'
exclude_patterns = ['_build', '_ext']
html_theme = 'alabaster'
html_static_path: list = []

autodoc_member_order = 'bysource'
autodoc_typehints_format = 'short'  # ``Callable``, not ``typing.Callable``
