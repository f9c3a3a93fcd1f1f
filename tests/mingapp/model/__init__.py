"""The application's model objects, shaped like a Ming quickstart's ``model``.

``DBSession`` is the ``ThreadLocalODMSession`` every Ming quickstart has. The same
``init_model`` also binds the SQLAlchemy session when the app uses both: TurboGears
calls it once with the SQLAlchemy engine and once with the Ming datastore.
"""
from ming import Session
from ming.odm import Mapper, ThreadLocalODMSession
from sqlalchemy import Column, Integer, Unicode
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, scoped_session, sessionmaker
from zope.sqlalchemy import register

mainsession = Session()
DBSession = ThreadLocalODMSession(mainsession)

# Only for the app that also uses SQLAlchemy (``use_sqlalchemy``).
SQLASession = scoped_session(sessionmaker(autoflush=True))
register(SQLASession)


class Base(DeclarativeBase):
    """SQLAlchemy tables of the app that uses both."""


class Row(Base):
    __tablename__ = 'rows'
    id = Column(Integer, primary_key=True)
    name = Column(Unicode(255), nullable=False)


def init_model(bind):
    """Bind the Ming session to the datastore, or the SQLAlchemy one to the engine."""
    if isinstance(bind, Engine):
        SQLASession.configure(bind=bind)
        return None
    mainsession.bind = bind
    Mapper.compile_all()
    for mapper in Mapper.all_mappers():
        mainsession.ensure_indexes(mapper.collection)
    return DBSession


from mingapp.model.documents import Document  # noqa: E402,F401
