"""Recording notifications: :func:`enqueue`.

One row per configured channel and idempotency key; a second enqueue of the
same key is a no-op (``INSERT ... ON CONFLICT DO NOTHING``, so it never
aborts the caller's transaction on PostgreSQL).  Pass the caller's
``session`` to commit the notification together with what it is about (the
caller commits); without one, the rows are committed on their own.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Mapping, Optional, Union

from flask import current_app
from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, scoped_session

from utils.extensions import db
from utils.ml import events
from utils.ml.notify import settings as notify_settings
from utils.ml.notify.errors import one_line
from utils.ml.notify.logutil import LogThrottle
from utils.ml.notify.models import KEY_MAX, PENDING, SUBJECT_MAX, Notification
from utils.time import utcnow

EXTENSION = "ml_notify"
KINDS = ("incident", "gate_decision", "drift", "job_failed")
DIGEST = "digest"
SEVERITIES = notify_settings.SEVERITIES
# Keys go into HTTP and mail headers: a conservative alphabet, no spaces.
KEY_PATTERN = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,%d}$" % KEY_MAX)
PAYLOAD_MAX_BYTES = 32 * 1024

Executor = Union[Session, scoped_session, Connection]


@dataclass
class NotifyState:
    """What ``init_app`` keeps in ``app.extensions[EXTENSION]``."""

    settings: dict[str, Any]
    throttle: LogThrottle = field(default_factory=LogThrottle)


class NotificationError(ValueError):
    """A bad argument to :func:`enqueue`: ``field`` and ``rule`` say which and why."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


def current_settings() -> dict[str, Any]:
    """The notification settings of the current app (``init_app`` must have run)."""
    state = current_app.extensions.get(EXTENSION)
    if state is None:
        raise RuntimeError("utils.ml.notify.init_app(app) has not been called for this app")
    return state.settings


def _validated(kind: str, key: str, payload: Any, severity: str, subject: Optional[str]) -> tuple[dict, str]:
    if kind not in KINDS:
        raise NotificationError("kind", f"must be one of {', '.join(KINDS)} (got {kind!r})")
    if not isinstance(key, str) or not KEY_PATTERN.match(key):
        raise NotificationError("key", f"must be 1-{KEY_MAX} characters of A-Z a-z 0-9 . _ : @ / + = - (got {key!r})")
    if severity not in SEVERITIES:
        raise NotificationError("severity", f"must be one of {', '.join(SEVERITIES)} (got {severity!r})")
    if not isinstance(payload, Mapping):
        raise NotificationError("payload", f"must be a JSON object (got {type(payload).__name__})")
    try:
        size = len(json.dumps(dict(payload), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise NotificationError("payload", f"must be JSON-serialisable ({exc})") from None
    if size > PAYLOAD_MAX_BYTES:
        raise NotificationError("payload", f"must be at most {PAYLOAD_MAX_BYTES} bytes as JSON (got {size})")
    text = one_line(subject if subject else f"{kind.replace('_', ' ')} {key}", SUBJECT_MAX)
    return dict(payload), text


def enqueue(kind: str, key: str, payload: Mapping[str, Any], severity: str = "info", *,
            subject: Optional[str] = None, session: Optional[Executor] = None,
            now: Optional[datetime] = None) -> list[int]:
    """Record notification ``key`` once per configured channel; return the ids of new rows.

    ``kind`` is one of :data:`KINDS`; ``key`` is the idempotency key (stable
    for the event: the same event enqueued twice is recorded once);
    ``severity`` one of :data:`SEVERITIES`.  Incidents below
    ``ML_NOTIFY_MIN_SEVERITY`` are not recorded (``[]``).  With ``session``
    (a Session or Connection) the rows join the caller's transaction and are
    not committed here; without it they are committed before return.  Raises
    :class:`NotificationError` (nothing recorded) for a bad argument.  Needs
    an app context on which :func:`utils.ml.notify.init_app` ran.
    """
    data, text = _validated(kind, key, payload, severity, subject)
    cfg = current_settings()
    if kind == "incident" and SEVERITIES.index(severity) < SEVERITIES.index(cfg["ML_NOTIFY_MIN_SEVERITY"]):
        return []
    return _insert(session, notify_settings.channels(cfg), kind, key, data, severity, text, now or utcnow())


def _insert_rows(executor: Executor, channels: tuple[str, ...], kind: str, key: str, payload: dict[str, Any],
                severity: str, subject: str, now: datetime) -> list[int]:
    """The INSERT ... ON CONFLICT DO NOTHING of one row per channel, on ``executor``."""
    bind = executor.get_bind() if hasattr(executor, "get_bind") else executor  # a (scoped) Session
    insert = postgresql.insert if bind.dialect.name == "postgresql" else sqlite.insert
    table = Notification.__table__
    ids = []
    for channel in channels:
        statement = insert(table).values(
            channel=channel, kind=kind, idempotency_key=key, severity=severity, subject=subject,
            payload=payload, status=PENDING, attempts=0, next_attempt_at=now, created_at=now,
        ).on_conflict_do_nothing(index_elements=["channel", "idempotency_key"]).returning(table.c.id)
        new_id = executor.execute(statement).scalar()
        if new_id is not None:
            ids.append(new_id)
    return ids


def _insert(session: Optional[Executor], channels: tuple[str, ...], kind: str, key: str,
            payload: dict[str, Any], severity: str, subject: str, now: datetime) -> list[int]:
    if not channels:
        return []
    if session is not None:
        ids = _insert_rows(session, channels, kind, key, payload, severity, subject, now)
    else:
        with db.engine.begin() as conn:
            ids = _insert_rows(conn, channels, kind, key, payload, severity, subject, now)
    if ids:
        events.emit("notification_enqueued", f"notification {key} ({kind}) recorded for {len(ids)} channel(s)",
                    kind=kind, key=key, severity=severity, channels=list(channels), ids=ids)
    return ids
