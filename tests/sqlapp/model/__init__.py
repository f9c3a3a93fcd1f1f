"""The application's model, as quickstarted, plus :class:`JobRun`."""

import sqlalchemy
from sqlalchemy import Column, Integer, Unicode
from sqlalchemy import orm
from sqlalchemy.orm import scoped_session, sessionmaker
from zope.sqlalchemy import register

DBSession = scoped_session(sessionmaker(autoflush=True))
register(DBSession)


class DeclarativeBase(orm.DeclarativeBase):
    """Base class for all mapped classes of the application."""


metadata = DeclarativeBase.metadata


def init_model(engine):
    """Call me before using any of the tables or classes in the model."""
    DBSession.configure(bind=engine)


class JobRun(DeclarativeBase):
    """One row per run of a job: ``job_key`` names the job, ``pid`` the process that ran it."""

    __tablename__ = "job_runs"

    id = Column(Integer, primary_key=True)
    job_key = Column(Unicode(64), nullable=False, index=True)
    pid = Column(Integer, nullable=False)


def create_tables(db_url):
    """Create the application's tables at ``db_url`` (``gearbox setup-app`` would)."""
    engine = sqlalchemy.create_engine(db_url, poolclass=sqlalchemy.pool.NullPool)
    try:
        metadata.create_all(engine)
    finally:
        engine.dispose()
