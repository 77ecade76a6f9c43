"""The client-side deadline of :mod:`utils.db_bounds`: psycopg2's process-wide wait callback.

Every wait of every psycopg2 connection in the process comes here.  Only the
app's own connections (marked by :func:`connection_classes`) get deadlines,
the breaker and the wait slots; any other connection waits as psycopg2 would
(libpq's ``connect_timeout`` honoured), so a test's or a tool's connection is
never cut short.  psycopg2 refuses ``COPY`` while a callback is set:
:func:`wait_callback_suspended` lifts it around a single-threaded CLI bulk load.
"""
from __future__ import annotations

import contextlib
import select
import threading
import time
from typing import Any, Iterator, Optional

from utils.db_bounds import _bounds, _breaker, _profile, _settings, _waiters, Bounds, breaker_state, trip

# How long a request waits for a wait slot before it is answered 503.
SLOT_WAIT_SECONDS = 0.02
# How often a waiting thread looks whether another one has tripped the breaker.
RECHECK_SECONDS = 0.1


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
