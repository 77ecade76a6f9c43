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

import contextlib
import signal
import threading
from typing import Any, Callable, Iterable, Iterator, Optional

# A plain flag, not a threading.Event: it is set from signal handlers, and a handler can be entered
# again by a second signal at any line of itself (Ctrl-C reaches a gunicorn worker as SIGINT from the
# terminal and SIGQUIT from the master).  Event.set holds a non-reentrant lock; a second stop signal
# landing inside it deadlocked the worker's main thread, and the master SIGKILLed the worker after
# GUNICORN_GRACEFUL_TIMEOUT (one stop in 20 of tests/test_shutdown.py, once).
_stop = {"requested": False}
_running = {"count": 0}
_idle = threading.Condition()


class JobInterrupted(RuntimeError):
    """The process is stopping; the job stopped at a safe point (everything before it is committed)."""


def request_stop() -> None:
    """Ask every job in this process to stop at its next safe point.

    Takes no lock, so it is safe in a signal handler, even one that a
    second signal interrupts (see ``_stop``).
    """
    _stop["requested"] = True


def stop_requested() -> bool:
    return _stop["requested"]


def checkpoint(where: str) -> None:
    """Raise :class:`JobInterrupted` if a stop was requested; ``where`` names the safe point."""
    if _stop["requested"]:
        raise JobInterrupted(f"interrupted by shutdown {where}")


@contextlib.contextmanager
def job_running() -> Iterator[None]:
    """Mark a job as running in this process for the block (the job runner wraps every run)."""
    with _idle:
        _running["count"] += 1
    try:
        yield
    finally:
        with _idle:
            _running["count"] -= 1
            _idle.notify_all()


def wait_for_jobs(timeout: float) -> bool:
    """Wait until no job runs in this process (at most ``timeout`` s); True when none does.

    A stopping process calls this after :func:`request_stop`, so each job gets
    to its next safe point and records itself as interrupted before the exit.
    """
    with _idle:
        return _idle.wait_for(lambda: _running["count"] == 0, timeout=timeout)


def reset_for_tests() -> None:
    """Clear the flag (an in-process test that stopped a job goes on with the next)."""
    _stop["requested"] = False


def on_stop_signals(signals: Iterable[int], then: Optional[Callable[[], None]] = None) -> dict[int, Any]:
    """Handle ``signals`` with :func:`request_stop` and then ``then()``; return the previous handlers.

    ``then`` must take no lock either (a plain assignment): the handler may
    run again inside itself when a second signal arrives (see ``_stop``).
    """
    def handler(signum: int, frame: Any) -> None:
        request_stop()
        if then is not None:
            then()

    return {sig: signal.signal(sig, handler) for sig in signals}


def guard_worker_signals(worker: Any) -> None:
    """In a gunicorn worker (``post_worker_init``): SIGTERM, SIGINT and SIGQUIT all ask jobs to
    stop and end the worker's loop (``worker.alive = False``); none raises anything.

    Why: gunicorn answers SIGINT/SIGQUIT in a worker with ``sys.exit`` from the
    signal handler, an exception raised at whatever line the main thread is
    on.  Ctrl-C in a terminal reaches every process of the group, so the
    scheduler-leader worker got SIGINT from the terminal and SIGQUIT from the
    master; landing inside the scheduler's start or stop, such an exception
    left it half started or half stopped with a thread still running, the
    interpreter waited for that thread, and the master SIGKILLed the worker
    after ``GUNICORN_GRACEFUL_TIMEOUT`` (about one stop in four).  Ending the
    loop instead lets the worker leave through its normal exit path, which
    stops the scheduler within its bounded wait.
    """
    def end_loop() -> None:
        worker.alive = False

    on_stop_signals((signal.SIGTERM, signal.SIGINT, signal.SIGQUIT), end_loop)
