"""Promotion and drift series for ``/metrics``, read from the database at scrape time.

Labels are bounded: one series per (model_type, metric_type) that has an
active model (the same bound as ``ml_active_model_id``), never per feature
value or per report.
"""
from __future__ import annotations

from typing import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import func, select

from utils.extensions import db
from utils.ml.promotion.models import DriftReport, ModelPin
from utils.models import MLModel
from utils.time import as_utc


def promotion_metrics() -> Iterator[Metric]:
    """``ml_drift_psi``, ``ml_drift_ks``, ``ml_drift_detected``, ``ml_drift_checked_timestamp_seconds``
    (latest report of each active type) and ``ml_model_pinned``."""
    labels = ["model_type", "metric_type"]
    psi = GaugeMetricFamily("ml_drift_psi", "Largest PSI over the model's features in the latest drift report "
                            "(recent observations vs the champion's training window).", labels=labels)
    ks = GaugeMetricFamily("ml_drift_ks", "Largest KS distance over the model's features in the latest drift report.",
                           labels=labels)
    drifted = GaugeMetricFamily("ml_drift_detected", "1 when the latest drift report is above a threshold.",
                                labels=labels)
    checked = GaugeMetricFamily("ml_drift_checked_timestamp_seconds", "Unix time of the latest drift report.",
                                labels=labels)
    latest = select(func.max(DriftReport.id)).group_by(DriftReport.model_type, DriftReport.metric_type)
    active = select(MLModel.model_type, MLModel.metric_type).where(MLModel.is_active.is_(True))
    active_types = {tuple(row) for row in db.session.execute(active)}
    for row in db.session.execute(select(DriftReport).where(DriftReport.id.in_(latest))
                                  .order_by(DriftReport.model_type, DriftReport.metric_type)).scalars():
        key = (row.model_type, row.metric_type)
        if key not in active_types:  # a type whose models are gone keeps no series
            continue
        psi.add_metric(list(key), row.psi)
        ks.add_metric(list(key), row.ks)
        drifted.add_metric(list(key), 1.0 if row.drifted else 0.0)
        checked.add_metric(list(key), as_utc(row.created_at).timestamp())
    pinned = GaugeMetricFamily("ml_model_pinned", "1 for each pinned type: training does not change its active "
                               "version until unpinned.", labels=labels)
    for pin in db.session.execute(select(ModelPin).order_by(ModelPin.model_type, ModelPin.metric_type)).scalars():
        pinned.add_metric([pin.model_type, pin.metric_type], 1.0)
    yield from (psi, ks, drifted, checked, pinned)
