"""Periodic slots claimed in the database: one row per (schedule, slot).

The primary key makes the claim atomic across every process and machine using the
database: the INSERT that succeeds queues the run, the others hit the key and step back.
Rows older than the claims must be remembered are deleted by the next claim.
"""
from __future__ import annotations

import time

from sqlalchemy import BigInteger, Column, Double, String, Table, delete, insert
from sqlalchemy.exc import IntegrityError

from .engine import Engines
from .schema import metadata

#: One row per slot some process claimed.
periodic_slots = Table(
    'asyncjob_periodic', metadata,
    Column('name', String(255), primary_key=True),
    Column('slot', BigInteger, primary_key=True, autoincrement=False),  # epoch seconds
    Column('claimed_at', Double, nullable=False),
)


class SQLClaims:
    """:class:`~tgext.asyncjob.periodic.SlotClaims` on the backend's database."""

    durable = True

    def __init__(self, engines: Engines, keep: int):
        self.engines, self.keep = engines, keep

    def claim(self, name: str, slot: int) -> bool:
        """True if this call inserted the slot's row."""
        try:
            with self.engines.writing() as conn:
                conn.execute(insert(periodic_slots),
                             {'name': name, 'slot': slot, 'claimed_at': time.time()})
        except IntegrityError:
            return False
        self._prune(name, slot)
        return True

    def _prune(self, name: str, slot: int) -> None:
        with self.engines.writing() as conn:
            conn.execute(delete(periodic_slots).where(
                periodic_slots.c.name == name, periodic_slots.c.slot < slot - self.keep))

