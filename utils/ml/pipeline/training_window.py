"""Reading a metric type's training window out of ``ml_metrics`` (and the alerts marked false positive).

:class:`utils.ml.model_trainer.ModelTrainer` reads through these (its
``metric_types``, ``newest`` and ``load`` methods delegate here, so a subclass
or a test can still replace them on the trainer); the promotion gate's
comparison and the drift check load windows through the trainer.  Each
function takes the SQLAlchemy session and only reads: ending the transaction
is the caller's business, except after a failed label query (see
:func:`read_rows`).
"""
from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Optional

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import DataError

from utils.ml.pipeline import bad_rows
from utils.ml.pipeline.observations import INTERNAL_METRIC_TYPES
from utils.ml.pipeline.training_data import _LABEL_CODES, LABEL_NORMAL, LABEL_UNKNOWN, TrainingData
from utils.models import MLAlert, MLMetric
from utils.time import as_utc, utcnow

# The trainer's logger, not this module's: the warning below was logged under
# that name before it moved here, and log filters may select it by name.
logger = logging.getLogger("utils.ml.model_trainer")


def metric_types(session: Any, since: datetime) -> list[str]:
    """Metric types with observations since ``since``, internal figures excluded, sorted by name."""
    rows = session.execute(
        select(MLMetric.metric_type).where(
            MLMetric.timestamp >= since, MLMetric.metric_type.not_in(INTERNAL_METRIC_TYPES)
        ).distinct().order_by(MLMetric.metric_type)
    ).scalars().all()
    return list(rows)


def newest(session: Any, metric_type: str, until: datetime) -> Optional[datetime]:
    """The time (UTC) of the newest observation of ``metric_type`` at or before ``until``; None if none."""
    value = session.execute(
        select(MLMetric.timestamp).where(MLMetric.metric_type == metric_type, MLMetric.timestamp <= until)
        .order_by(MLMetric.timestamp.desc()).limit(1)
    ).scalar_one_or_none()
    return as_utc(value) if value is not None else None


def read_rows(session: Any, metric_type: str, since: datetime, until: datetime) -> list[Any]:
    """(id, entity_id, metric_value, timestamp, label) of the window, in time order.

    The label is read in SQL (``->>``); a legacy ``json`` column holding a
    NUL makes that conversion fail for the whole query, so the session is
    rolled back and the rows are read again with the raw document and the
    label taken in Python.
    """
    where = (MLMetric.metric_type == metric_type, MLMetric.timestamp >= since, MLMetric.timestamp <= until)
    order = (MLMetric.timestamp, MLMetric.id)
    label = MLMetric.extra_data["label"].as_string()
    try:
        return list(session.execute(
            select(MLMetric.id, MLMetric.entity_id, MLMetric.metric_value, MLMetric.timestamp, label)
            .where(*where).order_by(*order)).all())
    except DataError:
        session.rollback()
        logger.warning("labels of %s cannot be read in SQL (a NUL in extra_data?); reading them row by row",
                       metric_type)
    rows = session.execute(
        select(MLMetric.id, MLMetric.entity_id, MLMetric.metric_value, MLMetric.timestamp, MLMetric.extra_data)
        .where(*where).order_by(*order)).all()
    return [(r[0], r[1], r[2], r[3], bad_rows.label_of(r[4])) for r in rows]


def load_window(session: Any, metric_type: str, since: datetime, until: Optional[datetime] = None) -> TrainingData:
    """The window's observations of ``metric_type`` (time order) with their labels; ``until`` defaults to now.

    Rows no model can use (non-finite value, no timestamp) are dropped and
    counted in ``bad_rows``, so one bad row never fails the metric type.
    Observations of alerts marked false positive are labelled normal,
    whatever their own label says.
    """
    rows, dropped = bad_rows.finite_rows(read_rows(session, metric_type, since, until or utcnow()), 2, 3)
    n = len(rows)
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=n)
    entities = np.fromiter((np.nan if r[1] is None else r[1] for r in rows), dtype=float, count=n)
    values = np.fromiter((r[2] for r in rows), dtype=float, count=n)
    labels = np.fromiter((_LABEL_CODES.get(r[4], LABEL_UNKNOWN) for r in rows), dtype=np.int8, count=n)
    false_positive_ids = np.asarray(session.execute(
        select(MLAlert.observation_id).where(
            MLAlert.metric_type == metric_type, MLAlert.is_false_positive.is_(True),
            MLAlert.observation_id.is_not(None),
        )
    ).scalars().all(), dtype=np.int64)
    marked = np.isin(ids, false_positive_ids) if false_positive_ids.size else np.zeros(n, dtype=bool)
    labels[marked] = LABEL_NORMAL  # an operator said so: that overrides any other label
    return TrainingData(ids, entities, values, [r[3] for r in rows], labels, int(marked.sum()), dropped)
