"""Cross-process locks and leader election, in-process, on real databases.

The lease lock runs on both backends (it is SQLite's mechanism but plain
SQL); the advisory lock is PostgreSQL's own, so its test needs PostgreSQL.
Multi-process takeover (SIGKILL of a real leader) is in test_scheduler.py.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import dbutil
from tests.ml_helpers import recorded_events, sql
from utils.ml.jobs import leader
from utils.ml.jobs.leader import LeaderElector
from utils.ml.jobs.lease import LeaseLock
from utils.ml.jobs.locks import (
    LEADER_LOCK_CLASS,
    PgAdvisoryLock,
    dedicated_engine,
    lock_key,
    make_lock,
)


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def _lease_rows(url: str) -> list[tuple]:
    return sql(url, "SELECT name, holder FROM ml_scheduler_leases ORDER BY name")


def _elector_pair(url: str) -> tuple[LeaderElector, LeaderElector]:
    """Two electors (not yet started) competing for one lock on ``url``, 0.2 s heartbeat."""
    def elector() -> LeaderElector:
        lock = make_lock(url, "test_leader", LEADER_LOCK_CLASS, lease_seconds=2.0, keep_connection=True)
        return LeaderElector(lock, heartbeat_seconds=0.2, validity_seconds=0.6, backend=url.split(":")[0])

    return elector(), elector()


def test_lock_keys_are_the_same_in_every_process_and_fit_int4():
    # Python's hash() is salted per process; the lock key must not be.
    names = ["ml_scheduler", "job:anomaly_scan", "job:train_models", "job:cleanup_models"]
    other = subprocess.run(
        [sys.executable, "-c", f"from utils.ml.jobs.locks import lock_key; print([lock_key(n) for n in {names!r}])"],
        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONHASHSEED": "random"},
    )
    keys = [lock_key(name) for name in names]
    assert other.stdout.strip() == str(keys)
    assert all(0 <= key < 2**31 for key in keys) and len(set(keys)) == len(keys)


def test_lease_lock_excludes_renews_and_is_taken_over_after_expiry(database_url):
    engine = dedicated_engine(database_url)
    first = LeaseLock(engine, "test_lease", ttl_seconds=2.0, holder="host-a:1:aaaa")
    second = LeaseLock(engine, "test_lease", ttl_seconds=2.0, holder="host-b:2:bbbb")

    started = time.monotonic()
    assert first.try_acquire() is True
    assert second.try_acquire() is False, "a live lease must not be taken"
    assert _lease_rows(database_url) == [("test_lease", "host-a:1:aaaa")]
    acquired_at, expires_at = sql(database_url, "SELECT acquired_at, expires_at FROM ml_scheduler_leases")[0]

    time.sleep(0.5)
    assert first.verify() is True, "the holder renews its own lease"
    renewed = sql(database_url, "SELECT acquired_at, expires_at FROM ml_scheduler_leases")[0]
    assert renewed[0] == acquired_at and renewed[1] > expires_at
    time.sleep(max(0.0, started + 2.15 - time.monotonic()))  # past the first expiry, before the renewed one
    assert second.try_acquire() is False, "a renewed lease is still live"

    time.sleep(max(0.0, started + 3.0 - time.monotonic()))  # the holder stopped renewing, as a dead process would
    assert second.try_acquire() is True, "an expired lease is taken over"
    assert _lease_rows(database_url) == [("test_lease", "host-b:2:bbbb")]
    assert first.verify() is False and first.held is False, "the old holder learns it lost the lease"

    first.release()  # not the holder: must not delete the new holder's row
    assert _lease_rows(database_url) == [("test_lease", "host-b:2:bbbb")]
    second.release()
    assert _lease_rows(database_url) == []


def test_elector_hands_leadership_over_on_release(database_url):
    """Two electors on one database (either backend's lock): exactly one leads, the
    other takes over within a heartbeat or two once the leader stops."""
    a, b = _elector_pair(database_url)
    with recorded_events() as log:
        try:
            a.start()
            b.start()
            assert a.is_leader() and not b.is_leader()
            assert leader.is_leader() is True
            time.sleep(0.5)  # several heartbeats: still exactly one leader
            assert a.is_leader() and not b.is_leader()

            a.stop()
            assert not a.is_leader()
            started = time.monotonic()
            _wait(b.is_leader, 2.0, "the follower to take over")
            takeover = time.monotonic() - started
        finally:
            a.stop()
            b.stop()
        assert not leader.is_leader()
    changes = [(f["leader"], f["change"]) for f in log.of("scheduler_leadership")]
    assert changes == [(True, "acquired"), (False, "released"), (True, "acquired"), (False, "released")]
    assert takeover < 1.0, f"takeover took {takeover:.2f}s with a 0.2 s heartbeat"


def test_elector_refuses_a_validity_shorter_than_its_heartbeat(database_url):
    lock = make_lock(database_url, "test_leader", LEADER_LOCK_CLASS, lease_seconds=2.0)
    with pytest.raises(ValueError, match="must exceed the heartbeat"):
        LeaderElector(lock, heartbeat_seconds=1.0, validity_seconds=1.0)


@pytest.fixture
def pg_database(pg_available):
    name = dbutil.create_pg_database()
    yield dbutil.pg_url(name)
    dbutil.drop_pg_database(name)


def test_advisory_lock_is_lost_with_its_session_and_taken_over(pg_database):
    """PostgreSQL only: session-level advisory locks are PostgreSQL's.  Killing the
    holder's session (as a dying process or a server restart does) frees the lock
    at once; the old holder finds out at its next check instead of believing it leads."""
    engine = dedicated_engine(pg_database, "test-advisory")
    holder = PgAdvisoryLock(engine, "test_lock", LEADER_LOCK_CLASS, keep_connection=True)
    rival = PgAdvisoryLock(engine, "test_lock", LEADER_LOCK_CLASS)
    try:
        assert holder.try_acquire() is True
        assert holder.verify() is True
        assert rival.try_acquire() is False
        granted = sql(pg_database, "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = :c"
                      " AND objid = :k AND objsubid = 2 AND granted"
                      " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                      {"c": LEADER_LOCK_CLASS, "k": lock_key("test_lock")})
        assert granted == [(holder.backend_pid(),)], "the lock is held by the dedicated session"

        sql(pg_database, "SELECT pg_terminate_backend(:pid)", {"pid": holder.backend_pid()})
        _wait(rival.try_acquire, 5.0, "the rival to get the freed lock")
        assert holder.verify() is False and holder.held is False
        assert holder.try_acquire() is False, "it reconnects, but the rival holds the lock now"
    finally:
        holder.release()
        rival.release()
    assert sql(pg_database, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = :c"
                   " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
               {"c": LEADER_LOCK_CLASS}) == [(0,)]


def test_elector_whose_connection_is_killed_loses_leadership_to_a_follower(pg_database):
    """PostgreSQL only (the dedicated leader connection): the server ends the leader's
    session; the leader notices at its next heartbeat and a follower takes over."""
    a, b = _elector_pair(pg_database)
    with recorded_events() as log:
        try:
            a.start()
            b.start()
            assert a.is_leader() and not b.is_leader()
            sql(pg_database, "SELECT pg_terminate_backend(:pid)", {"pid": a.lock.backend_pid()})
            _wait(lambda: b.is_leader() and not a.is_leader(), 3.0, "the follower to take over")
            time.sleep(0.5)  # the old leader reconnects and keeps competing, as a follower
            assert b.is_leader() and not a.is_leader()
        finally:
            a.stop()
            b.stop()
    changes = [(f["leader"], f["change"]) for f in log.of("scheduler_leadership")]
    # a acquires; then a loses and b acquires (in either order); at the end b releases.
    assert len(changes) == 4 and changes[0] == (True, "acquired") and changes[3] == (False, "released")
    assert sorted(changes[1:3]) == [(False, "lost"), (True, "acquired")]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_lock_keeper_keeps_renewing_after_one_failed_renewal(database_url):
    """A renewal that fails once (the database busy for a moment) must not end the
    keeper: the lease would then lapse while its job still runs and another process
    could start the same job.  (SQLite: the fault is another writer holding the
    database lock past the busy timeout; advisory locks need no keeper.)"""
    import sqlalchemy as sa

    from utils.ml.jobs.locks import LockKeeper

    # The real lease lock on a real engine, with a short busy timeout so the fault is quick.
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool, connect_args={"timeout": 0.3})
    lock = LeaseLock(engine, "job:test_keeper", ttl_seconds=3.0, holder="host-a:1:aaaa")
    blocker = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    try:
        assert lock.try_acquire() is True
        with LockKeeper(lock, every_seconds=0.1) as keeper:
            raw = blocker.raw_connection()
            try:
                raw.execute("BEGIN IMMEDIATE")  # holds SQLite's write lock: renewals fail meanwhile
                _wait(lambda: lock.held is False, 5, "a renewal to fail while the database is locked")
                blocked_until = sql(database_url, "SELECT expires_at FROM ml_scheduler_leases")[0][0]
            finally:
                raw.rollback()
                raw.close()
            _wait(lambda: sql(database_url, "SELECT expires_at FROM ml_scheduler_leases")[0][0] > blocked_until,
                  2, "the keeper to renew the lease again once the database is free")
            assert lock.held is True and keeper._thread.is_alive()
    finally:
        lock.release()
        engine.dispose()
        blocker.dispose()


@pytest.mark.parametrize("backend", ["postgresql"])
def test_lock_keeper_retakes_an_advisory_lock_whose_session_died(database_url):
    """A job's advisory lock lives in its session.  Real fault: the session is
    terminated with pg_terminate_backend while the job runs; the keeper must notice
    and take the lock back, so another process cannot start the same job."""
    from utils.ml.jobs.locks import JOB_LOCK_CLASS, LockKeeper, dedicated_engine

    lock = PgAdvisoryLock(dedicated_engine(database_url, "keeper-test"), "job:test_keeper", JOB_LOCK_CLASS)
    rival = PgAdvisoryLock(dedicated_engine(database_url, "keeper-rival"), "job:test_keeper", JOB_LOCK_CLASS)
    try:
        assert lock.try_acquire() is True
        with LockKeeper(lock, every_seconds=0.1):
            first_pid = lock.backend_pid()
            sql(database_url, "SELECT pg_terminate_backend(:pid)", {"pid": first_pid})

            def holder() -> list:  # seen from outside, as another process would
                return sql(database_url, "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
                                         " AND classid = :cls AND objid = :key AND objsubid = 2", lock.params)

            _wait(lambda: holder() and holder()[0][0] != first_pid, 5,
                  "the keeper to re-take the lock on a new session")
            assert rival.try_acquire() is False, "another process could take the job's lock"
    finally:
        lock.release()
        rival.release()
        lock.engine.dispose()
        rival.engine.dispose()
