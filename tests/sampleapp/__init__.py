"""A quickstart-shaped TurboGears 2.5 application used by the test suite.

Build instances with :func:`sampleapp.config.make_app` (or, in tests, the
``make_app`` fixture, which also tears them down).
"""
