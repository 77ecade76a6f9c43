"""``notify_test``: send one test message through each configured channel now (not via the outbox)."""
from __future__ import annotations

import time
import uuid
from typing import Any, Iterable, Optional

from flask import Flask, current_app

from utils.ml.notify.delivery import SENDERS
from utils.ml.notify.errors import SendError, describe
from utils.ml.notify.outbox import current_settings
from utils.ml.notify.settings import channels as configured_channels
from utils.time import utcnow


def notify_test(app: Optional[Flask] = None, channels: Optional[Iterable[str]] = None) -> dict[str, dict[str, Any]]:
    """Send a test message through each configured channel (or those named); return per-channel results.

    Each result has ``ok`` (bool), ``ms`` (time taken), ``key`` (the test
    message's idempotency key) and ``detail`` (the receiver's answer) or
    ``error`` (one line, no secrets) and ``permanent``.  An empty dict means no
    channel is configured.  Raises ``ValueError`` for a channel that is not configured.
    """
    if app is not None:
        with app.app_context():
            return notify_test(channels=channels)
    cfg = current_settings()
    available = configured_channels(cfg)
    chosen = list(channels) if channels else list(available)
    unknown = [name for name in chosen if name not in available]
    if unknown:
        raise ValueError(f"channel: {unknown[0]!r} is not configured (configured: {', '.join(available) or 'none'})")
    now = utcnow()
    results: dict[str, dict[str, Any]] = {}
    for name in chosen:
        key = f"test:{now.strftime('%Y%m%dT%H%M%SZ')}:{uuid.uuid4().hex[:12]}"
        message = {"idempotency_key": key, "kind": "test", "severity": "info",
                   "subject": f"test message from the minibar ML service ({current_app.name})",
                   "created_at": now.isoformat(), "attempt": 1,
                   "payload": {"note": "sent by flask ml notify-test; no action needed"}}
        started = time.perf_counter()
        try:
            detail = SENDERS[name](cfg, message)
            result: dict[str, Any] = {"ok": True, "detail": detail}
        except SendError as exc:
            result = {"ok": False, "error": str(exc), "permanent": exc.permanent}
        except Exception as exc:  # noqa: BLE001 - the command reports every channel
            result = {"ok": False, "error": describe(exc), "permanent": False}
        results[name] = dict(result, key=key, ms=round((time.perf_counter() - started) * 1000, 1))
    return results
