"""Bounds on every PostgreSQL call: connect, statement, lock, pool wait, and a client-side deadline.

Three profiles, chosen per thread with :func:`bounds_profile`:

* ``request`` (the default: web requests, the scheduler's own bookkeeping):
  ``ML_DB_STATEMENT_TIMEOUT_SECONDS`` and ``ML_DB_LOCK_TIMEOUT_SECONDS`` on
  the server, and the circuit breaker below;
* ``probe`` (``/ready``): the same server bounds, a ``ML_READY_TIMEOUT_SECONDS``
  deadline;
* ``job`` (inside a job's body): ``ML_JOB_STATEMENT_TIMEOUT_SECONDS`` and
  ``ML_JOB_LOCK_TIMEOUT_SECONDS``, no breaker.

Why a client-side deadline: ``statement_timeout`` is enforced by the server,
so it cannot help when the server is *stopped* (SIGSTOP, a hung host): the
kernel still accepts the TCP connection and the client waits forever.
psycopg2 lets one wait callback (:func:`psycopg2.extensions.set_wait_callback`)
do every wait of every connection in the process; ours waits with
``select()`` up to the profile's deadline (the server bound plus
:data:`GRACE_SECONDS`, so the server normally answers first) and then raises
``OperationalError``, which closes the connection; SQLAlchemy sees a
disconnect and drops it from the pool.  No ``cancel()``: a cancel opens a new
connection to the same hung server.  While connecting, the deadline is
``ML_DB_CONNECT_TIMEOUT_SECONDS`` (libpq's own ``connect_timeout`` is not
applied to asynchronous connects).

The breaker: a missed client deadline (a frozen or unreachable server) opens it for
``ML_DB_BREAKER_SECONDS``; meanwhile ``request`` and ``probe`` calls fail at
once (:class:`DatabaseUnavailable`, a 503) instead of each worker thread
waiting out its own deadline, which is what starved ``/health`` before.  Jobs
ignore it (their own, longer bounds apply).

The callback is process-wide.  psycopg2 refuses ``COPY`` while one is set;
:func:`wait_callback_suspended` lifts it around a single-threaded CLI bulk load.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import select
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Optional

# The client waits this much longer than the server's own statement bound.
GRACE_SECONDS = 1.0

REQUEST, PROBE, JOB = "request", "probe", "job"


class DatabaseUnavailable(Exception):
    """The database did not answer within its bound, or the breaker is open: HTTP 503."""


@dataclass(frozen=True)
class Bounds:
    statement_ms: int
    lock_ms: int
    deadline_s: float
    breaker: bool


_profile: contextvars.ContextVar[str] = contextvars.ContextVar("ml_db_bounds_profile", default=REQUEST)
_bounds: dict[str, Bounds] = {}
_settings = {"connect_s": 3.0, "breaker_s": 5.0}
_breaker_lock = threading.Lock()
_breaker = {"open_until": 0.0, "reason": "", "trips": 0}
# Request-profile threads allowed to wait on the database at once (per process):
# one worker thread fewer than gunicorn has, so one is always free for /health.
_waiters = {"slots": threading.BoundedSemaphore(3)}
# How long a request waits for such a slot before it is answered 503.
SLOT_WAIT_SECONDS = 0.02
# How often a waiting thread looks whether another one has tripped the breaker.
RECHECK_SECONDS = 0.1


def configure(config: Mapping[str, Any]) -> None:
    """Read the bounds from an app's config (the last app created in a process wins)."""
    statement = float(config["ML_DB_STATEMENT_TIMEOUT_SECONDS"])
    lock = float(config["ML_DB_LOCK_TIMEOUT_SECONDS"])
    job_statement = float(config["ML_JOB_STATEMENT_TIMEOUT_SECONDS"])
    ready = float(config["ML_READY_TIMEOUT_SECONDS"])
    _bounds[REQUEST] = Bounds(int(statement * 1000), int(lock * 1000), statement + GRACE_SECONDS, True)
    _bounds[PROBE] = Bounds(int(min(statement, ready) * 1000), int(min(lock, ready) * 1000), ready, True)
    _bounds[JOB] = Bounds(int(job_statement * 1000), int(float(config["ML_JOB_LOCK_TIMEOUT_SECONDS"]) * 1000),
                          job_statement + GRACE_SECONDS, False)
    _settings["connect_s"] = float(config["ML_DB_CONNECT_TIMEOUT_SECONDS"])
    _settings["breaker_s"] = float(config["ML_DB_BREAKER_SECONDS"])
    _waiters["slots"] = threading.BoundedSemaphore(max(1, _server_threads() - 1))


def _server_threads() -> int:
    from utils.settings import ConfigError, load_server_settings

    try:
        return int(load_server_settings(os.environ)["GUNICORN_THREADS"])
    except ConfigError:  # gunicorn.conf.py reports it; here the default will do
        return 4


def current_profile() -> str:
    return _profile.get()


@contextlib.contextmanager
def bounds_profile(name: str) -> Iterator[None]:
    """Run the block's database calls (this thread) under profile ``name``."""
    token = _profile.set(name)
    try:
        yield
    finally:
        _profile.reset(token)


# ------------------------------------------------------------------ breaker
def breaker_state() -> Optional[str]:
    """Why the breaker is open (with the seconds left), or None when closed."""
    with _breaker_lock:
        left = _breaker["open_until"] - time.monotonic()
        return f"{_breaker['reason']} (retrying in {left:.1f}s)" if left > 0 else None


def trip(reason: str) -> None:
    """Open the breaker for ``ML_DB_BREAKER_SECONDS`` (0: never)."""
    if _settings["breaker_s"] <= 0:
        return
    with _breaker_lock:
        _breaker["open_until"] = time.monotonic() + _settings["breaker_s"]
        _breaker["reason"] = reason
        _breaker["trips"] += 1


def reset_breaker() -> None:
    with _breaker_lock:
        _breaker["open_until"] = 0.0


def check_breaker() -> None:
    """Raise :class:`DatabaseUnavailable` when the breaker is open and this profile honours it."""
    bounds = _bounds.get(_profile.get())
    if bounds is not None and bounds.breaker:
        state = breaker_state()
        if state:
            raise DatabaseUnavailable(f"database unavailable: {state}")


# ------------------------------------------------------------ wait callback
def _give_up(message: str) -> None:
    import psycopg2

    # The wording makes SQLAlchemy treat it as a disconnect (the callback's raise closes the connection).
    raise psycopg2.OperationalError(f"{message}: could not receive data from server (client deadline)")


def connection_classes() -> tuple[type, type]:
    """(the app engine's connection class, the lock engines' one): psycopg2 connections marked as
    ours, so the deadlines never touch a connection some other code (a test, a tool) opened."""
    if not _classes:
        from psycopg2 import extensions

        class BoundedConnection(extensions.connection):
            """An app engine connection: deadlines, breaker, wait slots."""

        class LockConnection(BoundedConnection):
            """A lock/leadership connection (its own engine, no pool, no breaker check there)."""

        _classes.extend([BoundedConnection, LockConnection])
    return _classes[0], _classes[1]


_classes: list[type] = []


def _wait(conn: Any) -> None:
    """psycopg2's wait callback: every wait of every connection in the process goes through here.

    Connections that are not ours wait as psycopg2 would (libpq's own
    ``connect_timeout`` honoured).  Request and probe waits (the profiles with
    the breaker) also take one of a few per-process slots, and give up at once
    when another thread trips the breaker: during a freeze no more than one
    deadline is spent, by no more than all threads but one.
    """
    bounded, _ = connection_classes()
    if not isinstance(conn, bounded):
        _plain_wait(conn)
        return
    bounds = _bounds.get(_profile.get())
    # Only threads serving a request are gated: a scheduler heartbeat is never refused for want of a slot.
    gated = bounds is not None and bounds.breaker and _serving_request()
    if gated:
        state = breaker_state()
        if state:  # e.g. a lock connection of POST /scan, which the pool's own check does not see
            _give_up(f"database unavailable: {state}")
        if not _waiters["slots"].acquire(timeout=SLOT_WAIT_SECONDS):
            _give_up("database busy: too many requests already waiting for it")
    try:
        _poll(conn, bounds, gated)
    finally:
        if gated:
            _waiters["slots"].release()


def _serving_request() -> bool:
    from flask import has_request_context

    return has_request_context()


def _plain_wait(conn: Any) -> None:
    from psycopg2 import extensions

    limit = None
    if conn.status == extensions.STATUS_SETUP:
        raw = extensions.parse_dsn(conn.dsn).get("connect_timeout")
        limit = max(2.0, float(raw)) if raw and float(raw) > 0 else None
    deadline = None if limit is None else time.monotonic() + limit
    fileno = conn.fileno()
    while True:
        state = conn.poll()
        if state == extensions.POLL_OK:
            return
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            import psycopg2

            raise psycopg2.OperationalError("timeout expired")  # libpq's own words
        if state == extensions.POLL_READ:
            select.select([fileno], [], [], left)
        else:
            select.select([], [fileno], [], left)


def _poll(conn: Any, bounds: Optional[Bounds], gated: bool) -> None:
    from psycopg2 import extensions

    connecting = conn.status == extensions.STATUS_SETUP
    limit = _settings["connect_s"] if connecting else (bounds.deadline_s if bounds else None)
    deadline = None if limit is None else time.monotonic() + limit
    trips = _breaker["trips"]
    fileno = conn.fileno()
    while True:
        state = conn.poll()
        if state == extensions.POLL_OK:
            return
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            reason = f"no {'connect' if connecting else 'answer'} from the database within {limit:g}s"
            trip(reason)
            _give_up(reason)
        if gated and _breaker["trips"] != trips and breaker_state():
            _give_up(f"database unavailable: {breaker_state()}")
        left = RECHECK_SECONDS if deadline is None else min(RECHECK_SECONDS, deadline - now)
        if not gated and deadline is None:
            left = None
        if state == extensions.POLL_READ:
            select.select([fileno], [], [], left)
        elif state == extensions.POLL_WRITE:
            select.select([], [fileno], [], left)
        else:  # pragma: no cover - psycopg2 documents only the three states
            _give_up(f"bad poll state {state}")


_callback_lock = threading.RLock()


def install_wait_callback() -> None:
    """Make :func:`_wait` psycopg2's wait callback in this process (idempotent)."""
    from psycopg2 import extensions

    with _callback_lock:
        extensions.set_wait_callback(_wait)


@contextlib.contextmanager
def wait_callback_suspended() -> Iterator[None]:
    """No wait callback inside the block (``COPY`` needs that); for single-threaded CLI commands only."""
    from psycopg2 import extensions

    with _callback_lock:
        previous = extensions.get_wait_callback()
        extensions.set_wait_callback(None)
        try:
            yield
        finally:
            extensions.set_wait_callback(previous)


# ------------------------------------------------------------------ engine
def _breaker_pool_class() -> type:
    from sqlalchemy.pool import QueuePool

    class BreakerQueuePool(QueuePool):
        """A QueuePool that refuses before taking a connection while the breaker is open.

        Checked here, not in a checkout event: an exception there would close
        the healthy pooled connection it was about to hand out.
        """

        def _do_get(self) -> Any:
            check_breaker()
            return super()._do_get()

    return BreakerQueuePool


def engine_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """SQLAlchemy engine options for PostgreSQL: pool wait bound, connection options, keepalives."""
    request = _bounds[REQUEST]
    return {
        "poolclass": _breaker_pool_class(),
        "pool_pre_ping": True,
        "pool_recycle": 1800,
        "pool_timeout": float(config["ML_DB_POOL_TIMEOUT_SECONDS"]),
        "connect_args": {
            "connection_factory": connection_classes()[0],
            # Applied by libpq to synchronous connects (the wait callback bounds ours).
            "connect_timeout": max(2, int(round(_settings["connect_s"]))),
            "options": f"-c statement_timeout={request.statement_ms} -c lock_timeout={request.lock_ms}",
            # A silently dead network path is noticed even by a long job query.
            "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
            "tcp_user_timeout": 30000,
        },
    }


def attach(engine: Any) -> None:
    """New connections refused while the breaker is open; each checkout gets its thread's profile's server bounds."""
    from sqlalchemy import event

    @event.listens_for(engine, "do_connect")
    def _connect(dialect: Any, conn_rec: Any, cargs: Any, cparams: Any) -> None:
        check_breaker()  # e.g. the reconnect after a failed pre-ping

    @event.listens_for(engine, "connect")
    def _connected(dbapi_connection: Any, connection_record: Any) -> None:
        connection_record.info["ml_bounds"] = REQUEST  # what the connect options set

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_connection: Any, connection_record: Any, connection_proxy: Any) -> None:
        name = _profile.get()
        if connection_record.info.get("ml_bounds") == name or name not in _bounds:
            return
        bounds = _bounds[name]
        cursor = dbapi_connection.cursor()
        try:
            # SET is transactional: commit it, or the pool's rollback would undo it.
            cursor.execute(f"SET statement_timeout = {bounds.statement_ms}; SET lock_timeout = {bounds.lock_ms}")
        finally:
            cursor.close()
        dbapi_connection.commit()
        connection_record.info["ml_bounds"] = name
