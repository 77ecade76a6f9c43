"""Retention: old observations, our closed alerts and finished job runs are deleted in small batches.

Run by the ``cleanup_models`` job (and ``flask ml retention [--dry-run]``).
Each table has its own setting; 0 keeps everything:

* ``ml_metrics`` older than ``ML_OBSERVATION_RETENTION_DAYS`` (default 180),
  the hotel app's rows included: the original application itself deleted
  observations older than 90 days.  An observation an *open* alert points at
  (not read, not a false positive, not resolved) is kept with its alert.
  Deleting one that a closed alert points at leaves the alert, with
  ``observation_id`` NULL (the foreign key is ON DELETE SET NULL since
  revision 0008; SQLite does not enforce foreign keys, so the same NULLing is
  done here).
* ``ml_alerts`` of ours (``method`` set: the hotel app's own alerts are its
  to keep) that are closed — read, marked a false positive, or resolved —
  and older than ``ML_ALERT_RETENTION_DAYS`` (default 365), by ``created_at``.
  Open alerts are never deleted, however old.
* ``ml_incidents`` that started and ended before the alert cutoff and that
  no alert points at any more (their alerts went by the rule above), with
  the same setting: an incident is the summary of its alerts.
* ``ml_job_runs`` that finished more than ``ML_JOB_RUN_RETENTION_DAYS`` ago
  (default 90), except each job's latest run and latest success (``/metrics``
  reports them).

No long locks: every statement deletes at most ``ML_RETENTION_BATCH_SIZE``
rows in its own short transaction, walking an index on the time column
(``(metric_type, timestamp)`` per metric type, ``(created_at)``) with a cursor,
so no batch rescans what an earlier one kept; on PostgreSQL the rows are
deleted by ``ctid`` (a TID scan, no second index lookup).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Mapping, Optional

from sqlalchemy import DateTime, Integer, bindparam, delete, func, literal, select, text, tuple_, union, update
from sqlalchemy.engine import Connection, Engine

from utils.ml.jobs.records import STATUS_RUNNING, STATUS_SUCCESS
from utils.ml.incidents.models import MLIncident
from utils.models import JobRun, MLAlert, MLMetric
from utils.time import utcnow

METRICS, ALERTS, RUNS = MLMetric.__table__, MLAlert.__table__, JobRun.__table__
INCIDENTS = MLIncident.__table__
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class RetentionPolicy:
    """Days kept per table (0: keep everything) and rows per DELETE statement."""

    observation_days: int
    alert_days: int
    job_run_days: int
    batch_size: int = 5000

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "RetentionPolicy":
        return cls(int(config["ML_OBSERVATION_RETENTION_DAYS"]), int(config["ML_ALERT_RETENTION_DAYS"]),
                   int(config["ML_JOB_RUN_RETENTION_DAYS"]), int(config["ML_RETENTION_BATCH_SIZE"]))


def _open_alert_exists():
    """An alert that still needs someone points at the observation."""
    return select(literal(1)).where(
        ALERTS.c.observation_id == METRICS.c.id, ALERTS.c.is_read.is_(False),
        ALERTS.c.is_false_positive.is_(False), ALERTS.c.resolved_at.is_(None),
    ).exists()


def _closed_ours():
    return (ALERTS.c.method.is_not(None)
            & (ALERTS.c.is_read.is_(True) | ALERTS.c.is_false_positive.is_(True) | ALERTS.c.resolved_at.is_not(None)))


def metric_types(conn: Connection) -> list[str]:
    """The distinct metric types, by a loose index scan (one index probe per type, not a table scan)."""
    sql = text("""
        WITH RECURSIVE t(metric_type) AS (
            SELECT min(metric_type) FROM ml_metrics
            UNION ALL
            SELECT (SELECT min(m.metric_type) FROM ml_metrics m WHERE m.metric_type > t.metric_type)
            FROM t WHERE t.metric_type IS NOT NULL
        )
        SELECT metric_type FROM t WHERE metric_type IS NOT NULL""")
    return [str(row[0]) for row in conn.execute(sql)]


# PostgreSQL: one statement per batch.  The next ``batch`` rows past the cursor come off the time
# index first (a MATERIALIZED CTE), and only those few are checked for an open alert: with the
# open-alert test inside the LIMIT query, a planner that thought ml_alerts small (stale statistics
# after a scan raised 200,000 alerts) chose a nested loop over every alert for every row, and at
# 10 million rows each batch took seconds of CPU on the shared database.  The rows go by ``ctid``.
_PG_OBSERVATIONS = text("""
    WITH candidates AS MATERIALIZED (
        SELECT m.ctid AS tid, m.id, m.timestamp FROM ml_metrics m
        WHERE m.metric_type = :metric_type AND m.timestamp < :cutoff AND m.timestamp >= :after
          AND (m.timestamp, m.id) > (:after, :after_id)
        ORDER BY m.timestamp, m.id LIMIT :batch),
    gone AS (
        DELETE FROM ml_metrics WHERE ctid = ANY(ARRAY(
            SELECT c.tid FROM candidates c
            WHERE NOT EXISTS (SELECT 1 FROM ml_alerts a WHERE a.observation_id = c.id
                              AND NOT a.is_read AND NOT a.is_false_positive AND a.resolved_at IS NULL)))
        RETURNING 1),
    last AS (SELECT timestamp, id FROM candidates ORDER BY timestamp DESC, id DESC LIMIT 1)
    SELECT (SELECT count(*) FROM candidates), (SELECT count(*) FROM gone),
           (SELECT timestamp FROM last), (SELECT id FROM last)""").bindparams(
    bindparam("cutoff", type_=DateTime(timezone=True)), bindparam("after", type_=DateTime(timezone=True)),
    bindparam("after_id", type_=Integer), bindparam("batch", type_=Integer))
_PG_ALERTS = text("""
    WITH gone AS (
        DELETE FROM ml_alerts WHERE ctid = ANY(ARRAY(
            SELECT ctid FROM ml_alerts
            WHERE created_at < :cutoff AND created_at >= :after AND method IS NOT NULL
              AND (is_read OR is_false_positive OR resolved_at IS NOT NULL)
            ORDER BY created_at LIMIT :batch))
        RETURNING created_at)
    SELECT count(*), max(created_at) FROM gone""").bindparams(
    bindparam("cutoff", type_=DateTime(timezone=True)), bindparam("after", type_=DateTime(timezone=True)),
    bindparam("batch", type_=Integer))


# A batch step: ``(rows deleted, rows looked at, cursor to go on from)``; a walk ends when a step
# looked at fewer rows than the batch size.
Step = Callable[[Connection, Any], tuple[int, int, Any]]


def _observation_batch(conn: Connection, metric_type: str, cutoff: datetime, after: tuple[datetime, int],
                       batch: int) -> tuple[int, int, tuple[datetime, int]]:
    """Delete what may go of the next ``batch`` observations of one type past the cursor ``(timestamp, id)``."""
    if conn.dialect.name == "postgresql":
        looked, deleted, newest, newest_id = conn.execute(_PG_OBSERVATIONS, {
            "metric_type": metric_type, "cutoff": cutoff, "after": after[0], "after_id": after[1],
            "batch": batch}).one()
        return int(deleted), int(looked), (newest, int(newest_id)) if newest is not None else after
    rows = conn.execute(
        select(METRICS.c.id, METRICS.c.timestamp)
        .where(METRICS.c.metric_type == metric_type, METRICS.c.timestamp < cutoff, METRICS.c.timestamp >= after[0],
               ~_open_alert_exists())
        .order_by(METRICS.c.timestamp).limit(batch)
    ).all()
    ids = [row[0] for row in rows]
    if ids:
        # What ON DELETE SET NULL does on PostgreSQL; SQLite does not enforce foreign keys.
        conn.execute(update(ALERTS).where(ALERTS.c.observation_id.in_(ids)).values(observation_id=None))
        conn.execute(delete(METRICS).where(METRICS.c.id.in_(ids)))
    return len(ids), len(ids), (max((row[1] for row in rows), default=after[0]), 0)


def _alert_batch(conn: Connection, cutoff: datetime, after: datetime, batch: int) -> tuple[int, int, datetime]:
    if conn.dialect.name == "postgresql":
        count, newest = conn.execute(_PG_ALERTS, {"cutoff": cutoff, "after": after, "batch": batch}).one()
        return int(count), int(count), newest or after
    rows = conn.execute(
        select(ALERTS.c.id, ALERTS.c.created_at)
        .where(ALERTS.c.created_at < cutoff, ALERTS.c.created_at >= after, _closed_ours())
        .order_by(ALERTS.c.created_at).limit(batch)
    ).all()
    if rows:
        conn.execute(delete(ALERTS).where(ALERTS.c.id.in_([row[0] for row in rows])))
    return len(rows), len(rows), max((row[1] for row in rows), default=after)


def _incident_batch(conn: Connection, cutoff: datetime, after: tuple[datetime, int],
                    batch: int) -> tuple[int, int, tuple[datetime, int]]:
    """Delete the next ``batch`` incidents past the cursor ``(started_at, id)`` that no alert points at."""
    rows = conn.execute(
        select(INCIDENTS.c.id, INCIDENTS.c.started_at)
        .where(INCIDENTS.c.started_at < cutoff, tuple_(INCIDENTS.c.started_at, INCIDENTS.c.id) > tuple_(*after))
        .order_by(INCIDENTS.c.started_at, INCIDENTS.c.id).limit(batch)
    ).all()
    if not rows:
        return 0, 0, after
    gone = list(conn.execute(
        select(INCIDENTS.c.id).where(INCIDENTS.c.id.in_([row[0] for row in rows]), INCIDENTS.c.ended_at < cutoff,
                                     ~select(literal(1)).where(ALERTS.c.incident_id == INCIDENTS.c.id).exists())
    ).scalars())
    if gone:
        conn.execute(delete(INCIDENTS).where(INCIDENTS.c.id.in_(gone)))
    return len(gone), len(rows), (rows[-1][1], int(rows[-1][0]))


def _kept_runs():
    """Each job's latest run and latest success: never deleted."""
    return union(select(func.max(RUNS.c.id)).group_by(RUNS.c.job_name),
                 select(func.max(RUNS.c.id)).where(RUNS.c.status == STATUS_SUCCESS).group_by(RUNS.c.job_name))


def _run_batch(conn: Connection, cutoff: datetime, after: datetime, batch: int) -> tuple[int, int, datetime]:
    ids = list(conn.execute(
        select(RUNS.c.id).where(RUNS.c.started_at < cutoff, RUNS.c.status != STATUS_RUNNING,
                                RUNS.c.id.not_in(_kept_runs()))
        .order_by(RUNS.c.id).limit(batch)
    ).scalars())
    if ids:
        conn.execute(delete(RUNS).where(RUNS.c.id.in_(ids)))
    return len(ids), len(ids), after  # the filter shrinks as rows go: no cursor needed on this small table


def _count(conn: Connection, table: str, cutoff: datetime) -> int:
    if table == "observations":
        query = select(func.count()).select_from(METRICS).where(METRICS.c.timestamp < cutoff, ~_open_alert_exists())
    elif table == "alerts":
        query = select(func.count()).select_from(ALERTS).where(ALERTS.c.created_at < cutoff, _closed_ours())
    elif table == "incidents":  # every alert of it would go first
        stays = select(literal(1)).where(ALERTS.c.incident_id == INCIDENTS.c.id,
                                         ~((ALERTS.c.created_at < cutoff) & _closed_ours())).exists()
        query = select(func.count()).select_from(INCIDENTS).where(
            INCIDENTS.c.started_at < cutoff, INCIDENTS.c.ended_at < cutoff, ~stays)
    else:
        query = select(func.count()).select_from(RUNS).where(
            RUNS.c.started_at < cutoff, RUNS.c.status != STATUS_RUNNING, RUNS.c.id.not_in(_kept_runs()))
    return int(conn.execute(query).scalar_one())


def _drain(engine: Engine, step: Step, batch: int, pause: float, start: Any = _EPOCH) -> tuple[int, int]:
    """Run ``step`` (one batch, one transaction each) until it looks at fewer rows than ``batch``; ``(rows, batches)``."""
    total = batches = 0
    after = start
    while True:
        with engine.begin() as conn:
            rows, looked, after = step(conn, after)
        total, batches = total + rows, batches + 1
        if looked < batch:
            return total, batches
        if pause:
            time.sleep(pause)


def _delete_old(engine: Engine, table: str, cutoff: datetime, batch: int, pause: float) -> tuple[int, int]:
    """Delete ``table``'s expired rows batch by batch; ``(rows, batches)``."""
    if table == "alerts":
        return _drain(engine, lambda conn, after: _alert_batch(conn, cutoff, after, batch), batch, pause)
    if table == "job_runs":
        return _drain(engine, lambda conn, after: _run_batch(conn, cutoff, after, batch), batch, pause)
    if table == "incidents":
        return _drain(engine, lambda conn, after: _incident_batch(conn, cutoff, after, batch), batch, pause,
                      start=(_EPOCH, 0))
    with engine.connect() as conn:
        types = metric_types(conn)
    rows = batches = 0
    for metric_type in types:  # one walk of the (metric_type, timestamp) index per type
        done = _drain(engine, lambda conn, after, t=metric_type: _observation_batch(conn, t, cutoff, after, batch),
                      batch, pause, start=(_EPOCH, 0))
        rows, batches = rows + done[0], batches + done[1]
    return rows, batches


def run_retention(engine: Engine, policy: RetentionPolicy, *, dry_run: bool = False,
                  now: Optional[datetime] = None, pause_seconds: float = 0.0) -> dict[str, Any]:
    """Apply ``policy`` (see the module docstring); with ``dry_run`` only count what would go.

    Returns per table (``alerts``, ``incidents``, ``observations``, ``job_runs``):
    ``retention_days``, ``cutoff`` (None when disabled), ``rows`` (deleted,
    or that would be), ``batches`` and ``seconds``; and ``dry_run``.
    Alerts go first, so observations and incidents their deletion frees are not kept for them.
    """
    now = now or utcnow()
    days_of = {"alerts": policy.alert_days, "incidents": policy.alert_days, "observations": policy.observation_days,
               "job_runs": policy.job_run_days}
    result: dict[str, Any] = {"dry_run": dry_run}
    for table, days in days_of.items():
        started = time.perf_counter()
        entry: dict[str, Any] = {"retention_days": days, "cutoff": None, "rows": 0, "batches": 0}
        if days > 0:
            cutoff = entry["cutoff"] = now - timedelta(days=days)
            if dry_run:
                with engine.connect() as conn:
                    entry["rows"] = _count(conn, table, cutoff)
            else:
                entry["rows"], entry["batches"] = _delete_old(engine, table, cutoff, policy.batch_size,
                                                              pause_seconds)
        entry["seconds"] = round(time.perf_counter() - started, 3)
        result[table] = entry
    return result
