"""A small TurboGears 2.5 application that shows tgext.asyncjob at work.

Run it with ``python -m tgext.asyncjob.demo`` (``--help`` for options), or build it
in-process with :func:`make_demo_app` (WSGI app) or :func:`build_demo` (app and handles).
"""
from .app import DemoApp, build_demo, make_demo_app

__all__ = ['DemoApp', 'build_demo', 'make_demo_app']
