"""Delivering the outbox: :func:`deliver_pending`, one pass over every configured channel.

Per channel and pass, with ``B`` the messages the channel may still send this
hour (``ML_NOTIFY_RATE_PER_HOUR`` minus those sent in the last hour):

* ``B <= 0``: nothing is sent; due rows are marked *held*.
* otherwise, if nothing is held and everything due fits, each row goes out on
  its own; else the oldest ``B - 1`` fresh rows go out on their own and the
  held rows plus the rest are folded into ONE digest (listing each original
  key), so the pass never sends more than ``B`` messages.

Each message is claimed (leased) just before it is sent and finished right
after, so a sender killed mid-send leaves a row whose lease expires and
which the next pass sends again: at-least-once, with the same idempotency
key, which receivers use to drop the duplicate.
"""
from __future__ import annotations

import logging
import os
import random
import socket
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any, Callable, Mapping, Optional

from flask import Flask, current_app
from sqlalchemy import Engine

from utils.extensions import db
from utils.ml import events
from utils.ml.notify import smtp, store, webhook
from utils.ml.notify.errors import SendError, describe
from utils.ml.notify.logutil import emit_throttled
from utils.ml.notify.outbox import EXTENSION, NotifyState
from utils.ml.notify.settings import channels as configured_channels
from utils.time import as_utc, utcnow

logger = logging.getLogger("ml.notify")

_RNG = random.Random()
SENDERS: dict[str, Callable[[Mapping[str, Any], Mapping[str, Any]], str]] = {
    "webhook": webhook.send,
    "email": smtp.send,
}


@dataclass
class DeliveryReport:
    """What one pass did: messages sent, failures retried or given up, digests formed, rows held back."""

    delivered: int = 0
    retried: int = 0
    dead: int = 0
    digests: int = 0
    held: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def message_of(row: Mapping[str, Any]) -> dict[str, Any]:
    """What a channel sends for outbox ``row`` (the JSON body of the webhook)."""
    message = {
        "idempotency_key": row["idempotency_key"], "kind": row["kind"], "severity": row["severity"],
        "subject": row["subject"], "created_at": as_utc(row["created_at"]).isoformat(),
        "attempt": row["attempts"], "payload": row["payload"],
    }
    if row["kind"] == store.DIGEST:
        message["replaces"] = [item["idempotency_key"] for item in row["payload"]["items"]]
    return message


def backoff(attempts: int, base: float, cap: float, rng: random.Random = _RNG) -> float:
    """Seconds before retry number ``attempts``: ``min(cap, base * 2**(attempts-1))``, half of it jittered."""
    delay = min(cap, base * 2 ** max(0, attempts - 1))
    return delay / 2 + rng.uniform(0, delay / 2)


def deliver_pending(app: Optional[Flask] = None, *, now: Optional[datetime] = None) -> DeliveryReport:
    """Send every due message of every configured channel once; never raises for a failed send.

    ``app`` defaults to the current app (``init_app`` must have run on it).
    ``now`` (aware UTC) is the pass's start on the outbox clock: due times,
    leases, backoff and the rate window are measured from it (tests move it
    forward instead of sleeping); it advances with the real time the pass takes.
    """
    if app is not None:
        with app.app_context():
            return deliver_pending(now=now)
    state = current_app.extensions.get(EXTENSION)
    if state is None:
        raise RuntimeError("utils.ml.notify.init_app(app) has not been called for this app")
    start, t0 = as_utc(now) if now is not None else utcnow(), time.monotonic()

    def clock() -> datetime:
        return start + timedelta(seconds=time.monotonic() - t0)

    owner = f"{socket.gethostname()[:80]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    report = DeliveryReport()
    for channel in configured_channels(state.settings):
        _deliver_channel(db.engine, state, channel, owner, clock, report)
    return report


def _deliver_channel(engine: Engine, state: NotifyState, channel: str, owner: str, clock: Callable[[], datetime],
                     report: DeliveryReport) -> None:
    cfg = state.settings
    now = clock()
    room = store.budget(engine, channel, cfg["ML_NOTIFY_RATE_PER_HOUR"], now)
    due = store.candidates(engine, channel, now, cfg["ML_NOTIFY_BATCH_SIZE"])
    if not due:
        return
    digests = [c.id for c in due if c.kind == store.DIGEST]  # a digest is never folded into another
    held = [c.id for c in due if c.kind != store.DIGEST and c.held]
    fresh = [c.id for c in due if c.kind != store.DIGEST and not c.held]
    singles, room = digests[:max(room, 0)], room - len(digests)
    members: list[int] = []
    if room > 0:
        if not held and len(fresh) <= room:
            singles += fresh
        else:
            singles += fresh[:room - 1]
            members = held + fresh[room - 1:]
            if len(members) == 1:  # a digest of one is just the message
                singles, members = singles + members, []
    else:
        waiting = held + fresh
        report.held += len(waiting)
        if store.hold(engine, waiting, now):
            emit_throttled(state.throttle, ("held", channel), "notification_held",
                           f"{channel}: {len(waiting)} notification(s) held back by the rate limit "
                           f"({cfg['ML_NOTIFY_RATE_PER_HOUR']} per hour)", logging.WARNING,
                           channel=channel, count=len(waiting))
    if members:
        digest_id = store.form_digest(engine, channel, members, clock())
        if digest_id is not None:
            report.digests += 1
            singles.append(digest_id)
    for row_id in singles:
        _send_one(engine, state, channel, row_id, owner, clock, report)


def _send_one(engine: Engine, state: NotifyState, channel: str, row_id: int, owner: str, clock: Callable[[], datetime],
              report: DeliveryReport) -> None:
    cfg = state.settings
    row = store.claim(engine, row_id, owner, clock(), cfg["ML_NOTIFY_LEASE_SECONDS"])
    if row is None:
        return  # another sender claimed it, or it is no longer due
    fields = {"channel": channel, "kind": row["kind"], "key": row["idempotency_key"], "notification_id": row["id"],
              "attempts": row["attempts"]}
    try:
        outcome = SENDERS[channel](cfg, message_of(row))
    except SendError as exc:
        _failed(engine, state, row, owner, str(exc), exc.permanent, clock(), fields, report)
        return
    except Exception as exc:  # a bug in a sender must not stop the pass or lose the row
        logger.exception("sending notification %s over %s raised", row["id"], channel)
        _failed(engine, state, row, owner, describe(exc), False, clock(), fields, report)
        return
    if store.mark_delivered(engine, row, clock()):
        report.delivered += 1
        events.emit("notification_delivered", f"{channel}: {row['idempotency_key']} delivered ({outcome})",
                    **fields, outcome=outcome)


def _failed(engine: Engine, state: NotifyState, row: dict[str, Any], owner: str, error: str, permanent: bool,
            now: datetime, fields: dict[str, Any], report: DeliveryReport) -> None:
    cfg = state.settings
    gives_up = permanent or row["attempts"] >= cfg["ML_NOTIFY_MAX_ATTEMPTS"]
    delay = None if gives_up else backoff(row["attempts"], cfg["ML_NOTIFY_RETRY_BASE_SECONDS"],
                                          cfg["ML_NOTIFY_RETRY_MAX_SECONDS"])
    retry_at = None if delay is None else now + timedelta(seconds=delay)
    if not store.mark_failed(engine, row, owner, error, retry_at):
        return  # the lease had passed to another sender: its outcome stands
    channel = fields["channel"]
    if gives_up:
        report.dead += 1
        why = "permanent failure" if permanent else f"{row['attempts']} attempts"
        emit_throttled(state.throttle, ("dead", channel, error), "notification_dead",
                       f"{channel}: {row['idempotency_key']} given up after {why}: {error}", logging.ERROR,
                       **fields, error=error, permanent=permanent)
    else:
        report.retried += 1
        emit_throttled(state.throttle, ("retry", channel, error), "notification_retry",
                       f"{channel}: {row['idempotency_key']} failed, retry in {delay:.1f} s: {error}",
                       logging.WARNING, **fields, error=error, retry_in_s=round(delay, 3))
