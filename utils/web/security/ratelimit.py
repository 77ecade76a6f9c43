"""Failed authentications, counted per client address in the database, shared by every worker.

A failed bearer token (API) and a failed dashboard sign-in count alike: both
are guesses of the same ``ML_ADMIN_TOKEN``.  After ``ML_AUTH_MAX_FAILURES``
failures within ``ML_AUTH_WINDOW_SECONDS`` the address is locked out for
``ML_AUTH_LOCKOUT_SECONDS``: every request of it that presents a credential
gets 429 with ``Retry-After``, *before* its credential is compared, so a
locked-out guesser learns nothing, not even from the right token.

The counter is one row per address, updated by a single atomic
``INSERT ... ON CONFLICT DO UPDATE ... RETURNING`` (PostgreSQL and SQLite),
so concurrent failures in several processes are all counted and exactly
``ML_AUTH_MAX_FAILURES`` of them get 401; a request that raced past the
lockout check is answered 429 too.  The table stays small: a row lives only
while its window or its lockout runs, and each process prunes the expired
rows at most once a minute.  A database error propagates (the caller answers
503): failing open would let guesses through unlimited while the database is
away.

The address is ``request.remote_addr``: behind a reverse proxy, configure the
proxy (or werkzeug's ProxyFix) so it is the client's, or every client shares
one counter.  IPv6 addresses count per /64, the block one subscriber gets.
"""
from __future__ import annotations

import ipaddress
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional

from flask import current_app, request
from sqlalchemy import case, delete, select
from sqlalchemy.dialects import postgresql, sqlite

from utils.extensions import db
from utils.web.security.models import AuthFailureCount

PRUNE_EVERY_SECONDS = 60.0
_pruned = {"at": 0.0}
_prune_lock = threading.Lock()


@dataclass(frozen=True)
class Limits:
    max_failures: int
    window: float
    lockout: float


def limits() -> Limits:
    config = current_app.config
    return Limits(int(config["ML_AUTH_MAX_FAILURES"]), float(config["ML_AUTH_WINDOW_SECONDS"]),
                  float(config["ML_AUTH_LOCKOUT_SECONDS"]))


def client_key(address: Optional[str]) -> str:
    """The counter's key for a peer address: the IPv4 address, or the IPv6 /64 prefix."""
    try:
        ip = ipaddress.ip_address((address or "").split("%")[0])
    except ValueError:
        return (address or "unknown")[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{ip}/64", strict=False))
    return str(ip)


def current_client() -> str:
    return client_key(request.remote_addr)


def upsert(table: Any) -> Any:
    """The dialect's INSERT with ON CONFLICT support (PostgreSQL or SQLite)."""
    dialect = db.engine.dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise RuntimeError(f"no atomic upsert for database dialect {dialect!r}")


def _seconds_left(until: Optional[float], now: float) -> Optional[int]:
    return max(1, math.ceil(until - now)) if until is not None and until > now else None


def retry_after(client: str) -> Optional[int]:
    """Seconds the client is still locked out for, or None when it may try."""
    with db.engine.connect() as conn:
        until = conn.execute(select(AuthFailureCount.locked_until)
                             .where(AuthFailureCount.client == client)).scalar()
    return _seconds_left(until, time.time())


def record_failure(client: str) -> Optional[int]:
    """Count one failure of ``client``; the Retry-After when it is over the limit (answer 429), else None."""
    rules = limits()
    now = time.time()
    table = AuthFailureCount.__table__
    expired = table.c.window_started <= now - rules.window
    failures = case((expired, 1), else_=table.c.failures + 1)
    statement = upsert(table).values(
        client=client, failures=1, window_started=now,
        locked_until=now + rules.lockout if rules.max_failures <= 1 else 0.0,
    )
    statement = statement.on_conflict_do_update(
        index_elements=[table.c.client],
        set_={
            "failures": failures,
            "window_started": case((expired, now), else_=table.c.window_started),
            # The failure that reaches the limit starts the lockout.
            "locked_until": case((failures >= rules.max_failures, now + rules.lockout),
                                 else_=table.c.locked_until),
        },
    ).returning(table.c.failures, table.c.locked_until)
    with db.engine.begin() as conn:
        count, until = conn.execute(statement).one()
    _maybe_prune(now, rules)
    return _seconds_left(until, now) if count > rules.max_failures else None


def _maybe_prune(now: float, rules: Limits) -> None:
    """Delete rows whose window and lockout are both over (at most once a minute per process)."""
    with _prune_lock:
        if now - _pruned["at"] < PRUNE_EVERY_SECONDS:
            return
        _pruned["at"] = now
    with db.engine.begin() as conn:
        conn.execute(delete(AuthFailureCount).where(AuthFailureCount.window_started <= now - rules.window,
                                                    AuthFailureCount.locked_until <= now))


def tracked_clients() -> int:
    """Rows in the table (for tests and operators)."""
    with db.engine.connect() as conn:
        return len(conn.execute(select(AuthFailureCount.client)).all())
