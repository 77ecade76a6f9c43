"""Bounds on every PostgreSQL call: connect, statement, lock, pool wait, and a client-side deadline.

Three profiles, chosen per thread with :func:`bounds_profile`:

* ``request`` (the default: web requests, the scheduler's own bookkeeping):
  ``ML_DB_STATEMENT_TIMEOUT_SECONDS`` and ``ML_DB_LOCK_TIMEOUT_SECONDS`` on
  the server, and the circuit breaker below;
* ``probe`` (``/ready``): the same server bounds, a ``ML_READY_TIMEOUT_SECONDS``
  deadline;
* ``job`` (inside a job's body, and the demo hotel's bulk load):
  ``ML_JOB_STATEMENT_TIMEOUT_SECONDS`` and ``ML_JOB_LOCK_TIMEOUT_SECONDS``, no breaker.

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

The callback itself (and the wait slots) is :mod:`utils.db_deadline`; this
module holds the profiles, the breaker and the engine options.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
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
    from utils.settings import ConfigError
    from utils.settings_load import load_server_settings

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
    from utils.db_deadline import connection_classes

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
