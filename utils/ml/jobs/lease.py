"""The table-based lease lock: the :class:`~utils.ml.jobs.locks.DistributedLock` off PostgreSQL.

:func:`~utils.ml.jobs.locks.make_lock` returns a :class:`LeaseLock` whenever the
database is not PostgreSQL (SQLite in practice); on PostgreSQL it returns the
session-level advisory lock (:class:`~utils.ml.jobs.locks.PgAdvisoryLock`),
which needs no renewal and is freed the moment its holder's session ends.

A lease is a row in ``ml_scheduler_leases`` (one per lock name) naming its
holder and an expiry.  Taking or renewing it is a compare-and-set ``UPDATE``
(atomic in any database, so no check-then-write race), falling back to an
``INSERT`` when no row exists yet.

The TTL (``ttl_seconds``, from ``ML_SCHEDULER_LEASE_SECONDS``) is how long a
lease stays valid after its last successful take or renewal.  The holder must
renew within it (:attr:`LeaseLock.needs_renewal`; ``verify()`` renews, and
:class:`~utils.ml.jobs.locks.LockKeeper` or the leader elector call it every
heartbeat); a holder that dies or stops renewing keeps the lock until the TTL
runs out, after which any other process may take the row over.  The TTL is
thus also the worst-case takeover delay after a dead holder.  ``release()``
deletes the row at once.
"""
from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any, Optional

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from utils.ml.jobs.locks import DistributedLock, one_line, process_identity
from utils.models import SchedulerLease
from utils.time import utcnow

logger = logging.getLogger("ml.leader")

_LEASES = SchedulerLease.__table__


class LeaseLock(DistributedLock):
    """A row in ``ml_scheduler_leases`` that expires unless renewed."""

    needs_renewal = True

    def __init__(self, engine: Engine, name: str, ttl_seconds: float, holder: Optional[str] = None) -> None:
        super().__init__(name)
        self.engine = engine
        self.ttl = timedelta(seconds=ttl_seconds)
        self.holder = holder or process_identity()

    def _take(self) -> bool:
        """Renew our lease, or take over an expired one, or create the row."""
        now = utcnow()
        expires = now + self.ttl
        with self.engine.begin() as conn:
            # One atomic compare-and-set: only the holder or a taker of an
            # expired lease matches.  SET expressions see the old row, so the
            # CASE keeps acquired_at across renewals.
            renewed = conn.execute(
                _LEASES.update()
                .where(_LEASES.c.name == self.name)
                .where(sa.or_(_LEASES.c.holder == self.holder, _LEASES.c.expires_at < now))
                .values(
                    holder=self.holder,
                    expires_at=expires,
                    acquired_at=sa.case((_LEASES.c.holder == self.holder, _LEASES.c.acquired_at), else_=now),
                )
            ).rowcount
        if renewed == 1:
            return True
        try:
            with self.engine.begin() as conn:
                conn.execute(_LEASES.insert().values(
                    name=self.name, holder=self.holder, acquired_at=now, expires_at=expires))
            return True
        except IntegrityError:  # a live lease of someone else
            return False

    def try_acquire(self) -> bool:
        with self._mutex:
            try:
                self.held = self._take()
            except SQLAlchemyError as exc:
                logger.warning("lease %s: acquire/renew failed: %s", self.name, one_line(exc))
                self.held = False
            return self.held

    def verify(self) -> bool:
        # Renewing is verifying: it succeeds only while the row is still ours
        # (or expired and not yet taken by anyone else).
        return self.try_acquire()

    def release(self) -> None:
        with self._mutex:
            if self.held:
                try:
                    with self.engine.begin() as conn:
                        conn.execute(_LEASES.delete().where(
                            _LEASES.c.name == self.name, _LEASES.c.holder == self.holder))
                except SQLAlchemyError as exc:  # it will expire on its own
                    logger.warning("lease %s: release failed: %s", self.name, one_line(exc))
            self.held = False

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "holder": self.holder, "ttl_s": self.ttl.total_seconds()}
