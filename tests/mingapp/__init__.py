"""A TurboGears 2.5 application configured as ``gearbox quickstart --ming`` configures one.

``use_ming = true``, ``tm.enabled = false`` and a module-level ``ThreadLocalODMSession``,
against Ming's in-memory MongoDB (``mim://``). :func:`mingapp.config.make_app` builds
one; with ``sqlalchemy_url`` it also has a SQLAlchemy ``DBSession`` (an app using both).
"""
