"""Shared helpers of the pipeline tests (observations, training, detection, scans).

Everything runs against the real migrated database of the ``app`` fixture
and the real model store; nothing is mocked.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import Any, Optional

import numpy as np
from sqlalchemy import func, select

# A hotel small enough for fast tests, big enough for every gate and every kind
# of anomaly: 600 stock, ~770 consumption and 1200 refill observations.
SMALL_HOTEL = {"rooms": 30, "products": 10, "attendants": 4, "days": 30}


def small_hotel(seed: int = 7, **overrides: Any) -> dict[str, Any]:
    """Insert the small demo hotel (call inside an app context); return the counts."""
    from utils.ml.pipeline.demo_data import generate_demo_data

    return generate_demo_data(**{**SMALL_HOTEL, **overrides}, seed=seed)


def count(model: Any, *where: Any) -> int:
    from utils.extensions import db

    query = select(func.count()).select_from(model)
    for clause in where:
        query = query.where(clause)
    result = db.session.execute(query).scalar_one()
    db.session.rollback()
    return int(result)


def observations(metric_type: str) -> list[dict[str, Any]]:
    """Every observation of ``metric_type`` as the dicts the detector accepts, with their labels."""
    from utils.extensions import db
    from utils.models import MLMetric

    rows = db.session.execute(
        select(MLMetric.id, MLMetric.entity_id, MLMetric.metric_value, MLMetric.extra_data, MLMetric.timestamp)
        .where(MLMetric.metric_type == metric_type).order_by(MLMetric.id)
    ).all()
    db.session.rollback()
    return [{"id": r[0], "entity_id": r[1], "metric_value": r[2], "kind": _kind(r[3]),
             "timestamp": r[4] if r[4].tzinfo else r[4].replace(tzinfo=timezone.utc)} for r in rows]


def _kind(extra: Optional[dict[str, Any]]) -> str:
    extra = extra or {}
    return extra.get("anomaly_kind", "normal") if extra.get("label") == "anomaly" else "normal"


def unlabelled_series(metric_type: str, n: int, *, entities: int = 5, seed: int = 1,
                      end: Optional[datetime] = None) -> list[dict[str, Any]]:
    """``n`` plain observations (no labels), one per hour up to ``end``, for ingest_observations."""
    rng = np.random.default_rng(seed)
    end = end or datetime.now(timezone.utc)
    items = []
    for i in range(n):
        entity = i % entities
        items.append({
            "metric_type": metric_type,
            "entity_id": entity,
            "metric_value": float(round(rng.normal(20 + 10 * entity, 2), 2)),
            "timestamp": (end - timedelta(hours=n - i)).isoformat(),
        })
    return items


def fallback_warnings(caplog: Any) -> list[logging.LogRecord]:
    """The WARNING records of ``model_fallback`` events captured by pytest."""
    return [r for r in caplog.records
            if r.levelno == logging.WARNING and getattr(r, "event", None) == "model_fallback"]


def fresh_spikes(metric_types: tuple[str, ...] = ("stok_seviye", "tuketim_miktar", "dolum_sure"),
                 entities: int = 2, factor: float = 10000.0, hours_apart: float = 1.0) -> list[dict[str, Any]]:
    """After training: each metric type's first ``entities`` entities read ``factor`` x their largest value
    (the small demo hotel's windows are full of injected anomalies, so its per-entity limits are wide),
    twice, ``hours_apart`` apart, just after their last observation (a causal detector judges new data;
    the rows it was trained on are its own baseline).  Returns the ingested items."""
    from utils.extensions import db
    from utils.ml.pipeline.observations import ingest_observations
    from utils.models import MLMetric

    items = []
    for metric_type in metric_types:
        rows = db.session.execute(
            select(MLMetric.entity_id, func.max(MLMetric.metric_value), func.max(MLMetric.timestamp))
            .where(MLMetric.metric_type == metric_type).group_by(MLMetric.entity_id)
            .order_by(MLMetric.entity_id).limit(entities)).all()
        for entity, largest, last in rows:
            last = last if last.tzinfo else last.replace(tzinfo=timezone.utc)
            for k in (1, 2):
                items.append({"metric_type": metric_type, "entity_id": entity,
                              "metric_value": float(max(largest, 1.0) * factor),
                              "timestamp": (last + timedelta(hours=k * hours_apart)).isoformat()})
    db.session.rollback()
    ingest_observations(items)
    return items
