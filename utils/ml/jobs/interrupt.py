"""Stopping a running job at a safe point when the process is asked to stop.

A signal handler (gunicorn's worker hooks, ``flask ml scheduler``) calls
:func:`request_stop`; jobs call :func:`checkpoint` where stopping leaves
nothing half done (between metric types, between committed scan batches,
between files of a cleanup), which raises :class:`JobInterrupted`.  The job
runner records such a run as ``interrupted`` (not failed); the next tick or
call does the rest.  The flag is per process and never cleared: a process
that was asked to stop does not start new work either.
"""
from __future__ import annotations

import signal
import threading
from typing import Any

_stop = threading.Event()


class JobInterrupted(RuntimeError):
    """The process is stopping; the job stopped at a safe point (everything before it is committed)."""


def request_stop() -> None:
    """Ask every job in this process to stop at its next safe point (safe in a signal handler)."""
    _stop.set()


def stop_requested() -> bool:
    return _stop.is_set()


def checkpoint(where: str) -> None:
    """Raise :class:`JobInterrupted` if a stop was requested; ``where`` names the safe point."""
    if _stop.is_set():
        raise JobInterrupted(f"interrupted by shutdown {where}")


def reset_for_tests() -> None:
    """Clear the flag (an in-process test that stopped a job goes on with the next)."""
    _stop.clear()


def guard_worker_signals() -> None:
    """In a gunicorn worker (``post_worker_init``): every stop signal also asks jobs to stop, and a
    second SIGINT/SIGQUIT is ignored.

    Why: Ctrl-C in a terminal sends SIGINT to the whole process group, so a
    worker gets SIGINT from the terminal *and* SIGQUIT from the master.
    gunicorn's handler answers each with ``sys.exit``; the second one raised
    inside the first one's exit path (the ``worker_exit`` hook stopping the
    scheduler) left the scheduler half stopped and its job thread running,
    the interpreter waited for that thread, and the master SIGKILLed the
    worker after ``GUNICORN_GRACEFUL_TIMEOUT``.
    """
    quitting = {"seen": False}
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        previous = signal.getsignal(sig)

        def handler(signum: int, frame: Any, previous: Any = previous) -> None:
            request_stop()
            if signum != signal.SIGTERM:
                if quitting["seen"]:
                    return  # already on the way out: let the exit path finish
                quitting["seen"] = True
            if callable(previous):
                previous(signum, frame)

        signal.signal(sig, handler)
