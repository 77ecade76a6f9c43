"""The detectors compared by the walk-forward evaluation, behind one small interface.

Each detector is made per metric type and has

* ``fit(window: Series, now) -> None`` — the rows of the training window
  (all before ``now``; the harness calls it on the retrain cadence and only
  with at least ``min_samples`` rows);
* ``score(prefix: Series, start) -> (is_alert, score)`` for ``prefix[start:]``;
  rows before ``start`` are history the detector may look at (nothing after
  the scored rows is ever passed).

``a_model``: today's model path — ``utils.ml.features.build_pipeline``
(EntityRelativeFeatures + IsolationForest, contamination 0.02, 200 trees),
its global threshold ``-offset_``; before the first model, today's Z-score
(the service's chain falls back to it).
``b_zscore``: today's Z-score fallback — median/MAD of the metric's window
values (all entities pooled, newest 50,000), ``|z| > 3.5``.
``c_rolling_z``: per-entity rolling robust Z — median/MAD of the entity's own
observations of the previous 7 days (at least 10), ``|z| > 3.5``.
``d_entity_iforest``: per-entity ``IsolationForest`` (100 trees,
contamination 0.02) on the raw value, fitted on the entity's window rows
(at least 50); refitted every ``refit_days`` (7) because a daily refit of
~190 forests costs ~50 s a day here; entities without a forest raise nothing.
``e_new``: :mod:`utils.ml.detector.model`.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
from sklearn.ensemble import IsolationForest

from utils.ml.detector import model as new_detector
from utils.ml.evaluation.data import DAY, NO_ENTITY, Series
from utils.ml.pipeline.scoring import robust_zscores

ZSCORE_THRESHOLD = 3.5
REFERENCE_LIMIT = 50_000
def robust_z(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The service's modified Z-score (:func:`utils.ml.pipeline.scoring.robust_zscores`), the same code."""
    return robust_zscores(np.asarray(values, dtype=float), np.asarray(reference, dtype=float))[0]


class PooledZScore:
    name = "b_zscore"

    def __init__(self, metric_type: str) -> None:
        self.reference: Optional[np.ndarray] = None

    def fit(self, window: Series, now: float) -> None:
        self.reference = window.value[-REFERENCE_LIMIT:].copy()

    def score(self, prefix: Series, start: int) -> tuple[np.ndarray, np.ndarray]:
        values = prefix.value[start:]
        reference = self.reference if self.reference is not None and self.reference.size >= 10 else values
        z = np.abs(robust_z(values, reference))
        return z > ZSCORE_THRESHOLD, z


class TodayModel(PooledZScore):
    name = "a_model"

    def __init__(self, metric_type: str, contamination: float = 0.02, n_estimators: int = 200) -> None:
        super().__init__(metric_type)
        self.contamination, self.n_estimators = contamination, n_estimators
        self.model: Any = None

    @staticmethod
    def matrix(series: Series, start: int = 0) -> np.ndarray:
        from utils.ml.features import observation_matrix

        entity = series.entity[start:].astype(float)
        entity[series.entity[start:] == NO_ENTITY] = np.nan
        return observation_matrix(entity, series.value[start:])

    def fit(self, window: Series, now: float) -> None:
        from utils.ml.features import build_pipeline

        super().fit(window, now)
        self.model = build_pipeline(contamination=self.contamination, n_estimators=self.n_estimators,
                                    random_state=42).fit(self.matrix(window))

    def score(self, prefix: Series, start: int) -> tuple[np.ndarray, np.ndarray]:
        if self.model is None:
            return super().score(prefix, start)
        score = -self.model.score_samples(self.matrix(prefix, start))
        return score > -float(self.model.steps[-1][1].offset_), score


def _entity_rows(series: Series, start: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """For each entity scored from ``start``: (all its row indices up to the end, the scored ones)."""
    out = {}
    scored_entities = np.unique(series.entity[start:])
    order = np.argsort(series.entity, kind="stable")
    ids, starts = np.unique(series.entity[order], return_index=True)
    for e, rows in zip(ids, np.split(order, starts[1:])):
        if e in scored_entities:
            out[int(e)] = (rows, rows[rows >= start])
    return out


class RollingRobustZ:
    name = "c_rolling_z"

    def __init__(self, metric_type: str, window_days: float = 7.0, threshold: float = ZSCORE_THRESHOLD,
                 min_reference: int = 10) -> None:
        self.window, self.threshold, self.min_reference = window_days * DAY, threshold, min_reference

    def fit(self, window: Series, now: float) -> None:
        return None  # nothing to learn: the reference is each row's own trailing week

    def score(self, prefix: Series, start: int) -> tuple[np.ndarray, np.ndarray]:
        n = len(prefix) - start
        z = np.zeros(n)
        for rows, scored in _entity_rows(prefix, start).values():
            ts, values = prefix.ts[rows], prefix.value[rows]
            for i in np.searchsorted(rows, scored):
                lo = int(np.searchsorted(ts, ts[i] - self.window))
                if i - lo >= self.min_reference:
                    z[rows[i] - start] = abs(robust_z(values[i:i + 1], values[lo:i])[0])
        return z > self.threshold, z


class EntityForest:
    name = "d_entity_iforest"

    def __init__(self, metric_type: str, refit_days: int = 7, n_estimators: int = 100,
                 contamination: float = 0.02, min_samples: int = 50) -> None:
        self.refit, self.n_estimators = refit_days * DAY, n_estimators
        self.contamination, self.min_samples = contamination, min_samples
        self.models: dict[int, IsolationForest] = {}
        self.fitted_at: Optional[float] = None

    def fit(self, window: Series, now: float) -> None:
        if self.fitted_at is not None and now - self.fitted_at < self.refit - 1:
            return
        self.fitted_at, self.models = now, {}
        for e, (rows, _) in _entity_rows(window, 0).items():
            if rows.size >= self.min_samples:
                self.models[e] = IsolationForest(n_estimators=self.n_estimators, contamination=self.contamination,
                                                 random_state=42).fit(window.value[rows, None])

    def score(self, prefix: Series, start: int) -> tuple[np.ndarray, np.ndarray]:
        n = len(prefix) - start
        flags, score = np.zeros(n, dtype=bool), np.zeros(n)
        for e, (_rows, scored) in _entity_rows(prefix, start).items():
            model = self.models.get(e)
            if model is not None:
                s = -model.score_samples(prefix.value[scored, None])
                score[scored - start], flags[scored - start] = s, s > -model.offset_
        return flags, score


class NewDetector:
    name = "e_new"

    def __init__(self, metric_type: str, settings: new_detector.DetectorSettings = new_detector.DetectorSettings()
                 ) -> None:
        self.settings = settings
        self.model: Optional[new_detector.TrainedDetector] = None

    def fit(self, window: Series, now: float) -> None:
        model = new_detector.train(window.entity, window.ts, window.value, self.settings, now)
        if model is not None:  # as the service does: a skipped training keeps the current model
            self.model = model

    def score(self, prefix: Series, start: int) -> tuple[np.ndarray, np.ndarray]:
        past = new_detector.recent_history(prefix.entity[:start], prefix.ts[:start])
        history = (prefix.entity[past], prefix.ts[past], prefix.value[past])
        batch = (prefix.entity[start:], prefix.ts[start:], prefix.value[start:])
        if self.model is None:
            result = new_detector.fallback_scores(*batch, history=history, z=self.settings.fallback_z)
        else:
            result = self.model.score(*batch, history=history)
        return result.is_anomaly, result.score


DETECTORS: dict[str, Callable[[str], Any]] = {
    cls.name: cls for cls in (TodayModel, PooledZScore, RollingRobustZ, EntityForest, NewDetector)
}
