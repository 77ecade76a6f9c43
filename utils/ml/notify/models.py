"""The outbox table: one row per (channel, idempotency key).

Statuses: ``pending`` (due at ``next_attempt_at``; being sent while
``lease_expires_at`` is in the future), ``in_digest`` (held back by the rate
limit and folded into the digest row ``digest_id``), ``delivered`` (sent,
or sent as part of digest ``digest_id``) and ``dead`` (gave up; ``last_error``
says why).  Created by migration ``0007_notification_outbox``.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

from sqlalchemy import JSON, CheckConstraint, DateTime, Index, Integer, String, Text, UniqueConstraint, func, text
from sqlalchemy.orm import Mapped, mapped_column

from utils.extensions import db
from utils.time import utcnow

PENDING = "pending"
IN_DIGEST = "in_digest"
DELIVERED = "delivered"
DEAD = "dead"
STATUSES = (PENDING, IN_DIGEST, DELIVERED, DEAD)

KEY_MAX = 200
SUBJECT_MAX = 200


class Notification(db.Model):
    """One message for one channel; ``idempotency_key`` travels with every send."""

    __tablename__ = "ml_notifications"
    __table_args__ = (
        # Enqueuing the same event twice records it once per channel.
        UniqueConstraint("channel", "idempotency_key", name="uq_ml_notifications_channel_key"),
        # The delivery pass: due rows of one channel, oldest first.
        Index("idx_ml_notifications_due", "channel", "status", "next_attempt_at"),
        # The rate limit: messages sent on a channel in the last hour.
        Index("idx_ml_notifications_sent", "channel", "status", "delivered_at"),
        Index("idx_ml_notifications_digest", "digest_id"),
        CheckConstraint("status IN ('pending', 'in_digest', 'delivered', 'dead')", name="status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    channel: Mapped[str] = mapped_column(String(16), nullable=False)
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    idempotency_key: Mapped[str] = mapped_column(String(KEY_MAX), nullable=False)
    severity: Mapped[str] = mapped_column(String(16), nullable=False)
    subject: Mapped[str] = mapped_column(String(SUBJECT_MAX), nullable=False)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default=PENDING,
                                        server_default=text("'pending'"))
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default=text("0"))
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow,
                                                      server_default=func.now())
    # Set when a pass found the row due but the channel's hourly budget spent:
    # such rows go out together as one digest when the window allows.
    held_at: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True), nullable=True)
    lease_owner: Mapped[Optional[str]] = mapped_column(String(120), nullable=True)
    lease_expires_at: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True), nullable=True)
    last_error: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    # Not a foreign key on purpose: a purge of old rows must not need an order.
    digest_id: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow,
                                                 server_default=func.now())
    delivered_at: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True), nullable=True)
