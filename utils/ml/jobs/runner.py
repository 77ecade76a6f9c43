"""The one job runner: every run of a job, from the CLI, the API or the scheduler, goes through it.

``JOBS`` (:mod:`utils.ml.jobs.definitions`) names the jobs
(``anomaly_scan``, ``train_models``, ``cleanup_models``, ``drift_check``,
``notify_deliver``).  Every run is a row in ``ml_job_runs``
(:mod:`utils.ml.jobs.records`) whose ``details`` say its ``trigger`` —
``cli`` (``flask ml train|scan|cleanup``), ``api`` (``POST
/api/ml/train|scan|cleanup``), ``schedule``, or ``drift`` (the retraining a
drift check started) — and every run goes
through the same two guards:

* **The job lock** (:func:`job_lock`): a cross-process lock per job name
  (a PostgreSQL advisory lock on a dedicated connection; a lease row on
  SQLite) held for the whole run.  A CLI or API run while the same job runs
  anywhere raises :class:`JobBusyError` naming that run (the API answers
  409, the CLI exits 1 with that line); a scheduled tick that finds the job
  busy is recorded as ``skipped``.
* **The tick claim**: a scheduled run first inserts ``(job_name,
  scheduled_for)``; the unique constraint ``uq_ml_job_runs_job_tick`` lets
  exactly one insert win, even if two processes ever both believed they
  were the leader.  Ticks are aligned to the interval
  (``floor(epoch / interval) * interval``), so every process computes the
  same ``scheduled_for`` for the same tick.

Events: ``job_started``, ``job_finished`` and ``job_failed`` carry ``job``,
``trigger``, ``run_id``, ``status`` and ``duration_s``; ``job_skipped`` and
``job_abandoned`` say what was not run.
"""
from __future__ import annotations

import logging
import math
import time
import traceback
from datetime import datetime, timedelta, timezone
from typing import Any, Optional

from flask import Flask, current_app
from sqlalchemy.exc import IntegrityError

from utils.db_bounds import JOB, bounds_profile
from utils.extensions import db
from utils.ml import events
from utils.ml.jobs.definitions import JOBS, Job, JobError, UnknownJobError, get_job
from utils.ml.jobs.interrupt import JobInterrupted, checkpoint, job_running
from utils.ml.jobs.locks import JOB_LOCK_CLASS, DistributedLock, LockKeeper, make_lock, one_line
from utils.ml.jobs.records import (
    STATUS_FAILED,
    STATUS_INTERRUPTED,
    STATUS_RUNNING,
    STATUS_SKIPPED,
    STATUS_SUCCESS,
    claim_tick,
    finish_run,
    insert_run,
    jsonable,
    last_runs,
    running_row,
    sweep_abandoned,
)
from utils.ml.validation import InvalidInput
from utils.time import utcnow

logger = logging.getLogger("ml.jobs")

__all__ = ["JOBS", "JobBusyError", "JobError", "TRIGGERS", "UnknownJobError", "job_lock", "last_runs",
           "run_job_now", "run_scheduled_tick", "tick_for"]

TRIGGER_CLI = "cli"
TRIGGER_API = "api"
TRIGGER_SCHEDULE = "schedule"
TRIGGER_DRIFT = "drift"  # a retraining started by the drift check (utils.ml.promotion.drift_job)
TRIGGERS = (TRIGGER_CLI, TRIGGER_API, TRIGGER_SCHEDULE, TRIGGER_DRIFT)
ON_DEMAND = (TRIGGER_CLI, TRIGGER_API, TRIGGER_DRIFT)
SCHEDULER_ACTOR = "scheduler"


class JobBusyError(RuntimeError):
    """The job is running in some process right now (HTTP 409, CLI exit 1); the message names the run."""

    def __init__(self, job: str, running: Optional[dict[str, Any]] = None) -> None:
        where = ""
        if running:
            where = f" (run {running['id']} started {running['started_at']} on {running['host']} pid {running['pid']})"
        super().__init__(f"job {job} is already running{where}; try again when it has finished")
        self.job = job
        self.running = running


def tick_for(epoch_seconds: float, interval_seconds: float) -> datetime:
    """The aligned tick ``epoch`` belongs to: ``floor(epoch / interval) * interval``, as UTC."""
    tick = math.floor(epoch_seconds / interval_seconds) * interval_seconds
    return datetime.fromtimestamp(tick, timezone.utc)


def job_lock(name: str, app: Optional[Flask] = None) -> DistributedLock:
    """A fresh (not yet acquired) cross-process lock for job ``name``."""
    app = app or current_app._get_current_object()
    return make_lock(
        app.config["SQLALCHEMY_DATABASE_URI"], f"job:{name}", JOB_LOCK_CLASS,
        float(app.config["ML_SCHEDULER_LEASE_SECONDS"]), application_name="ml-job-lock",
    )


def _renew_every(app: Flask) -> float:
    return float(app.config["ML_SCHEDULER_HEARTBEAT_SECONDS"])


def _run(job: Job, run_id: int, trigger: str, scheduled_for: datetime, details: dict[str, Any],
         actor: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run ``job`` for the claimed row ``run_id``; record and announce the outcome.

    Re-raises the job's exception after recording it as ``failed`` (``interrupted``
    for a shutdown).  Counted as running, so a stopping process waits for it.
    """
    with job_running():
        return _run_marked(job, run_id, trigger, scheduled_for, details, actor, params)


def _run_marked(job: Job, run_id: int, trigger: str, scheduled_for: datetime, details: dict[str, Any],
         actor: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run ``job`` for the claimed row ``run_id``; record and announce the outcome.

    Re-raises the job's exception after recording it as ``failed``.
    """
    fields = {"job": job.name, "trigger": trigger, "run_id": run_id, "scheduled_for": scheduled_for.isoformat()}
    events.emit("job_started", f"job {job.name} started ({trigger})", **fields, status=STATUS_RUNNING)
    started = time.perf_counter()
    try:
        checkpoint("before it started")
        with bounds_profile(JOB):  # a job's own, longer database bounds (utils.db_bounds)
            result = job.func(actor, **params)
            db.session.commit()  # a job that forgot to commit must not lose its work
    except JobInterrupted as exc:
        db.session.rollback()
        duration = round(time.perf_counter() - started, 3)
        try:
            finish_run(run_id, STATUS_INTERRUPTED, dict(details, duration_s=duration), str(exc))
        except Exception:  # the row stays "running"; the next run marks it abandoned
            logger.exception("could not record the interruption of run %s", run_id)
        events.emit("job_interrupted", f"job {job.name} {exc}", **fields, level=logging.WARNING,
                    status=STATUS_INTERRUPTED, duration_s=duration)
        raise
    except Exception as exc:
        error = traceback.format_exc()
        db.session.rollback()
        duration = round(time.perf_counter() - started, 3)
        failed_details = dict(details, duration_s=duration)
        if isinstance(exc, JobError) and exc.result is not None:
            failed_details["result"] = exc.result
        try:
            finish_run(run_id, STATUS_FAILED, failed_details, error)
        except Exception:  # the row stays "running"; the next run marks it abandoned
            logger.exception("could not record the failure of run %s", run_id)
        logger.exception("job %s failed (run %s)", job.name, run_id)
        events.emit("job_failed", f"job {job.name} failed: {one_line(exc)}", **fields,
                    status=STATUS_FAILED, duration_s=duration, error=one_line(exc))
        raise
    duration = round(time.perf_counter() - started, 3)
    done = dict(details, duration_s=duration, result=result)
    finish_run(run_id, STATUS_SUCCESS, done)
    events.emit("job_finished", f"job {job.name} finished in {duration}s", **fields,
                status=STATUS_SUCCESS, duration_s=duration)
    return {**fields, "status": STATUS_SUCCESS, "duration_s": duration, "result": jsonable(result)}


def run_job_now(name: str, actor: str, *, trigger: str, **params: Any) -> dict[str, Any]:
    """Run job ``name`` right now in this process, on behalf of ``actor``; ``trigger`` is ``cli``, ``api`` or ``drift``.

    Needs an app context.  Returns ``job``, ``run_id``, ``trigger``,
    ``scheduled_for``, ``status`` ("success"), ``duration_s`` and ``result``.
    Raises :class:`UnknownJobError` for a bad name, :class:`JobBusyError`
    when the same job is running in any process (scheduled or not), and
    re-raises the job's own exception (a :class:`JobError` carries the
    result) after recording the run as failed.  ``params`` go to the job
    function (e.g. ``metric_type`` for training).
    """
    job = get_job(name)
    if trigger not in ON_DEMAND:
        raise InvalidInput("trigger", f"must be one of {', '.join(ON_DEMAND)} (got {trigger!r})")
    app = current_app._get_current_object()
    lock = job_lock(name, app)
    if not lock.try_acquire():
        raise JobBusyError(name, running_row(name))
    try:
        with LockKeeper(lock, _renew_every(app)):
            sweep_abandoned(name)
            details = {"trigger": trigger, "actor": actor, "params": params}
            # Runs started on demand are keyed by their start time; a collision with a
            # tick or another run in the same microsecond just moves on by one.
            scheduled_for = utcnow()
            for _ in range(5):
                try:
                    run_id = insert_run(name, scheduled_for, STATUS_RUNNING, details)
                    break
                except IntegrityError:
                    scheduled_for += timedelta(microseconds=1)
            else:  # pragma: no cover - needs five collisions in a row
                raise RuntimeError(f"could not record a run of {name}")
            return _run(job, run_id, trigger, scheduled_for, details, actor, params)
    finally:
        lock.release()


def run_scheduled_tick(app: Flask, name: str, scheduled_for: datetime) -> dict[str, Any]:
    """Claim and run tick ``scheduled_for`` of job ``name``; never raises.

    Returns ``status``: ``success`` or ``failed`` (ran here), ``skipped``
    (the job was busy elsewhere; recorded), or ``claimed_elsewhere`` (another
    process owns this tick; nothing recorded here).
    """
    job = get_job(name)
    details = {"trigger": TRIGGER_SCHEDULE, "actor": SCHEDULER_ACTOR}
    with app.app_context():
        try:
            lock = job_lock(name, app)
            if not lock.try_acquire():
                return _skip_busy_tick(name, scheduled_for, details)
            try:
                with LockKeeper(lock, _renew_every(app)):
                    sweep_abandoned(name)
                    run_id = claim_tick(name, scheduled_for, details)
                    if run_id is None:
                        return {"job": name, "scheduled_for": scheduled_for.isoformat(), "status": "claimed_elsewhere"}
                    try:
                        return _run(job, run_id, TRIGGER_SCHEDULE, scheduled_for, details, SCHEDULER_ACTOR, {})
                    except JobInterrupted as exc:  # recorded by _run; the process is stopping
                        return {"job": name, "run_id": run_id, "scheduled_for": scheduled_for.isoformat(),
                                "status": STATUS_INTERRUPTED, "error": str(exc)}
                    except Exception as exc:  # recorded and logged by _run; later ticks go on
                        return {"job": name, "run_id": run_id, "scheduled_for": scheduled_for.isoformat(),
                                "status": STATUS_FAILED, "error": one_line(exc)}
            finally:
                lock.release()
        except Exception as exc:  # the database itself failed: log it, keep the scheduler alive
            logger.exception("tick %s of %s could not be run", scheduled_for.isoformat(), name)
            events.emit("job_failed", f"tick of {name} could not be run: {one_line(exc)}",
                        job=name, trigger=TRIGGER_SCHEDULE, status=STATUS_FAILED, duration_s=0.0,
                        scheduled_for=scheduled_for.isoformat(), error=one_line(exc))
            return {"job": name, "scheduled_for": scheduled_for.isoformat(), "status": STATUS_FAILED,
                    "error": one_line(exc)}
        finally:
            db.session.remove()


def _skip_busy_tick(name: str, scheduled_for: datetime, details: dict[str, Any]) -> dict[str, Any]:
    running = running_row(name)
    reason = f"job {name} was still running"
    if running:
        reason += f" (run {running['id']} on {running['host']} pid {running['pid']})"
    try:
        run_id = insert_run(name, scheduled_for, STATUS_SKIPPED, details, error=reason)
    except IntegrityError:
        return {"job": name, "scheduled_for": scheduled_for.isoformat(), "status": "claimed_elsewhere"}
    events.emit("job_skipped", f"tick {scheduled_for.isoformat()} of {name} skipped: {reason}",
                level=logging.WARNING, job=name, run_id=run_id, scheduled_for=scheduled_for.isoformat(),
                status=STATUS_SKIPPED, reason=reason)
    return {"job": name, "run_id": run_id, "scheduled_for": scheduled_for.isoformat(),
            "status": STATUS_SKIPPED, "error": reason}
