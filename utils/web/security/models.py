"""The two tables of the web security layer (revision ``0010_security``).

Both are shared by every worker and process, which is why they are tables and
not per-process memory, and both stay small: rows are pruned once their time
is over (see :mod:`.ratelimit` and :mod:`.sessions`).  Times are Unix seconds
(floats) so that the same comparisons work on PostgreSQL and SQLite.
"""
from __future__ import annotations

from sqlalchemy import Float, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from utils.extensions import db


class AuthFailureCount(db.Model):
    """Failed authentications of one client address in its current window, and its lockout."""

    __tablename__ = "ml_auth_failures"
    __table_args__ = (Index("idx_ml_auth_failures_window", "window_started"),)

    # An IPv4 address or an IPv6 /64 prefix (one subscriber), at most 45 characters.
    client: Mapped[str] = mapped_column(String(64), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, nullable=False)
    window_started: Mapped[float] = mapped_column(Float, nullable=False)
    locked_until: Mapped[float] = mapped_column(Float, nullable=False)


class RevokedSession(db.Model):
    """A signed-out dashboard session: its cookie is refused until it would have expired anyway."""

    __tablename__ = "ml_revoked_sessions"
    __table_args__ = (Index("idx_ml_revoked_sessions_expires", "expires_at"),)

    session_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[float] = mapped_column(Float, nullable=False)
