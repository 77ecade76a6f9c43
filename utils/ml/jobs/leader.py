"""Scheduler leader election: one process runs the ticks, the others stand by.

:class:`LeaderElector` runs one :class:`~utils.ml.jobs.locks.DistributedLock`
in a heartbeat thread: it keeps trying to acquire while it is a follower and
re-verifies (PostgreSQL) or renews (lease) while it leads.  Leadership is
trusted only for a bounded time after the last successful check, so a
stalled heartbeat stops a process from claiming ticks before another process
can take over.  Every change is an event: ``scheduler_leadership`` with
``leader=True/False``.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any, Optional

from utils.ml import events
from utils.ml.jobs.locks import DistributedLock

logger = logging.getLogger("ml.leader")

_electors: list["LeaderElector"] = []
_electors_lock = threading.Lock()


class LeaderElector:
    """Keeps competing for ``lock`` in a heartbeat thread; says whether we lead.

    ``validity_seconds`` bounds how long one successful check is trusted: a
    lease is trusted for less than its time to live, so this process stops
    claiming ticks before anyone else may take the lease over.
    """

    def __init__(self, lock: DistributedLock, heartbeat_seconds: float, validity_seconds: float,
                 backend: str = "") -> None:
        if validity_seconds <= heartbeat_seconds:
            raise ValueError(
                f"leader validity ({validity_seconds}s) must exceed the heartbeat ({heartbeat_seconds}s)")
        self.lock = lock
        self.heartbeat = heartbeat_seconds
        self.validity = validity_seconds
        self.backend = backend
        self._leader = False
        self._valid_until = 0.0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._state_lock = threading.Lock()

    # Public state --------------------------------------------------------
    def is_leader(self) -> bool:
        """True while this process holds leadership and its last check is recent."""
        with self._state_lock:
            return self._leader and time.monotonic() < self._valid_until

    def describe(self) -> dict[str, Any]:
        return {"leader": self.is_leader(), "backend": self.backend, "heartbeat_s": self.heartbeat,
                **self.lock.describe()}

    # Lifecycle -----------------------------------------------------------
    def start(self) -> None:
        """Try once right away, then keep polling every heartbeat in a daemon thread."""
        with _electors_lock:
            _electors.append(self)
        self.poll()
        self._thread = threading.Thread(target=self._run, name="ml-leader-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                self.poll()
            except Exception:  # the heartbeat must survive anything
                logger.exception("leader heartbeat failed")

    def poll(self) -> bool:
        """One heartbeat: verify (leader) or try to acquire (follower)."""
        started = time.monotonic()
        was = self._leader
        ok = self.lock.verify() if was else self.lock.try_acquire()
        with self._state_lock:
            self._leader = ok
            if ok:
                self._valid_until = started + self.validity
        if ok != was:
            self._announce(ok, "acquired" if ok else "lost")
        return ok

    def stop(self) -> None:
        """Stop the heartbeat and give leadership up so another process takes over at once."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        was = self._leader
        with self._state_lock:
            self._leader = False
        self.lock.release()
        if was:
            self._announce(False, "released")
        with _electors_lock:
            if self in _electors:
                _electors.remove(self)

    def _announce(self, leader: bool, how: str) -> None:
        events.emit(
            "scheduler_leadership",
            f"scheduler leadership {how} by pid {os.getpid()}",
            level=logging.INFO if leader or how == "released" else logging.WARNING,
            leader=leader, change=how, backend=self.backend, lock=self.lock.name,
            host=socket.gethostname(), pid=os.getpid(),
        )


def is_leader() -> bool:
    """True when a scheduler in this process currently leads (for ``/metrics``)."""
    with _electors_lock:
        electors = list(_electors)
    return any(elector.is_leader() for elector in electors)
