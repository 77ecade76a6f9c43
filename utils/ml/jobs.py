"""The scheduled jobs, and the rules that make each run exactly once.

``JOBS`` names the three jobs (``anomaly_scan``, ``train_models``,
``cleanup_models``).  Every run, scheduled or manual, is a row in
``ml_job_runs`` and goes through the same two guards:

* **The job lock** (:func:`job_lock`): a cross-process lock per job name
  (a PostgreSQL advisory lock on a dedicated connection; a lease row on
  SQLite) held for the whole run.  A manual run while the same job runs
  anywhere raises :class:`JobBusyError` (the API answers 409); a scheduled
  tick that finds the job busy is recorded as ``skipped``.
* **The tick claim**: a scheduled run first inserts ``(job_name,
  scheduled_for)``; the unique constraint ``uq_ml_job_runs_job_tick`` lets
  exactly one insert win, even if two processes ever both believed they
  were the leader.  Ticks are aligned to the interval
  (``floor(epoch / interval) * interval``), so every process computes the
  same ``scheduled_for`` for the same tick.

Statuses: ``running``, ``success``, ``failed`` (``error`` holds the
traceback), ``skipped`` (the job was busy), ``abandoned`` (its process died:
found still ``running`` by the next run, which holds the job lock and so
knows no run of that job is alive anywhere).

Events: ``job_started``, ``job_finished`` and ``job_failed`` carry ``job``,
``trigger`` (``schedule`` or ``manual``), ``run_id``, ``status`` and
``duration_s``; ``job_skipped`` and ``job_abandoned`` say what was not run.
"""
from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Optional

import sqlalchemy as sa
from flask import Flask, current_app
from sqlalchemy.exc import IntegrityError

from utils.extensions import db
from utils.ml import events
from utils.ml.leader import JOB_LOCK_CLASS, DistributedLock, LockKeeper, make_lock, one_line
from utils.models import JobRun
from utils.time import as_utc, utcnow

logger = logging.getLogger("ml.jobs")

RUNS = JobRun.__table__

STATUS_RUNNING = "running"
STATUS_SUCCESS = "success"
STATUS_FAILED = "failed"
STATUS_SKIPPED = "skipped"
STATUS_ABANDONED = "abandoned"

TRIGGER_SCHEDULE = "schedule"
TRIGGER_MANUAL = "manual"
SCHEDULER_ACTOR = "scheduler"

# Tracebacks and results are stored, within reason.
_MAX_ERROR_CHARS = 20_000
_MAX_RESULT_CHARS = 20_000


class JobError(RuntimeError):
    """A job that finished but did not do all of its work; ``result`` says what it did."""

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result


class UnknownJobError(ValueError):
    """The job name is not one of :data:`JOBS`."""

    def __init__(self, name: Any) -> None:
        super().__init__(f"job: must be one of {', '.join(sorted(JOBS))} (got {name!r})")
        self.job = name


class JobBusyError(RuntimeError):
    """The job is running in some process right now (HTTP 409)."""

    def __init__(self, job: str, running: Optional[dict[str, Any]] = None) -> None:
        where = ""
        if running:
            where = f" (run {running['id']} started {running['started_at']} on {running['host']} pid {running['pid']})"
        super().__init__(f"job {job} is already running{where}; try again when it has finished")
        self.job = job
        self.running = running


# ------------------------------------------------------------------ the jobs
# Each job takes the run's ``actor`` (who asked: a user, or "scheduler") plus its own params.
def _anomaly_scan(actor: str, **params: Any) -> Any:
    from utils.ml.scan import run_scan  # imported when run: keeps web start-up light

    result = run_scan(**params)
    failed = [name for name, entry in result["metric_types"].items() if entry.get("error")]
    if failed:
        # Other metric types were scanned and committed; the run still failed.
        raise JobError(f"scan failed for {', '.join(failed)}", result)
    return result


def _train_models(actor: str, **params: Any) -> Any:
    from utils.ml.model_trainer import train_models

    results = train_models(actor=actor, **params)  # the activation audit names who trained
    failed = [entry["metric_type"] for entry in results if entry.get("status") == "failed"]
    if failed:
        # A skipped type (too little data) is fine; a failed one is not a success.
        raise JobError(f"training failed for {', '.join(failed)}", results)
    return results


def _cleanup_models(actor: str, keep_versions: Optional[int] = None) -> dict[str, Any]:
    from utils.ml.model_manager import get_model_manager

    keep = keep_versions if keep_versions is not None else int(current_app.config["ML_KEEP_VERSIONS"])
    result = get_model_manager().cleanup_old_models(keep)
    if result.get("errors"):
        # Rows are gone but some files were not: that is not a success an
        # operator should stop worrying about.
        raise JobError(f"cleanup finished with {len(result['errors'])} error(s): {result['errors'][0]}", result)
    return result


@dataclass(frozen=True)
class Job:
    name: str
    func: Callable[..., Any]
    interval_setting: str
    description: str


JOBS: dict[str, Job] = {
    job.name: job
    for job in (
        Job("anomaly_scan", _anomaly_scan, "ML_SCAN_INTERVAL_SECONDS", "score new observations, record alerts"),
        Job("train_models", _train_models, "ML_TRAIN_INTERVAL_SECONDS", "train one model per metric type"),
        Job("cleanup_models", _cleanup_models, "ML_CLEANUP_INTERVAL_SECONDS",
            "keep ML_KEEP_VERSIONS versions per type, remove orphans"),
    )
}


def get_job(name: str) -> Job:
    try:
        return JOBS[name]
    except (KeyError, TypeError):
        raise UnknownJobError(name) from None


# --------------------------------------------------------------------- ticks
def tick_for(epoch_seconds: float, interval_seconds: float) -> datetime:
    """The aligned tick ``epoch`` belongs to: ``floor(epoch / interval) * interval``, as UTC."""
    tick = math.floor(epoch_seconds / interval_seconds) * interval_seconds
    return datetime.fromtimestamp(tick, timezone.utc)


# --------------------------------------------------------------------- locks
def job_lock(name: str, app: Optional[Flask] = None) -> DistributedLock:
    """A fresh (not yet acquired) cross-process lock for job ``name``."""
    app = app or current_app._get_current_object()
    return make_lock(
        app.config["SQLALCHEMY_DATABASE_URI"], f"job:{name}", JOB_LOCK_CLASS,
        float(app.config["ML_SCHEDULER_LEASE_SECONDS"]), application_name="ml-job-lock",
    )


def _renew_every(app: Flask) -> float:
    return float(app.config["ML_SCHEDULER_HEARTBEAT_SECONDS"])


# -------------------------------------------------------------------- records
def run_to_dict(row: Any) -> dict[str, Any]:
    """A run row (ORM object or Core row) as JSON-ready data."""
    m = row._mapping if hasattr(row, "_mapping") else {c.name: getattr(row, c.name) for c in RUNS.columns}
    started, finished = as_utc(m["started_at"]), as_utc(m["finished_at"])
    return {
        "id": m["id"],
        "job": m["job_name"],
        "scheduled_for": as_utc(m["scheduled_for"]).isoformat(),
        "started_at": started.isoformat() if started else None,
        "finished_at": finished.isoformat() if finished else None,
        "duration_s": round((finished - started).total_seconds(), 3) if started and finished else None,
        "status": m["status"],
        "host": m["host"],
        "pid": m["pid"],
        "error": m["error"],
        "details": m["details"],
    }


def last_runs() -> dict[str, Optional[dict[str, Any]]]:
    """The newest run of every job (``None`` for a job that never ran), for dashboards."""
    out: dict[str, Optional[dict[str, Any]]] = {}
    with db.engine.connect() as conn:
        for name in JOBS:
            row = conn.execute(
                sa.select(RUNS).where(RUNS.c.job_name == name).order_by(RUNS.c.started_at.desc(), RUNS.c.id.desc())
                .limit(1)
            ).first()
            out[name] = run_to_dict(row) if row is not None else None
    return out


def _running_row(name: str) -> Optional[dict[str, Any]]:
    with db.engine.connect() as conn:
        row = conn.execute(
            sa.select(RUNS).where(RUNS.c.job_name == name, RUNS.c.status == STATUS_RUNNING)
            .order_by(RUNS.c.id.desc()).limit(1)
        ).first()
    return run_to_dict(row) if row is not None else None


def _jsonable(value: Any) -> Any:
    """``value`` as JSON data (unknown objects become strings); huge results are cut."""
    text = json.dumps(value, default=str)
    if len(text) > _MAX_RESULT_CHARS:
        return {"truncated": True, "preview": text[:2000]}
    return json.loads(text)


def _insert_run(name: str, scheduled_for: datetime, status: str, details: dict[str, Any],
                error: Optional[str] = None) -> int:
    """Insert a run row in its own transaction (raises IntegrityError when the tick is taken)."""
    now = utcnow()
    values = {
        "job_name": name, "scheduled_for": scheduled_for, "started_at": now, "status": status,
        "host": socket.gethostname()[:200], "pid": os.getpid(), "details": _jsonable(details), "error": error,
    }
    if status != STATUS_RUNNING:
        values["finished_at"] = now
    with db.engine.begin() as conn:
        return int(conn.execute(RUNS.insert().values(**values).returning(RUNS.c.id)).scalar_one())


def _claim_tick(name: str, scheduled_for: datetime, details: dict[str, Any]) -> Optional[int]:
    """Claim a scheduled tick while holding the job lock; None when another process has it.

    A ``skipped`` row for the tick only means someone saw the job lock busy
    (possibly held by us, about to claim this very tick); since we hold the
    lock and the tick never ran, we take that row over instead of losing it.
    """
    try:
        return _insert_run(name, scheduled_for, STATUS_RUNNING, details)
    except IntegrityError:
        pass
    with db.engine.begin() as conn:
        taken = conn.execute(
            RUNS.update()
            .where(RUNS.c.job_name == name, RUNS.c.scheduled_for == scheduled_for, RUNS.c.status == STATUS_SKIPPED)
            .values(status=STATUS_RUNNING, started_at=utcnow(), finished_at=None, error=None,
                    host=socket.gethostname()[:200], pid=os.getpid(), details=_jsonable(details))
            .returning(RUNS.c.id)
        ).scalar_one_or_none()
    return int(taken) if taken is not None else None


def _finish_run(run_id: int, status: str, details: dict[str, Any], error: Optional[str] = None) -> None:
    with db.engine.begin() as conn:
        conn.execute(RUNS.update().where(RUNS.c.id == run_id).values(
            status=status, finished_at=utcnow(), details=_jsonable(details),
            error=error[-_MAX_ERROR_CHARS:] if error else None,
        ))


def _sweep_abandoned(name: str) -> int:
    """Mark ``running`` rows of ``name`` as abandoned.  Call only while holding the job lock:
    then no run of this job is alive anywhere, so such rows belong to dead processes."""
    with db.engine.begin() as conn:
        count = conn.execute(
            RUNS.update().where(RUNS.c.job_name == name, RUNS.c.status == STATUS_RUNNING).values(
                status=STATUS_ABANDONED, finished_at=utcnow(),
                error="the process running this job stopped before finishing (found by the next run)",
            )
        ).rowcount
    if count:
        events.emit("job_abandoned", f"{count} unfinished run(s) of {name} marked abandoned",
                    level=logging.WARNING, job=name, count=count)
    return count


# ------------------------------------------------------------------- running
def _run(job: Job, run_id: int, trigger: str, scheduled_for: datetime, details: dict[str, Any],
         actor: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run ``job`` for the claimed row ``run_id``; record and announce the outcome.

    Re-raises the job's exception after recording it as ``failed``.
    """
    fields = {"job": job.name, "trigger": trigger, "run_id": run_id, "scheduled_for": scheduled_for.isoformat()}
    events.emit("job_started", f"job {job.name} started ({trigger})", **fields, status=STATUS_RUNNING)
    started = time.perf_counter()
    try:
        result = job.func(actor, **params)
        db.session.commit()  # a job that forgot to commit must not lose its work
    except Exception as exc:
        error = traceback.format_exc()
        db.session.rollback()
        duration = round(time.perf_counter() - started, 3)
        failed_details = dict(details, duration_s=duration)
        if isinstance(exc, JobError) and exc.result is not None:
            failed_details["result"] = exc.result
        try:
            _finish_run(run_id, STATUS_FAILED, failed_details, error)
        except Exception:  # the row stays "running"; the next run marks it abandoned
            logger.exception("could not record the failure of run %s", run_id)
        logger.exception("job %s failed (run %s)", job.name, run_id)
        events.emit("job_failed", f"job {job.name} failed: {one_line(exc)}", **fields,
                    status=STATUS_FAILED, duration_s=duration, error=one_line(exc))
        raise
    duration = round(time.perf_counter() - started, 3)
    done = dict(details, duration_s=duration, result=result)
    _finish_run(run_id, STATUS_SUCCESS, done)
    events.emit("job_finished", f"job {job.name} finished in {duration}s", **fields,
                status=STATUS_SUCCESS, duration_s=duration)
    return {**fields, "status": STATUS_SUCCESS, "duration_s": duration, "result": _jsonable(result)}


def run_job_now(name: str, actor: str, **params: Any) -> dict[str, Any]:
    """Run job ``name`` right now in this process, on behalf of ``actor`` (CLI, API).

    Needs an app context.  Returns ``job``, ``run_id``, ``trigger``,
    ``scheduled_for``, ``status`` ("success"), ``duration_s`` and ``result``.
    Raises :class:`UnknownJobError` for a bad name, :class:`JobBusyError`
    when the same job is running in any process (scheduled or manual), and
    re-raises the job's own exception after recording the run as failed.
    ``params`` go to the job function (e.g. ``metric_type`` for training).
    """
    job = get_job(name)
    app = current_app._get_current_object()
    lock = job_lock(name, app)
    if not lock.try_acquire():
        raise JobBusyError(name, _running_row(name))
    try:
        with LockKeeper(lock, _renew_every(app)):
            _sweep_abandoned(name)
            details = {"trigger": TRIGGER_MANUAL, "actor": actor, "params": params}
            # Manual runs are keyed by their start time; a collision with a
            # tick or another run in the same microsecond just moves on by one.
            scheduled_for = utcnow()
            for _ in range(5):
                try:
                    run_id = _insert_run(name, scheduled_for, STATUS_RUNNING, details)
                    break
                except IntegrityError:
                    scheduled_for += timedelta(microseconds=1)
            else:  # pragma: no cover - needs five collisions in a row
                raise RuntimeError(f"could not record a run of {name}")
            return _run(job, run_id, TRIGGER_MANUAL, scheduled_for, details, actor, params)
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
                    _sweep_abandoned(name)
                    run_id = _claim_tick(name, scheduled_for, details)
                    if run_id is None:
                        return {"job": name, "scheduled_for": scheduled_for.isoformat(), "status": "claimed_elsewhere"}
                    try:
                        return _run(job, run_id, TRIGGER_SCHEDULE, scheduled_for, details, SCHEDULER_ACTOR, {})
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
    running = _running_row(name)
    reason = f"job {name} was still running"
    if running:
        reason += f" (run {running['id']} on {running['host']} pid {running['pid']})"
    try:
        run_id = _insert_run(name, scheduled_for, STATUS_SKIPPED, details, error=reason)
    except IntegrityError:
        return {"job": name, "scheduled_for": scheduled_for.isoformat(), "status": "claimed_elsewhere"}
    events.emit("job_skipped", f"tick {scheduled_for.isoformat()} of {name} skipped: {reason}",
                level=logging.WARNING, job=name, run_id=run_id, scheduled_for=scheduled_for.isoformat(),
                status=STATUS_SKIPPED, reason=reason)
    return {"job": name, "run_id": run_id, "scheduled_for": scheduled_for.isoformat(),
            "status": STATUS_SKIPPED, "error": reason}
