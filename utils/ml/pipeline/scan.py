"""Scans: score the observations that arrived since the last scan and record alerts.

``run_scan(metric_type=None)`` — for each metric type with new observations
(internal figures excluded):

* the new rows are those with ``id`` above the metric type's watermark in
  ``ml_scan_watermarks`` and at most the largest *settled* id when the scan
  started (see :func:`settled_upper_bound`: on PostgreSQL an insert still in
  flight with a lower id is waited for, never skipped; rows arriving
  meanwhile wait for the next scan);
* they are read and scored in batches of ``ML_SCAN_BATCH_SIZE`` with one
  :class:`~utils.ml.pipeline.detection.DetectorChain` (the model is loaded
  once per metric type, features are computed for the whole batch at once);
  scoring is causal: each observation against its own entity's observations
  before it, whose last 48 (up to the watermark) are read once per entity and
  carried from batch to batch (:class:`~utils.ml.pipeline.history.HistoryCache`);
  on PostgreSQL the pages are read ahead on a second connection
  (``ML_SCAN_READ_AHEAD``) and scored ahead on a thread
  (``ML_SCAN_SCORE_AHEAD``, :mod:`~utils.ml.pipeline.scan_scorer`) while
  this thread writes and commits the batch before, each batch split by
  entity over ``ML_SCAN_SCORE_THREADS`` threads;
* each batch is one transaction: lock the watermark row (``UPDATE ...
  RETURNING``, which also takes SQLite's write lock), read the batch from the
  locked watermark, group the new anomalies into incidents
  (:mod:`utils.ml.incidents.grouping`), insert one ``ml_alerts`` row per anomaly
  (with its ``incident_id``) with ``INSERT ... ON CONFLICT (observation_id) DO
  NOTHING``, advance the watermark, commit.
  A crash loses at most the uncommitted batch, which the next scan redoes;
  two scans running at once serialise on the watermark row, and even a
  duplicate attempt cannot create a second alert for an observation: the
  unique constraint refuses it and the conflict is skipped;
* finally one ``ml_metrics`` row records how the detector was obtained:
  ``metric_type='model_load_time'``, ``entity_id`` = model id,
  ``metric_value`` = load milliseconds, ``extra_data`` = model_type,
  metric_type, source, method, fallback_reasons.
"""
from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any, Optional

from flask import current_app
from sqlalchemy import func, select, text, update

from utils.extensions import db
from utils.ml import events
from utils.ml.jobs.interrupt import JobInterrupted, checkpoint
from utils.ml.anomaly_detector import AnomalyDetector
from utils.ml.pipeline import bad_rows
from utils.ml.pipeline.alert_rows import dialect_insert, insert_alerts, record_alerts
from utils.ml.pipeline.batch import BatchReader
from utils.ml.pipeline.detection import DetectorChain, load_reference_values
from utils.ml.pipeline.features import MODEL_TYPE
from utils.ml.pipeline.scan_scorer import BatchScorer
from utils.ml.pipeline.observations import INTERNAL_METRIC_TYPES, MODEL_LOAD_TIME, check_observed_metric_type
from utils.models import MLMetric, ScanWatermark
from utils.settings import current
from utils.time import utcnow

logger = logging.getLogger(__name__)

__all__ = ["INTERNAL_METRIC_TYPES", "run_scan", "scan_metric_type", "pending_metric_types", "insert_alerts"]


def pending_metric_types() -> list[str]:
    """Metric types with observations above their watermark (internal figures excluded)."""
    watermarks = ScanWatermark.__table__
    metrics = MLMetric.__table__
    rows = db.session.execute(
        select(metrics.c.metric_type)
        .select_from(metrics.outerjoin(watermarks, watermarks.c.metric_type == metrics.c.metric_type))
        .where(
            metrics.c.id > func.coalesce(watermarks.c.last_observation_id, 0),
            metrics.c.metric_type.not_in(INTERNAL_METRIC_TYPES),
        )
        .group_by(metrics.c.metric_type)
        .order_by(metrics.c.metric_type)
    ).scalars().all()
    return list(rows)


def _ensure_watermark(metric_type: str) -> None:
    stmt = dialect_insert(ScanWatermark.__table__).values(
        metric_type=metric_type, last_observation_id=0, updated_at=utcnow()
    ).on_conflict_do_nothing(index_elements=["metric_type"])
    db.session.execute(stmt)
    db.session.commit()


def _lock_watermark(metric_type: str) -> int:
    """Lock the metric type's watermark row until commit and return it."""
    return db.session.execute(
        update(ScanWatermark).where(ScanWatermark.metric_type == metric_type)
        .values(updated_at=utcnow()).returning(ScanWatermark.last_observation_id)
        .execution_options(synchronize_session=False)
    ).scalar_one()




def _record_load_time(chain: DetectorChain, metric_type: str) -> None:
    db.session.execute(MLMetric.__table__.insert().values(
        metric_type=MODEL_LOAD_TIME,
        entity_id=chain.model_id,
        metric_value=round(chain.load_ms, 3),
        timestamp=utcnow(),
        extra_data={
            "model_type": MODEL_TYPE,
            "metric_type": metric_type,
            "source": chain.source,
            "method": chain.method,
            "fallback_reasons": list(chain.fallback_reasons),
        },
    ))
    db.session.commit()


# How long a scan waits for in-flight inserts into ml_metrics before giving up
# (the scan then fails and the next tick retries; inserts queue behind it meanwhile).
SETTLE_LOCK_TIMEOUT_MS = 5000


def settled_upper_bound(metric_type: str) -> Optional[int]:
    """The largest id of ``metric_type`` at or below which no insert is still in flight.

    PostgreSQL hands out ids when a row is inserted, not when it commits: a
    transaction holding id 100 can commit after one holding 101, and a
    watermark moved to 101 would skip 100 forever.  ``LOCK TABLE ... IN SHARE
    MODE`` waits for every transaction that has inserted into ml_metrics (they
    hold ROW EXCLUSIVE until they end) and is released as soon as ``max(id)``
    is read, so every id up to the bound is committed or gone.  SQLite has one
    writer at a time, so its ids become visible in order and need no lock.
    """
    if db.session.get_bind().dialect.name == "postgresql":
        db.session.execute(text(f"SET LOCAL lock_timeout = {SETTLE_LOCK_TIMEOUT_MS}"))
        db.session.execute(text("LOCK TABLE ml_metrics IN SHARE MODE"))
    try:
        return db.session.execute(
            select(func.max(MLMetric.id)).where(MLMetric.metric_type == metric_type)
        ).scalar()
    finally:
        db.session.commit()  # releases the lock at once: inserts wait only for this read


def scan_metric_type(metric_type: str, *, batch_size: Optional[int] = None,
                     detector: Optional[AnomalyDetector] = None) -> dict[str, Any]:
    """Scan one metric type's new observations (see the module docstring); return its summary."""
    check_observed_metric_type(metric_type, "scanned")
    started = time.perf_counter()
    if batch_size is None:
        batch_size = int(current("ML_SCAN_BATCH_SIZE"))
    detector = detector or AnomalyDetector(db)
    summary: dict[str, Any] = {"metric_type": metric_type, "scanned": 0, "alerts": 0, "duplicates_ignored": 0,
                               "incidents_opened": 0, "history_rows": 0,
                               "batches": 0, "method": None, "model_id": None, "source": None, "load_ms": None,
                               "fallback_reasons": [], "watermark": None, "seconds": None, "bad_rows": 0,
                               "older_than_window": 0}
    # Observations older than the training window are history, not news: on a database
    # adopted from the minibar app, a first scan from id 0 raised alerts dated now on
    # readings a year old (new on the app's dashboard and in its e-mails).  They are
    # stepped over, counted, never alerted on.
    cutoff = (utcnow() - timedelta(days=int(current("ML_TRAIN_WINDOW_DAYS")))).timestamp()
    _ensure_watermark(metric_type)
    upper = settled_upper_bound(metric_type)
    summary["watermark"] = db.session.execute(
        select(ScanWatermark.last_observation_id).where(ScanWatermark.metric_type == metric_type)
    ).scalar_one()
    reader = BatchReader(metric_type, upper, batch_size)  # reads ahead on a second thread (PostgreSQL)
    # Scores ahead on a third thread (PostgreSQL) while this one writes and commits.
    scorer = BatchScorer(metric_type, reader, cutoff, ahead=int(current("ML_SCAN_SCORE_AHEAD")),
                         app=current_app._get_current_object(), threads=int(current("ML_SCAN_SCORE_THREADS")))
    chain = detector.chain(metric_type, reference_loader=lambda: load_reference_values(metric_type),
                           history_loader=scorer.history_for)
    scorer.chain = chain
    if upper is not None and summary["watermark"] < upper:
        chain.ensure_loaded()  # once per metric type, before any lock is taken
    db.session.rollback()
    try:
        while upper is not None and summary["watermark"] < upper:
            checkpoint(f"between scan batches of {metric_type}")  # every batch so far is committed
            watermark = _lock_watermark(metric_type)  # re-read under the lock: another scan may have moved it
            summary["watermark"] = watermark
            if watermark >= upper:
                db.session.rollback()
                break
            item = scorer.next(watermark)  # scored while the previous batch was written, when scoring ahead
            if item.last_id is None:
                db.session.rollback()
                break
            summary["bad_rows"] += item.dropped
            summary["older_than_window"] += item.old
            batch = item.batch
            recorded = {"inserted": 0, "candidates": 0, "opened": 0}
            if item.scores is not None:
                recorded = record_alerts(metric_type, batch, item.scores, item.method, item.model_id)
            inserted = recorded["inserted"]
            new_watermark = item.last_id
            db.session.execute(
                update(ScanWatermark).where(ScanWatermark.metric_type == metric_type)
                .values(last_observation_id=new_watermark, updated_at=utcnow())
                .execution_options(synchronize_session=False)
            )
            db.session.commit()
            summary["batches"] += 1
            summary["scanned"] += len(batch)
            summary["alerts"] += inserted
            summary["duplicates_ignored"] += recorded["candidates"] - inserted
            summary["incidents_opened"] += recorded["opened"]
            summary["watermark"] = new_watermark
            if inserted:
                events.emit("alerts_raised", f"{inserted} alerts for {metric_type} ({item.method})",
                            metric_type=metric_type, method=item.method, count=inserted, model_id=item.model_id)
    except BaseException:
        db.session.rollback()
        raise
    finally:
        scorer.close()
        reader.close()
    bad_rows.report("anomaly_scan", metric_type, summary["bad_rows"])
    summary["history_rows"] = scorer.history_rows
    if summary["batches"]:
        summary.update(method=chain.method, model_id=chain.model_id, source=chain.source,
                       load_ms=round(chain.load_ms, 3), fallback_reasons=list(chain.fallback_reasons))
        if current("ML_RECORD_LOAD_TIME"):  # off on a database the minibar app's ORM reads (README)
            _record_load_time(chain, metric_type)
    summary["seconds"] = round(time.perf_counter() - started, 3)
    return summary


def run_scan(metric_type: Optional[str] = None) -> dict[str, Any]:
    """Scan ``metric_type`` (or every metric type with new observations); return the summary.

    ``{"metric_types": {name: {scanned, alerts, duplicates_ignored, method,
    model_id, source, load_ms, fallback_reasons, watermark, seconds}},
    "scanned", "alerts", "seconds"}``.  A metric type that fails is reported
    with ``error`` and does not stop the others.
    """
    started = time.perf_counter()
    if metric_type is not None:
        types = [check_observed_metric_type(metric_type, "scanned")]
    else:
        types = pending_metric_types()
        db.session.rollback()
    detector = AnomalyDetector(db)
    per_type: dict[str, Any] = {}
    errors = 0
    for name in types:
        try:
            per_type[name] = scan_metric_type(name, detector=detector)
        except JobInterrupted:
            raise
        except Exception as exc:  # one metric type must not stop the others
            errors += 1
            logger.exception("scan of %s failed", name)
            events.emit("scan_failed", f"Scan of {name} failed: {exc}", level=logging.ERROR,
                        metric_type=name, error=str(exc))
            per_type[name] = {"metric_type": name, "error": f"{type(exc).__name__}: {exc}", "scanned": 0, "alerts": 0}
    result = {
        "metric_types": per_type,
        "scanned": sum(v.get("scanned", 0) for v in per_type.values()),
        "alerts": sum(v.get("alerts", 0) for v in per_type.values()),
        "bad_rows": sum(v.get("bad_rows", 0) for v in per_type.values()),
        "errors": errors,
        "seconds": round(time.perf_counter() - started, 3),
    }
    events.emit("scan_completed", f"Scan: {result['scanned']} observations, {result['alerts']} alerts",
                scanned=result["scanned"], alerts=result["alerts"], errors=errors, seconds=result["seconds"])
    return result
