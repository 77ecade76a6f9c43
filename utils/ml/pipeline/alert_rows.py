"""The scan's writes: one ``ml_alerts`` row per anomaly, then its incident.

:func:`alert_rows` builds the rows of one scored batch (the app's
vocabulary is filled by the ORM defaults and the ``Severity`` type);
:func:`insert_alerts` inserts them with ``INSERT ... ON CONFLICT
(observation_id) DO NOTHING`` so the unique constraint, not a prior check,
decides whether an observation already has its alert; :func:`record_alerts`
groups a batch's new alerts into incidents (:mod:`utils.ml.incidents.grouping`)
and inserts them with their ``incident_id``, in the caller's transaction.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
from sqlalchemy import select

from utils.extensions import db
from utils.ml.incidents.grouping import NewAlert, group_alerts
from utils.ml.pipeline.batch import ObservationBatch
from utils.ml.pipeline.scoring import Scores
from utils.models import MLAlert
from utils.settings import current
from utils.time import utcnow


def dialect_insert(table: Any):
    """``INSERT`` construct of the session's dialect (both have ``on_conflict_do_nothing``)."""
    from sqlalchemy.dialects import postgresql, sqlite

    name = db.session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise RuntimeError(f"unsupported database dialect {name!r}: PostgreSQL or SQLite expected")


def alert_rows(metric_type: str, batch: ObservationBatch, scores: Scores, method: Optional[str],
               model_id: Optional[int]) -> list[dict]:
    """One ``ml_alerts`` row per anomaly of the scored ``batch``."""
    detected_at = utcnow()
    rows = []
    for i in np.flatnonzero(scores.is_anomaly):
        value = float(batch.values[i])
        entity = None if np.isnan(batch.entity_ids[i]) else int(batch.entity_ids[i])
        expected = None if scores.expected is None or np.isnan(scores.expected[i]) else float(scores.expected[i])
        deviation = None
        if expected is not None and expected != 0:
            deviation = round((value - expected) / abs(expected) * 100.0, 2)
        who = f"entity {entity}" if entity is not None else "no entity"
        versus = f", expected about {expected:.4g}" if expected is not None else ""
        rows.append({
            "metric_type": metric_type,
            "entity_id": entity,
            "metric_value": value,
            "expected_value": expected,
            "deviation_percent": deviation,
            "severity": scores.severity[i],
            "message": (f"{metric_type} {who}: {value:.4g}{versus} "
                        f"(score {float(scores.score[i]):.3f}, {method})"),
            "is_read": False,
            "is_false_positive": False,
            "detected_at": detected_at,
            "anomaly_score": float(scores.score[i]),
            "method": method,
            "model_id": model_id,
            "observation_id": int(batch.observation_ids[i]),
        })
    return rows


def _insert_returning(rows: list[dict[str, Any]]) -> list[tuple[int, int]]:
    if not rows:
        return []
    table = MLAlert.__table__
    stmt = dialect_insert(table).on_conflict_do_nothing(index_elements=["observation_id"]) \
        .returning(table.c.id, table.c.observation_id)
    return [(int(r[0]), int(r[1])) for r in db.session.execute(stmt, rows).all()]


def insert_alerts(rows: list[dict[str, Any]]) -> int:
    """Insert alert rows, skipping any whose observation already has one; return how many were new."""
    return len(_insert_returning(rows))


def _already_alerted(observation_ids: list[int]) -> set[int]:
    table = MLAlert.__table__
    found: set[int] = set()
    for i in range(0, len(observation_ids), 500):
        found.update(db.session.execute(select(table.c.observation_id)
                                        .where(table.c.observation_id.in_(observation_ids[i:i + 500]))).scalars())
    return found


def record_alerts(metric_type: str, batch: ObservationBatch, scores: Scores, method: Optional[str],
                  model_id: Optional[int]) -> dict[str, int]:
    """Group the batch's alerts into incidents, then insert them with their ``incident_id``; the caller commits.

    Observations that already have an alert (a rescan) are left out before
    grouping, so they count toward no incident; ``ON CONFLICT DO NOTHING``
    still guards the insert.  Returns ``{"candidates", "inserted", "opened", "extended"}``.
    """
    rows = alert_rows(metric_type, batch, scores, method, model_id)
    if not rows:
        return {"candidates": 0, "inserted": 0, "opened": 0, "extended": 0}
    existing = _already_alerted([row["observation_id"] for row in rows])
    fresh = [row for row in rows if row["observation_id"] not in existing]
    position = {int(oid): i for i, oid in enumerate(batch.observation_ids)}
    now = utcnow().timestamp()
    new = [NewAlert(row["observation_id"], row["entity_id"],
                    float(batch.timestamps[position[row["observation_id"]]]) if batch.timestamps is not None else now,
                    row["severity"], row["anomaly_score"], row["metric_value"]) for row in fresh]
    assignment, grouped = group_alerts(db.session, metric_type, new,
                                       gap_seconds=float(current("ML_INCIDENT_GAP_HOURS")) * 3600,
                                       method=method, model_id=model_id)
    for row in fresh:
        row["incident_id"] = assignment[row["observation_id"]]
    inserted = _insert_returning(fresh)
    return {"candidates": len(rows), "inserted": len(inserted), **grouped}
