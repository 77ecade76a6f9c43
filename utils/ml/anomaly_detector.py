"""The seed's detector: ``AnomalyDetector(db)`` with its three detection methods.

Each returns a :class:`~utils.ml.pipeline.detection.DetectionResult` saying,
per value, whether it is an anomaly and its score, and which method produced
it (``isolation_forest_file``, ``isolation_forest_db`` or ``z_score``); the
fallback chain and the scoring live in :mod:`utils.ml.pipeline.detection`
and :mod:`utils.ml.pipeline.scoring`.

``values`` may be plain numbers or observations (dicts with ``metric_value``
/ ``value``, ``entity_id`` and ``id`` / ``observation_id``; ORM rows and
SQLAlchemy rows work too).  With observations, each value is compared with
its own entity's history: the causal detector (feature version 2) with the
entity's stored observations before the batch plus the batch's earlier
values.  An observation's ``timestamp`` (a datetime or ISO 8601 text; no zone
= UTC) places it in time; values without one are taken as new readings made
now, in the order given.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Callable, Optional, Sequence

import numpy as np

from utils.ml.pipeline.batch import ObservationBatch
from utils.ml.pipeline.detection import (
    DetectionResult,
    DetectorChain,
    ModelUnavailableError,
    load_reference_values,
)
from utils.ml.pipeline.history import History, entity_codes, load_history
from utils.ml.pipeline.scoring import score_with_zscore
from utils.ml.validation import InvalidInput, check_name
from utils.models import METHOD_DB, METHOD_FILE, METHOD_ZSCORE
from utils.time import as_utc, utcnow


def _timestamp_of(item: Any) -> Any:
    if hasattr(item, "_mapping"):
        item = item._mapping
    if isinstance(item, Mapping):
        return item.get("timestamp")
    return getattr(item, "timestamp", None) if hasattr(item, "metric_value") else None


def batch_with_times(values: Sequence[Any]) -> ObservationBatch:
    """The detection batch, with each value's time (its ``timestamp``, else now, in input order)."""
    batch = ObservationBatch.from_values(values)
    if batch.timestamps is not None:
        return batch
    now = utcnow().timestamp()
    times = np.full(len(batch), now)
    if not isinstance(values, (ObservationBatch, np.ndarray)):
        for index, item in enumerate(values):
            raw = _timestamp_of(item)
            if raw is None:
                continue
            try:
                moment = raw if isinstance(raw, datetime) else datetime.fromisoformat(str(raw))
            except ValueError:
                raise InvalidInput(f"values[{index}].timestamp", f"must be an ISO 8601 time (got {raw!r})") from None
            times[index] = as_utc(moment).timestamp()
    batch.timestamps = times
    return batch

__all__ = ["AnomalyDetector", "DetectionResult", "ModelUnavailableError"]


class AnomalyDetector:
    """The seed's detector: ``detect_with_model``, ``detect_with_zscore``, ``detect_anomalies_with_fallback``."""

    def __init__(self, db: Any, model_manager: Any = None) -> None:
        self.db = db
        if model_manager is None:
            from utils.ml.model_manager import get_model_manager

            model_manager = get_model_manager()  # the process-wide one: its cache is shared
        self.model_manager = model_manager

    def chain(self, metric_type: str, *, reference_loader: Optional[Callable[[], np.ndarray]] = None,
              history_loader: Optional[Callable[[ObservationBatch], History]] = None,
              stages: Sequence[str] = DetectorChain.STAGES) -> DetectorChain:
        """A :class:`DetectorChain` for ``metric_type`` (what scans use for many batches).

        ``history_loader`` defaults to each entity's stored observations before the batch's first time.
        """
        check_name("metric_type", metric_type)
        if history_loader is None:
            history_loader = self._stored_history(metric_type)
        return DetectorChain(self.model_manager, metric_type, reference_loader=reference_loader,
                             history_loader=history_loader, stages=stages)

    def _stored_history(self, metric_type: str) -> Callable[[ObservationBatch], History]:
        def load(batch: ObservationBatch) -> History:
            # A millisecond of margin: SQLite's julianday() arithmetic is exact to ~10 us only, and a stored
            # copy of the batch's first observation must not count as its own history.
            before = float(np.min(batch.timestamps)) - 1e-3 if batch.timestamps is not None and len(batch) else None
            history = load_history(self.db.session, metric_type, entity_codes(batch.entity_ids), before=before)
            self.db.session.rollback()  # end the read transaction
            return history
        return load

    def _history_loader(self, metric_type: str) -> Callable[[], np.ndarray]:
        return lambda: load_reference_values(metric_type, session=self.db.session)

    def detect_with_model(self, metric_type: str, values: Sequence[Any]) -> DetectionResult:
        """Score with the active model (file, else BLOB); raise :class:`ModelUnavailableError` if neither works."""
        batch = batch_with_times(values)
        chain = self.chain(metric_type, stages=(METHOD_FILE, METHOD_DB))
        return chain.result(batch, chain.score(batch))

    def detect_with_zscore(self, values: Sequence[Any], reference: Optional[Sequence[float]] = None) -> DetectionResult:
        """Robust Z-score (median/MAD, threshold 3.5) against ``reference`` (default: the values themselves)."""
        batch = ObservationBatch.from_values(values)
        started = time.perf_counter()
        scores = score_with_zscore(batch.values, None if reference is None else np.asarray(reference, dtype=float))
        chain = DetectorChain(self.model_manager, "z_score", stages=(METHOD_ZSCORE,))
        chain.ensure_loaded()
        result = chain.result(batch, scores)
        result.metric_type = None
        result.load_ms = round((time.perf_counter() - started) * 1000, 3)
        return result

    def detect_anomalies_with_fallback(self, metric_type: str, values: Sequence[Any],
                                       reference: Optional[Sequence[float]] = None) -> DetectionResult:
        """File model -> DB BLOB -> per-entity robust Z-score; never raises for a model problem.

        With ``reference`` given, the last step is the pooled robust Z-score
        against it (the seed's behaviour); otherwise each entity's own stored
        history is the baseline.
        """
        batch = batch_with_times(values)
        if reference is not None:
            ref = np.asarray(reference, dtype=float)
            loader: Callable[[], np.ndarray] = lambda: ref  # noqa: E731
        else:
            loader = self._history_loader(metric_type)
        chain = self.chain(metric_type, reference_loader=loader)
        chain.pooled_zscore = reference is not None
        return chain.result(batch, chain.score(batch))
