"""The ``sqlalchemy`` backend: durable, transactional jobs in the application's database.

Modules, one idea each: :mod:`.schema` (the tables, for alembic), :mod:`.engine`
(engines per dialect), :mod:`.codec` (JSON and import paths, never pickle),
:mod:`.rows` (job ↔ row), :mod:`.claims` (SKIP LOCKED / BEGIN IMMEDIATE claims),
:mod:`.transitions` (compare-and-set state changes), :mod:`.leases` (heartbeats,
rescue, named leases), :mod:`.pruning` (retention), :mod:`.progress` (coalesced
progress), :mod:`.notify` (LISTEN/NOTIFY), :mod:`.runner` (the claim loop),
:mod:`.monitor` (periodic duties), :mod:`.store` (the jobs table as job store),
:mod:`.backend` (the backend itself).
"""
from .backend import SQLAlchemyBackend
from .errors import JobNotStored, LeaseLost, WorkerDied
from .schema import metadata

__all__ = ['SQLAlchemyBackend', 'JobNotStored', 'LeaseLost', 'WorkerDied', 'metadata']
