"""The outbox's state changes, each one short transaction (no lock is held while sending).

Claiming is what keeps two senders apart: a row is claimable when it is
``pending``, due and its lease is free or expired.  On PostgreSQL the
candidate is locked with ``FOR UPDATE SKIP LOCKED`` (a concurrent claimer
skips it instead of waiting); the ``UPDATE`` repeats the claimable condition,
which on SQLite (no ``FOR UPDATE``; writers serialised by the database lock)
is what makes the claim conditional.  Finishing a row checks it is still
``pending`` so a late sender never overwrites another's outcome.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Optional, Sequence

from sqlalchemy import Engine, and_, func, or_, select, update

from utils.ml.notify.models import DEAD, DELIVERED, IN_DIGEST, PENDING, SUBJECT_MAX, Notification
from utils.ml.notify.settings import SEVERITIES
from utils.time import as_utc

T = Notification.__table__
DIGEST = "digest"
WINDOW = timedelta(hours=1)


@dataclass(frozen=True)
class Candidate:
    id: int
    kind: str
    held: bool


def claimable(now: datetime) -> Any:
    return and_(T.c.status == PENDING, T.c.next_attempt_at <= now,
                or_(T.c.lease_expires_at.is_(None), T.c.lease_expires_at <= now))


def budget(engine: Engine, channel: str, rate: int, now: datetime) -> int:
    """Messages ``channel`` may still send in the hour ending at ``now``.

    Sent messages are rows delivered on their own (a digest counts once, its
    members not at all); messages being sent right now (live leases) count too.
    """
    with engine.connect() as conn:
        sent = conn.execute(select(func.count()).select_from(T).where(
            T.c.channel == channel, T.c.status == DELIVERED, T.c.digest_id.is_(None),
            T.c.delivered_at > now - WINDOW)).scalar_one()
        in_flight = conn.execute(select(func.count()).select_from(T).where(
            T.c.channel == channel, T.c.status == PENDING, T.c.lease_expires_at > now)).scalar_one()
    return rate - sent - in_flight


def candidates(engine: Engine, channel: str, now: datetime, limit: int) -> list[Candidate]:
    """Due, unclaimed rows of ``channel``, oldest first (not locked: claims decide)."""
    with engine.connect() as conn:
        rows = conn.execute(select(T.c.id, T.c.kind, T.c.held_at).where(T.c.channel == channel, claimable(now))
                            .order_by(T.c.next_attempt_at, T.c.id).limit(limit)).all()
    return [Candidate(r.id, r.kind, r.held_at is not None) for r in rows]


def hold(engine: Engine, ids: Sequence[int], now: datetime) -> int:
    """Mark ``ids`` as held back by the rate limit (the first time only); return how many were new."""
    if not ids:
        return 0
    with engine.begin() as conn:
        return conn.execute(update(T).where(T.c.id.in_(ids), T.c.held_at.is_(None), T.c.status == PENDING)
                            .values(held_at=now)).rowcount


def _lock(ids: Sequence[int], now: datetime) -> Any:
    """The claimable subset of ``ids``; PostgreSQL locks it, skipping rows another claimer holds."""
    return select(T.c.id).where(T.c.id.in_(ids), claimable(now)).with_for_update(skip_locked=True)


def form_digest(engine: Engine, channel: str, ids: Sequence[int], now: datetime) -> Optional[int]:
    """Fold the claimable rows of ``ids`` into one new digest row; return its id (None if none was left).

    The digest's payload lists each member (key, kind, severity, subject,
    created_at, payload); its key is derived from the member keys, so it is
    stable across retries of the digest.
    """
    with engine.begin() as conn:
        members = conn.execute(
            update(T).where(T.c.id.in_(_lock(ids, now)), claimable(now)).values(status=IN_DIGEST, held_at=None)
            .returning(T.c.id, T.c.idempotency_key, T.c.kind, T.c.severity, T.c.subject, T.c.created_at,
                       T.c.payload)).all()
        if not members:
            return None
        members.sort(key=lambda m: (m.created_at, m.id))
        items = [{"idempotency_key": m.idempotency_key, "kind": m.kind, "severity": m.severity,
                  "subject": m.subject, "created_at": _iso(m.created_at), "payload": m.payload} for m in members]
        keys = "\n".join(sorted(m.idempotency_key for m in members))
        key = f"digest:{channel}:{hashlib.sha256(keys.encode()).hexdigest()[:32]}"
        worst = max(members, key=lambda m: SEVERITIES.index(m.severity)).severity
        digest_id = conn.execute(T.insert().values(
            channel=channel, kind=DIGEST, idempotency_key=key, severity=worst,
            subject=f"{len(members)} notifications held back by the rate limit"[:SUBJECT_MAX],
            payload={"count": len(members), "items": items}, status=PENDING, attempts=0,
            next_attempt_at=now, created_at=now).returning(T.c.id)).scalar_one()
        conn.execute(update(T).where(T.c.id.in_([m.id for m in members])).values(digest_id=digest_id))
    return digest_id


def claim(engine: Engine, row_id: int, owner: str, now: datetime, lease_seconds: float) -> Optional[dict[str, Any]]:
    """Lease row ``row_id`` to ``owner`` and count the attempt; None when it is not claimable any more."""
    with engine.begin() as conn:
        row = conn.execute(
            update(T).where(T.c.id.in_(_lock([row_id], now)), claimable(now))
            .values(lease_owner=owner, lease_expires_at=now + timedelta(seconds=lease_seconds),
                    attempts=T.c.attempts + 1)
            .returning(*T.c)).mappings().first()
    return dict(row) if row else None


def mark_delivered(engine: Engine, row: dict[str, Any], now: datetime) -> bool:
    """``row`` (and, for a digest, its members) delivered; False if it was no longer pending."""
    with engine.begin() as conn:
        done = conn.execute(update(T).where(T.c.id == row["id"], T.c.status == PENDING).values(
            status=DELIVERED, delivered_at=now, lease_owner=None, lease_expires_at=None, held_at=None)).rowcount
        if done and row["kind"] == DIGEST:
            conn.execute(update(T).where(T.c.digest_id == row["id"], T.c.status == IN_DIGEST)
                         .values(status=DELIVERED, delivered_at=now))
    return bool(done)


def mark_failed(engine: Engine, row: dict[str, Any], owner: str, error: str,
                retry_at: Optional[datetime]) -> bool:
    """Record a failed send: retry at ``retry_at``, or (None) dead, members of a digest too.

    Only the lease holder may do this (another sender may have taken over).
    """
    values: dict[str, Any] = {"last_error": error, "lease_owner": None, "lease_expires_at": None}
    values.update({"next_attempt_at": retry_at} if retry_at is not None else {"status": DEAD})
    with engine.begin() as conn:
        done = conn.execute(update(T).where(T.c.id == row["id"], T.c.status == PENDING,
                                            T.c.lease_owner == owner).values(**values)).rowcount
        if done and retry_at is None and row["kind"] == DIGEST:
            conn.execute(update(T).where(T.c.digest_id == row["id"], T.c.status == IN_DIGEST).values(
                status=DEAD, last_error=f"digest {row['id']} failed: {error}"))
    return bool(done)


def _iso(value: Any) -> str:
    return as_utc(value).isoformat() if isinstance(value, datetime) else str(value)
