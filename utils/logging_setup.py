"""Logging: one JSON object per line (the default), or plain text for people.

``ML_LOG_FORMAT=text`` switches to human-readable lines.  Events emitted by
``utils.ml.events`` carry ``event`` and their fields as top-level keys, so an
operator can filter on ``event``, ``model_type``, ``metric_type``, ``job``...
"""
from __future__ import annotations

import json
import logging
import sys
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
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str, ensure_ascii=False)


def configure_logging(fmt: str | None = None, level: str | None = None) -> None:
    """Install one stderr handler on the root logger, once per process."""
    root = logging.getLogger()
    if getattr(root, _CONFIGURED_ATTR, False):
        return
    fmt = (fmt or "json").lower()
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "text":
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel((level or "INFO").upper())
    setattr(root, _CONFIGURED_ATTR, True)


def init_app(app: Flask) -> None:
    # Under pytest the capture plugin owns the root logger; leave it alone.
    if not app.config.get("TESTING"):
        configure_logging(app.config["ML_LOG_FORMAT"], app.config["ML_LOG_LEVEL"])
