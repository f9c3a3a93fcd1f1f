"""Packaging: a PEP 420 ``tgext`` namespace, no tests in the wheel, typed."""
import configparser
import pathlib

from setuptools import find_namespace_packages

ROOT = pathlib.Path(__file__).parent.parent


def test_tgext_is_a_namespace_shared_with_tgext_pluggable():
    import tgext
    import tgext.asyncjob
    import tgext.pluggable
    assert not (ROOT / 'tgext' / '__init__.py').exists()
    assert getattr(tgext, '__file__', None) is None  # a namespace package has no file
    assert len(list(tgext.__path__)) >= 2


def test_the_distribution_ships_the_package_only_and_py_typed():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / 'setup.cfg')
    include = cfg['options.packages.find']['include'].split()
    packages = find_namespace_packages(where=str(ROOT), include=include)
    assert 'tgext.asyncjob' in packages
    assert not [p for p in packages if p.split('.')[0] != 'tgext']
    assert 'py.typed' in cfg['options.package_data']['tgext.asyncjob']
    assert (ROOT / 'tgext' / 'asyncjob' / 'py.typed').exists()


def test_extras_and_python_requirement():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / 'setup.cfg')
    extras = cfg['options.extras_require']
    assert {'redis', 'rq', 'test', 'demo', 'pluggable'} <= set(extras)
    assert cfg['options']['python_requires'] == '>=3.10'
