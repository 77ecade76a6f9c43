"""Serialise concurrent ``flask db upgrade`` runs on PostgreSQL.

The app and scheduler containers both run ``flask db upgrade`` when they
start, possibly at the same moment.  Without coordination both would read
the same old revision and both try to create the same tables.  A
session-level advisory lock taken on the migration connection makes them
queue: the first migrates, the second then reads the new revision from
our version table and finds nothing to do.

Our revision lives in ``ml_alembic_version`` (``VERSION_TABLE``), never in
``alembic_version``: in the minibar app's database that table is the hotel
app's own (its chain, its heads) and is not ours to read or change.  Earlier
releases of this service did use ``alembic_version``; ``claim_version_table``
moves their row once, under the same lock.

SQLite is the single-host quick start and test backend; it has no advisory
locks and its own file lock already blocks a second writer, so nothing is
done there.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

# One fixed 64-bit key for "the schema migration" ("MLMG" in ASCII). The
# scheduler's leader-election locks use other keys, so they never collide.
MIGRATION_LOCK_KEY = 0x4D4C4D47

logger = logging.getLogger("alembic.env")

VERSION_TABLE = "ml_alembic_version"
SHARED_VERSION_TABLE = "alembic_version"


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


@contextmanager
def lock_wait_limit(connection: Connection, seconds: float) -> Iterator[None]:
    """PostgreSQL: no migration statement waits more than ``seconds`` for a table lock.

    An ALTER TABLE queued behind a long transaction of the hotel app would
    make every later statement on that table queue behind it: the app would
    stall.  Failing fast instead (the entrypoint retries the upgrade) keeps
    the app running.  Reset afterwards: the connection goes back to the pool.
    """
    if connection.dialect.name != "postgresql" or seconds <= 0:
        yield
        return
    connection.execute(text(f"SET lock_timeout = '{int(seconds * 1000)}ms'"))
    connection.commit()
    try:
        yield
    finally:
        try:
            connection.execute(text("RESET lock_timeout"))
            connection.commit()
        except Exception as exc:  # a dead connection is discarded anyway
            logger.warning("could not reset lock_timeout on the migration connection (%s)", exc)


def claim_version_table(connection: Connection, our_revisions: set[str]) -> bool:
    """Move an earlier release's revision from ``alembic_version`` into ``VERSION_TABLE``, once.

    Only when our table does not exist yet and *every* row of
    ``alembic_version`` is one of ``our_revisions``: then that table was ours
    alone and is dropped after the move.  Any other content (the hotel app's
    heads, an empty table) is left exactly as it is.  Returns True on a move.
    """
    names = set(inspect(connection).get_table_names())
    rows: list[str] = []
    if VERSION_TABLE not in names and SHARED_VERSION_TABLE in names:
        rows = list(connection.execute(text(f"SELECT version_num FROM {SHARED_VERSION_TABLE}")).scalars())
    # End the look-up's transaction: Alembic must start from a connection with none open.
    connection.commit()
    if not rows or not set(rows) <= our_revisions:
        return False
    # The same table Alembic would create (name, column, primary key).
    connection.execute(text(
        f"CREATE TABLE {VERSION_TABLE} (version_num VARCHAR(32) NOT NULL, "
        f"CONSTRAINT {VERSION_TABLE}_pkc PRIMARY KEY (version_num))"))
    for row in rows:
        connection.execute(text(f"INSERT INTO {VERSION_TABLE} (version_num) VALUES (:v)"), {"v": row})
    connection.execute(text(f"DROP TABLE {SHARED_VERSION_TABLE}"))
    connection.commit()
    logger.info("moved this service's revision %s from %s to %s", rows, SHARED_VERSION_TABLE, VERSION_TABLE)
    return True
