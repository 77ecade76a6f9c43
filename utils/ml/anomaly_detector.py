"""The seed's detector: ``AnomalyDetector(db)`` with its three detection methods.

Each returns a :class:`~utils.ml.pipeline.detection.DetectionResult` saying,
per value, whether it is an anomaly and its score, and which method produced
it (``isolation_forest_file``, ``isolation_forest_db`` or ``z_score``); the
fallback chain and the scoring live in :mod:`utils.ml.pipeline.detection`
and :mod:`utils.ml.pipeline.scoring`.

``values`` may be plain numbers or observations (dicts with ``metric_value``
/ ``value``, ``entity_id`` and ``id`` / ``observation_id``; ORM rows and
SQLAlchemy rows work too).  With observations, the model compares each value
with its own entity's history (see :mod:`utils.ml.pipeline.features`).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

from utils.ml.pipeline.batch import ObservationBatch
from utils.ml.pipeline.detection import (
    DetectionResult,
    DetectorChain,
    ModelUnavailableError,
    load_reference_values,
)
from utils.ml.pipeline.scoring import score_with_zscore
from utils.ml.validation import check_name
from utils.models import METHOD_DB, METHOD_FILE, METHOD_ZSCORE

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
              stages: Sequence[str] = DetectorChain.STAGES) -> DetectorChain:
        """A :class:`DetectorChain` for ``metric_type`` (what scans use for many batches)."""
        check_name("metric_type", metric_type)
        return DetectorChain(self.model_manager, metric_type, reference_loader=reference_loader, stages=stages)

    def _history_loader(self, metric_type: str) -> Callable[[], np.ndarray]:
        return lambda: load_reference_values(metric_type, session=self.db.session)

    def detect_with_model(self, metric_type: str, values: Sequence[Any]) -> DetectionResult:
        """Score with the active model (file, else BLOB); raise :class:`ModelUnavailableError` if neither works."""
        batch = ObservationBatch.from_values(values)
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
        """File model -> DB BLOB -> robust Z-score; never raises for a model problem.

        The Z-score's baseline is ``reference`` if given, else the metric's
        recent history in the database, else (too little history) the values.
        """
        batch = ObservationBatch.from_values(values)
        if reference is not None:
            ref = np.asarray(reference, dtype=float)
            loader: Callable[[], np.ndarray] = lambda: ref  # noqa: E731
        else:
            loader = self._history_loader(metric_type)
        chain = self.chain(metric_type, reference_loader=loader)
        return chain.result(batch, chain.score(batch))
