"""Operational events: one structured log record each, plus in-process listeners.

Components call ``emit("model_loaded", model_type=..., ms=...)``.  The event is
logged on the ``ml.events`` logger with its fields attached (the JSON log
formatter writes them as one line), and every registered listener (the
Prometheus metrics, for instance) is called with the same fields.  A failing
listener is logged and never breaks the caller.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable

logger = logging.getLogger("ml.events")

Listener = Callable[[str, dict[str, Any]], None]
# Copy-on-write: emit() reads one tuple reference (atomic) instead of copying a
# list on every call; the warm model load emits once per call.
_listeners: tuple[Listener, ...] = ()
_lock = threading.Lock()

# Events that mean something went wrong are logged at WARNING or ERROR.
_LEVELS = {
    "model_load_failed": logging.WARNING,
    "model_fallback": logging.WARNING,
    "model_save_failed": logging.ERROR,
    "model_version_mismatch": logging.WARNING,
    "model_migration_failed": logging.ERROR,
    "cleanup_error": logging.ERROR,
    "disk_space_low": logging.WARNING,
    "job_failed": logging.ERROR,
}


def add_listener(listener: Listener) -> None:
    global _listeners
    with _lock:
        if listener not in _listeners:
            _listeners = _listeners + (listener,)


def remove_listener(listener: Listener) -> None:
    global _listeners
    with _lock:
        if listener in _listeners:
            _listeners = tuple(item for item in _listeners if item != listener)


def emit(event: str, message: str | None = None, level: int | None = None, **fields: Any) -> None:
    """Log ``event`` with ``fields`` and notify listeners."""
    level = level if level is not None else _LEVELS.get(event, logging.INFO)
    listeners = _listeners
    if logger.isEnabledFor(level):
        logger.log(level, message or event, extra={"event": event, "fields": fields})
    elif not listeners:
        return  # the fast path: nothing would be logged and nobody listens
    for listener in listeners:
        try:
            listener(event, fields)
        except Exception:  # a metrics bug must never break a save or a scan
            logger.exception("event listener %r failed on %s", listener, event)
