"""Dashboard sessions that can be ended on the server.

Every sign-in puts a random session id into the signed cookie.  Sign-out
records that id in ``ml_revoked_sessions`` until the moment the cookie
would have expired anyway (``PERMANENT_SESSION_LIFETIME``), so a copy of the
cookie taken before sign-out is refused by every worker.  Expired rows are
deleted at each sign-out, which keeps the table at most one row per sign-out
within one session lifetime.
"""
from __future__ import annotations

import secrets
import time

from flask import current_app
from sqlalchemy import delete, select

from utils.extensions import db
from utils.web.security.models import RevokedSession
from utils.web.security.ratelimit import upsert

SESSION_ID_BYTES = 24


def new_session_id() -> str:
    return secrets.token_urlsafe(SESSION_ID_BYTES)


def revoke(session_id: str) -> None:
    """Refuse ``session_id`` from now until its lifetime is over, in every process."""
    now = time.time()
    lifetime = current_app.permanent_session_lifetime.total_seconds()
    table = RevokedSession.__table__
    statement = upsert(table).values(session_id=session_id[:64], expires_at=now + lifetime)
    with db.engine.begin() as conn:
        conn.execute(statement.on_conflict_do_nothing(index_elements=[table.c.session_id]))
        conn.execute(delete(RevokedSession).where(RevokedSession.expires_at < now))


def is_revoked(session_id: str) -> bool:
    with db.engine.connect() as conn:
        found = conn.execute(select(RevokedSession.session_id)
                             .where(RevokedSession.session_id == session_id[:64])).first()
    return found is not None
