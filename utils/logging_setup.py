"""Logging: one JSON object per line (the default), or plain text for people.

``ML_LOG_FORMAT=text`` switches to human-readable lines.  Events emitted by
``utils.ml.events`` carry ``event`` and their fields as top-level keys, so an
operator can filter on ``event``, ``model_type``, ``metric_type``, ``job``...

Python warnings go through the same handler (``logging.captureWarnings``), so a
library's warning is one JSON line too, never raw text on stderr.

Repeated warnings and errors are rate-limited (:class:`RepeatFilter`): the same
logger, level and message template at most :data:`REPEAT_BURST` times per
``ML_LOG_REPEAT_WINDOW_SECONDS``; the next one let through says how many were
dropped (``suppressed``).  A database outage under load used to write every
failing request's lines, gigabytes in minutes; now it is a few lines per kind
per window.
"""
from __future__ import annotations

import json
import logging
import sys
import threading
import time
from datetime import datetime, timezone
from typing import Any

from flask import Flask

_CONFIGURED_ATTR = "_ml_configured"


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON line with the event's fields at top level."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
        }
        event = getattr(record, "event", None)
        if event:
            payload["event"] = event
        fields = getattr(record, "fields", None)
        if fields:
            for key, value in fields.items():
                payload.setdefault(key, value)
        suppressed = getattr(record, "suppressed", None)
        if suppressed:
            payload["suppressed"] = suppressed
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str, ensure_ascii=False)


# Lines of one kind let through per window before the rest are counted instead.
REPEAT_BURST = 3
# Kinds remembered at once (a bound on memory, whatever the messages are).
_MAX_KINDS = 1000


class RepeatFilter(logging.Filter):
    """Let at most ``burst`` WARNING-or-worse records of one kind through per ``window`` seconds.

    A kind is (logger, level, message template): the template, not the
    formatted text, so "database unavailable in %s" on a thousand paths is one
    kind.  The first record let through after a suppression carries
    ``suppressed`` (how many were dropped) and says so in its message.
    INFO and below (events, access lines) are never dropped.
    """

    def __init__(self, window: float, burst: int = REPEAT_BURST) -> None:
        super().__init__()
        self.window = window
        self.burst = burst
        self._lock = threading.Lock()
        self._kinds: dict[tuple, list] = {}  # kind -> [window start, let through, dropped]

    def filter(self, record: logging.LogRecord) -> bool:
        if self.window <= 0 or record.levelno < logging.WARNING:
            return True
        kind = (record.name, record.levelno, str(record.msg)[:300])
        now = time.monotonic()
        with self._lock:
            state = self._kinds.get(kind)
            if state is None or now - state[0] >= self.window:
                dropped = state[2] if state else 0
                if len(self._kinds) >= _MAX_KINDS and state is None:
                    self._kinds.clear()  # crude but bounded; kinds are few in practice
                self._kinds[kind] = [now, 1, 0]
            elif state[1] < self.burst:
                state[1] += 1
                dropped = 0
            else:
                state[2] += 1
                return False
        if dropped:
            record.suppressed = dropped
            record.msg = f"{record.msg} [{dropped} more like this suppressed in the last {self.window:g}s]"
        return True


def configure_logging(fmt: str | None = None, level: str | None = None, repeat_window: float = 10.0) -> None:
    """Install one stderr handler on the root logger (with the repeat filter), once per process,
    and send Python warnings through it."""
    root = logging.getLogger()
    if getattr(root, _CONFIGURED_ATTR, False):
        return
    fmt = (fmt or "json").lower()
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "text":
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(JsonFormatter())
    handler.addFilter(RepeatFilter(repeat_window))
    root.addHandler(handler)
    root.setLevel((level or "INFO").upper())
    logging.captureWarnings(True)  # warnings.warn -> logger "py.warnings" -> this handler
    setattr(root, _CONFIGURED_ATTR, True)


def init_app(app: Flask) -> None:
    # Under pytest the capture plugin owns the root logger; leave it alone.
    if not app.config.get("TESTING"):
        configure_logging(app.config["ML_LOG_FORMAT"], app.config["ML_LOG_LEVEL"],
                          app.config["ML_LOG_REPEAT_WINDOW_SECONDS"])
