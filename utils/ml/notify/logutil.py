"""Rate-limited logging of repeated delivery errors.

A webhook that is down fails every message of every pass with the same
error; the log should say so once per interval, with how many identical
lines it swallowed, not once per message.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, Hashable, Optional

from utils.ml import events

# Keys remembered at most; the oldest is forgotten first (bounded memory).
_MAX_KEYS = 1000


class LogThrottle:
    """Let one record per ``key`` through every ``interval`` seconds."""

    def __init__(self, interval: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._seen: dict[Hashable, tuple[float, int]] = {}  # key -> (last logged at, suppressed since)
        self._lock = threading.Lock()

    def admit(self, key: Hashable) -> Optional[int]:
        """``None`` to stay quiet; else how many records of ``key`` were suppressed since the last one."""
        now = self._clock()
        with self._lock:
            last = self._seen.get(key)
            if last is not None and now - last[0] < self.interval:
                self._seen[key] = (last[0], last[1] + 1)
                return None
            self._seen.pop(key, None)
            if len(self._seen) >= _MAX_KEYS:
                self._seen.pop(next(iter(self._seen)))
            self._seen[key] = (now, 0)
            return last[1] if last else 0


def emit_throttled(throttle: LogThrottle, key: Hashable, event: str, message: str, level: int, /,
                   **fields: Any) -> None:
    """``events.emit`` unless ``key`` was logged within the throttle's interval."""
    suppressed = throttle.admit(key)
    if suppressed is None:
        return
    if suppressed:
        fields["suppressed"] = suppressed
        message = f"{message} (and {suppressed} identical record(s) suppressed)"
    events.emit(event, message, level=level, **fields)

