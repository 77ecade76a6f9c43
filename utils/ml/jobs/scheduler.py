"""The APScheduler jobs, run exactly once per tick however many processes start them.

Every process that starts a scheduler (each gunicorn worker with
``ML_SCHEDULER_ENABLED=true``, each app container, the dedicated ``flask ml
scheduler`` process) runs the same ``BackgroundScheduler`` with three
interval jobs aligned to the epoch, and competes for leadership through
:mod:`utils.ml.jobs.leader`.  At every tick each process computes the same
``scheduled_for``; only the leader claims and runs it through the job runner,
and the claim itself is a unique row (:mod:`utils.ml.jobs.runner`), so a tick
runs once even while a dead leader's successor is taking over.

Nothing starts at import or in ``create_app``: ``flask db upgrade``, other
``flask`` commands and test apps never run jobs.  The scheduler is started
explicitly by :func:`start_for_web_worker` (the gunicorn ``post_worker_init``
hook, when ``ML_SCHEDULER_ENABLED`` and ``ML_ENABLED`` are true) or by
``flask ml scheduler``, and stopped by :func:`stop_scheduler` (gunicorn's
``worker_exit`` hook, SIGTERM in the dedicated process, or interpreter exit),
which gives leadership up so another process takes over at once.
"""
from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from datetime import datetime, timezone
from typing import Any, Optional

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from flask import Flask

from utils.ml import events
from utils.ml.jobs.definitions import JOBS
from utils.ml.jobs.interrupt import request_stop, wait_for_jobs
from utils.ml.jobs.leader import LeaderElector
from utils.ml.jobs.locks import LEADER_LOCK_CLASS, LEADER_LOCK_NAME, make_lock
from utils.ml.jobs.runner import run_scheduled_tick, tick_for

logger = logging.getLogger("ml.scheduler")

EXTENSION_KEY = "ml_scheduler"
# Interval triggers count from the epoch, so every process fires at the same
# aligned instants (k * interval) that runner.tick_for() names.
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

_start_lock = threading.Lock()
# How long a stopping scheduler waits for a running job to reach its next safe point.
SHUTDOWN_WAIT_SECONDS = 3.0


def misfire_grace_seconds(interval: float) -> int:
    """How late a tick may still start: under one interval (APScheduler wants a
    whole number >= 1), so the tick computed at start is the one scheduled."""
    return max(1, int(interval // 2))


class MLScheduler:
    """One process's scheduler: APScheduler jobs plus a leader elector."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        cfg = app.config
        self.intervals = {name: float(cfg[job.interval_setting]) for name, job in JOBS.items()}
        heartbeat = float(cfg["ML_SCHEDULER_HEARTBEAT_SECONDS"])
        lease = float(cfg["ML_SCHEDULER_LEASE_SECONDS"])
        lock = make_lock(cfg["SQLALCHEMY_DATABASE_URI"], LEADER_LOCK_NAME, LEADER_LOCK_CLASS, lease,
                         application_name="ml-scheduler-leader", keep_connection=True)
        if lock.needs_renewal:
            if lease <= 2 * heartbeat:
                raise ValueError(
                    f"ML_SCHEDULER_LEASE_SECONDS={lease:g} must be more than twice "
                    f"ML_SCHEDULER_HEARTBEAT_SECONDS={heartbeat:g} (a lease must survive a missed heartbeat)")
            # Stop trusting a lease one heartbeat before anyone may take it over.
            validity, backend = lease - heartbeat, "lease"
        else:
            # The advisory lock is held as long as the session lives; stop
            # claiming ticks if the heartbeat that proves it has stalled.
            validity, backend = 3 * heartbeat, "postgresql"
        self.elector = LeaderElector(lock, heartbeat, validity, backend=backend)
        self._stopping = threading.Event()
        self._aps = BackgroundScheduler(
            timezone=timezone.utc,
            # One thread per job: a long training run never delays a scan.
            executors={"default": ThreadPoolExecutor(max_workers=len(JOBS))},
            job_defaults={"coalesce": True, "max_instances": 1},
        )
        # "Running job ..." at every tick in every process is noise; misfires
        # and errors are warnings and still get through.
        logging.getLogger("apscheduler.executors.default").setLevel(logging.WARNING)

    @property
    def running(self) -> bool:
        return self._aps.running and not self._stopping.is_set()

    def start(self) -> None:
        self.elector.start()
        for name, interval in self.intervals.items():
            self._aps.add_job(
                self._tick, IntervalTrigger(seconds=interval, start_date=EPOCH, timezone=timezone.utc),
                args=(name, interval), id=name, name=name, misfire_grace_time=misfire_grace_seconds(interval),
            )
        self._aps.start()
        events.emit("scheduler_started", f"scheduler started in pid {os.getpid()}", pid=os.getpid(),
                    backend=self.elector.backend, leader=self.elector.is_leader(),
                    intervals={name: interval for name, interval in self.intervals.items()})

    def _tick(self, name: str, interval: float) -> Optional[dict[str, Any]]:
        # Computed first: a process stalled past the tick must not claim the next one.
        scheduled_for = tick_for(time.time(), interval)
        if self._stopping.is_set() or not self.elector.is_leader():
            return None
        return run_scheduled_tick(self.app, name, scheduled_for)

    def shutdown(self, wait: bool = True, timeout: float = SHUTDOWN_WAIT_SECONDS) -> bool:
        """Stop ticking, wait for running jobs (``wait``, at most ``timeout`` seconds), then give
        leadership up.

        A process that is stopping calls :func:`~utils.ml.jobs.interrupt.request_stop` first
        (the signal paths do), so a running job stops at its next safe point within the wait;
        one that has not by then is recorded as abandoned by the next run.
        Returns False when a job was still running at the end of the wait.
        """
        if self._stopping.is_set():
            return True
        self._stopping.set()
        finished = True
        try:
            if self._aps.running:
                self._aps.shutdown(wait=False)
            if wait:  # every job of this process: ticks, and API calls running one in a request thread
                finished = wait_for_jobs(timeout)
        finally:
            self.elector.stop()
            events.emit("scheduler_stopped", f"scheduler stopped in pid {os.getpid()}", pid=os.getpid())
        return finished

    def describe(self) -> dict[str, Any]:
        jobs = {}
        for name, interval in self.intervals.items():
            job = self._aps.get_job(name) if self._aps.running else None
            next_run = getattr(job, "next_run_time", None)
            jobs[name] = {"interval_s": interval, "next_run": next_run.isoformat() if next_run else None}
        return {"running": self.running, "pid": os.getpid(), **self.elector.describe(), "jobs": jobs}


def current_scheduler(app: Flask) -> Optional[MLScheduler]:
    """The scheduler running in this process for ``app``, if any."""
    return app.extensions.get(EXTENSION_KEY)


def start_scheduler(app: Flask) -> MLScheduler:
    """Start this process's scheduler for ``app`` (idempotent) and return it."""
    with _start_lock:
        existing = current_scheduler(app)
        if existing is not None and existing.running:
            return existing
        scheduler = MLScheduler(app)
        scheduler.start()
        app.extensions[EXTENSION_KEY] = scheduler
        # Last resort for exits that skip the explicit stop (a plain sys.exit).
        atexit.register(scheduler.shutdown, False)
        return scheduler


def stop_scheduler(app: Flask, wait: bool = True) -> bool:
    """Stop this process's scheduler for ``app``, if one runs, and release leadership;
    False when a job was still running after the bounded wait."""
    with _start_lock:
        scheduler = app.extensions.get(EXTENSION_KEY)
        app.extensions[EXTENSION_KEY] = None
    if scheduler is not None:
        return scheduler.shutdown(wait=wait)
    return True


def exit_now_if_stuck(finished: bool) -> None:
    """A stopping process whose job did not reach a safe point in time exits at once: the
    interpreter would otherwise wait for that thread (a fit can take minutes), and a
    supervisor would SIGKILL it.  Its run row is marked abandoned by the next run."""
    if finished:
        return
    logger.warning("a job did not reach a safe point within %ss; exiting without it", SHUTDOWN_WAIT_SECONDS)
    logging.shutdown()
    os._exit(0)


def start_for_web_worker(wsgi_app: Any) -> Optional[MLScheduler]:
    """gunicorn ``post_worker_init``: start when ``ML_SCHEDULER_ENABLED`` and ``ML_ENABLED`` are true."""
    if not isinstance(wsgi_app, Flask):
        logger.warning("scheduler not started: the WSGI app is %r, not the Flask app", type(wsgi_app).__name__)
        return None
    if not (wsgi_app.config.get("ML_SCHEDULER_ENABLED") and wsgi_app.config.get("ML_ENABLED")):
        return None
    return start_scheduler(wsgi_app)


def stop_for_web_worker(wsgi_app: Any) -> None:
    """gunicorn ``worker_exit``: interrupt this worker's jobs, stop its scheduler (if it started one)."""
    request_stop()
    finished = stop_scheduler(wsgi_app) if isinstance(wsgi_app, Flask) else True
    exit_now_if_stuck(finished and wait_for_jobs(SHUTDOWN_WAIT_SECONDS))


def init_app(app: Flask) -> None:
    # Deliberately starts nothing (see the module docstring): only the explicit
    # entry points above do, so CLI commands and tests never run jobs.
    app.extensions.setdefault(EXTENSION_KEY, None)
