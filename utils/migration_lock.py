"""Serialise concurrent ``flask db upgrade`` runs on PostgreSQL.

The app and scheduler containers both run ``flask db upgrade`` when they
start, possibly at the same moment.  Without coordination both would read
the same old revision and both try to create the same tables.  A
session-level advisory lock taken on the migration connection makes them
queue: the first migrates, the second then reads the new revision from
``alembic_version`` and finds nothing to do.

SQLite is the single-host quick start and test backend; it has no advisory
locks and its own file lock already blocks a second writer, so nothing is
done there.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

from sqlalchemy import text
from sqlalchemy.engine import Connection

# One fixed 64-bit key for "the schema migration" ("MLMG" in ASCII). The
# scheduler's leader-election locks use other keys, so they never collide.
MIGRATION_LOCK_KEY = 0x4D4C4D47

logger = logging.getLogger("alembic.env")


@contextmanager
def migration_lock(connection: Connection) -> Iterator[None]:
    """Hold the migration advisory lock on ``connection`` for the block (PostgreSQL only).

    The lock is session-level, so it survives the commits Alembic makes and
    is released explicitly afterwards, or by PostgreSQL when the connection
    dies (a killed migrator never leaves the lock behind).  Each lock
    statement is committed at once so Alembic starts from a clean
    connection with no transaction open.
    """
    if connection.dialect.name != "postgresql":
        yield
        return
    params = {"key": MIGRATION_LOCK_KEY}
    acquired = connection.execute(text("SELECT pg_try_advisory_lock(:key)"), params).scalar()
    connection.commit()
    if not acquired:
        logger.info("another process is migrating this database; waiting for the migration lock")
        connection.execute(text("SELECT pg_advisory_lock(:key)"), params)
        connection.commit()
    logger.info("migration lock acquired")
    try:
        yield
    finally:
        try:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), params)
            connection.commit()
        except Exception as exc:  # a dead connection has released the lock already
            logger.warning("could not release the migration lock (%s); closing the connection releases it", exc)
