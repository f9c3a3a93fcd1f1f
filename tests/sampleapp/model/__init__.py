"""The application's model objects, shaped like a quickstarted project.

``DBSession`` is the module-level, zope.sqlalchemy-registered scoped session
every quickstarted app has; :func:`init_model` binds it.  An application built
while another one is still alive needs its own session bound to its own
engine: :func:`new_session` makes one (see ``sampleapp.config.make_app``).
"""

from sqlalchemy import orm
from sqlalchemy.orm import scoped_session, sessionmaker
from zope.sqlalchemy import register


def new_session():
    """Return a fresh scoped session joined to the ``transaction`` manager."""
    # SQLAlchemy 2 has no ``autocommit`` argument any more; transactions are
    # driven by zope.sqlalchemy through the transaction manager.
    session = scoped_session(sessionmaker(autoflush=True))
    register(session)
    return session


# Global session manager: DBSession() returns the Thread-local
# session object appropriate for the current web request.
DBSession = new_session()


class DeclarativeBase(orm.DeclarativeBase):
    """Base class for all mapped classes of the application."""


# There are two convenient ways for you to spare some typing.
# You can have a query property on all your model classes by doing this:
# DeclarativeBase.query = DBSession.query_property()
metadata = DeclarativeBase.metadata


def init_model(engine):
    """Call me before using any of the tables or classes in the model."""
    DBSession.configure(bind=engine)


# Import your model modules here.
from sampleapp.model.tables import Group, Row  # noqa: E402,F401
