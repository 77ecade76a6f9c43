"""Job runs as rows of ``ml_job_runs``: written on their own connection, read for dashboards.

Every run, whoever started it, is one row: ``status`` ``running`` while it
runs, then ``success``, ``failed`` (``error`` holds the traceback),
``skipped`` (a tick found the job busy) or ``abandoned`` (its process died;
the next run of the job marks it).  ``details`` says ``trigger`` (``cli``,
``api`` or ``schedule``), ``actor``, ``params`` and, once finished, the
job's ``result`` and ``duration_s``.  Rows are written on a connection of
their own (``db.engine.begin()``), so a job's failed transaction never loses
the record of its run.
"""
from __future__ import annotations

import json
import logging
import os
import socket
from datetime import datetime
from typing import Any, Optional

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from utils.extensions import db
from utils.ml import events
from utils.ml.jobs.definitions import JOBS
from utils.models import JobRun
from utils.time import as_utc, utcnow

RUNS = JobRun.__table__

STATUS_RUNNING = "running"
STATUS_SUCCESS = "success"
STATUS_FAILED = "failed"
STATUS_SKIPPED = "skipped"
STATUS_ABANDONED = "abandoned"
STATUS_INTERRUPTED = "interrupted"  # stopped at a safe point by a shutdown (utils.ml.jobs.interrupt)

# Tracebacks and results are stored, within reason.
_MAX_ERROR_CHARS = 20_000
_MAX_RESULT_CHARS = 20_000


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


def running_row(name: str) -> Optional[dict[str, Any]]:
    with db.engine.connect() as conn:
        row = conn.execute(
            sa.select(RUNS).where(RUNS.c.job_name == name, RUNS.c.status == STATUS_RUNNING)
            .order_by(RUNS.c.id.desc()).limit(1)
        ).first()
    return run_to_dict(row) if row is not None else None


def jsonable(value: Any) -> Any:
    """``value`` as JSON data (unknown objects become strings); huge results are cut."""
    text = json.dumps(value, default=str)
    if len(text) > _MAX_RESULT_CHARS:
        return {"truncated": True, "preview": text[:2000]}
    return json.loads(text)


def insert_run(name: str, scheduled_for: datetime, status: str, details: dict[str, Any],
               error: Optional[str] = None) -> int:
    """Insert a run row in its own transaction (raises IntegrityError when the tick is taken)."""
    now = utcnow()
    values = {
        "job_name": name, "scheduled_for": scheduled_for, "started_at": now, "status": status,
        "host": socket.gethostname()[:200], "pid": os.getpid(), "details": jsonable(details), "error": error,
    }
    if status != STATUS_RUNNING:
        values["finished_at"] = now
    with db.engine.begin() as conn:
        return int(conn.execute(RUNS.insert().values(**values).returning(RUNS.c.id)).scalar_one())


def claim_tick(name: str, scheduled_for: datetime, details: dict[str, Any]) -> Optional[int]:
    """Claim a scheduled tick while holding the job lock; None when another process has it.

    A ``skipped`` row for the tick only means someone saw the job lock busy
    (possibly held by us, about to claim this very tick); since we hold the
    lock and the tick never ran, we take that row over instead of losing it.
    """
    try:
        return insert_run(name, scheduled_for, STATUS_RUNNING, details)
    except IntegrityError:
        pass
    with db.engine.begin() as conn:
        taken = conn.execute(
            RUNS.update()
            .where(RUNS.c.job_name == name, RUNS.c.scheduled_for == scheduled_for, RUNS.c.status == STATUS_SKIPPED)
            .values(status=STATUS_RUNNING, started_at=utcnow(), finished_at=None, error=None,
                    host=socket.gethostname()[:200], pid=os.getpid(), details=jsonable(details))
            .returning(RUNS.c.id)
        ).scalar_one_or_none()
    return int(taken) if taken is not None else None


def finish_run(run_id: int, status: str, details: dict[str, Any], error: Optional[str] = None) -> None:
    with db.engine.begin() as conn:
        conn.execute(RUNS.update().where(RUNS.c.id == run_id).values(
            status=status, finished_at=utcnow(), details=jsonable(details),
            error=error[-_MAX_ERROR_CHARS:] if error else None,
        ))


def sweep_abandoned(name: str) -> int:
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
