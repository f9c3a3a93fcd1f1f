"""The Sphinx documentation under docs/ builds with no warning at all (``-W``), its
settings reference is the settings definition, and README's links into it resolve.
Its Python examples are run by tests/test_readme.py, with README's."""
import html
import pathlib
import re
import subprocess
import sys

import pytest

from tgext.asyncjob import settings

ROOT = pathlib.Path(__file__).parent.parent
DOCS = ROOT / 'docs'


@pytest.fixture(scope='module')
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp('docs-html')
    # A process of its own: autodoc imports the package afresh, as sphinx-build would.
    proc = subprocess.run([sys.executable, '-m', 'sphinx', '-W', '--keep-going', '-E', '-q',
                           '-b', 'html', str(DOCS), str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr + proc.stdout
    return out


def test_the_docs_build_without_warnings(built):
    pages = {p.relative_to(DOCS).with_suffix('.html') for p in DOCS.rglob('*.rst')}
    assert pages and all((built / page).is_file() for page in pages)


def test_the_settings_reference_lists_every_setting_as_defined(built):
    page = html.unescape(re.sub(r'<[^>]+>', '', (built / 'settings.html').read_text()))
    text = page.replace('\u2019', "'")  # Sphinx's smart quotes
    for setting in settings.SETTINGS:
        assert setting.key in text, setting.key
        assert setting.doc.replace('``', '') in text, setting.doc


def test_the_api_reference_documents_every_public_name(built):
    import tgext.asyncjob
    page = (built / 'api.html').read_text()
    missing = [name for name in tgext.asyncjob.__all__
               if f'id="tgext.asyncjob.{name}"' not in page]
    assert not missing


def test_readme_links_to_docs_pages_that_exist():
    readme = (ROOT / 'README.rst').read_text()
    targets = re.findall(r'<(docs/[^>#]+\.rst)(?:#[^>]*)?>`_', readme)
    assert targets
    assert [t for t in targets if not (ROOT / t).is_file()] == []
