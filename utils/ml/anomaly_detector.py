"""Anomaly detection with the seed's fallback chain, each result saying how it was made.

Chain (``detect_anomalies_with_fallback``):

1. ``isolation_forest_file`` — the active model from its file
   (``ModelManager.load_active``: cached, checksum-verified);
2. ``isolation_forest_db`` — the active row's BLOB (legacy rows, and migrated
   rows whose file is gone: ``ModelManager.load_model_from_database``);
3. ``z_score`` — a robust Z-score (median / MAD) against the metric's recent
   history, which needs no model at all.

Every step down the chain logs a WARNING naming the reason, through
``events.emit("model_fallback", ...)``, and the result lists the reasons.  A
model that loads but fails when scoring (for instance one fitted on fewer
features than detection computes) falls back too.

``values`` may be plain numbers or observations (dicts with ``metric_value``
/ ``value``, ``entity_id`` and ``id`` / ``observation_id``; ORM rows and
SQLAlchemy rows work too).  With observations, the model compares each value
with its own entity's history (see ``utils.ml.features``).
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any, Callable, Optional, Sequence

import numpy as np
from flask import current_app, has_app_context
from sklearn.pipeline import Pipeline
from sqlalchemy import select

from utils.ml import events
from utils.ml.features import is_feature_pipeline, model_input, observation_matrix
from utils.models import METHOD_DB, METHOD_FILE, METHOD_ZSCORE, MLMetric
from utils.time import utcnow

logger = logging.getLogger(__name__)

MODEL_TYPE = "isolation_forest"
# Iglewicz & Hoaglin (1993): a modified Z-score above 3.5 is a potential outlier.
ZSCORE_THRESHOLD = 3.5
# MAD -> standard deviation of a normal distribution.
_MAD_TO_SIGMA = 1.4826
# Mean absolute deviation -> sigma, used when more than half the values are equal (MAD = 0).
_MEANAD_TO_SIGMA = 1.2533
# The Z-score needs a reference distribution; below this many values it has none worth the name.
MIN_REFERENCE_VALUES = 10
REFERENCE_LIMIT = 50_000

SEVERITIES = ("low", "medium", "high", "critical")
# Severity = how far past the detector's own threshold a score lies.
# Isolation Forest scores live in (0, 1] (0.5 = average path length); these
# margins above the fitted threshold split the demo data's detected
# anomalies roughly into contextual (low/medium) and global (high/critical).
_IFOREST_MARGINS = (0.03, 0.08, 0.15)
# Z-score: multiples of the threshold (3.5 -> 5.25, 8.75, 14).
_ZSCORE_RATIOS = (1.5, 2.5, 4.0)


class ModelUnavailableError(RuntimeError):
    """No model could score the values; ``reasons`` says why for each path tried."""

    def __init__(self, metric_type: str, reasons: list[str]) -> None:
        super().__init__(f"no usable model for {metric_type}: " + "; ".join(reasons))
        self.metric_type = metric_type
        self.reasons = reasons


@dataclass
class DetectionResult:
    """What a detection produced and how.

    ``results``: one dict per value, in input order, with ``value``,
    ``is_anomaly``, ``score`` (higher = more anomalous; Isolation Forest:
    the negated ``score_samples``, Z-score: ``|z|``), ``severity`` (for
    anomalies) and ``expected_value``, plus ``entity_id`` / ``observation_id``
    when the input carried them.
    """

    method: str
    model_id: Optional[int]
    fallback_reasons: list[str]
    load_ms: float
    results: list[dict[str, Any]]
    metric_type: Optional[str] = None
    source: str = "none"  # where the model came from: cache, file, database or none
    threshold: Optional[float] = None

    @property
    def anomalies(self) -> list[dict[str, Any]]:
        return [r for r in self.results if r["is_anomaly"]]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["anomaly_count"] = len(self.anomalies)
        return data


# --------------------------------------------------------------------- inputs
@dataclass
class ObservationBatch:
    """Values (and, for observations, entity and observation ids) as arrays."""

    values: np.ndarray
    entity_ids: np.ndarray  # float, NaN where unknown
    observation_ids: Optional[np.ndarray] = None
    has_entities: bool = False

    def __len__(self) -> int:
        return int(self.values.shape[0])

    @property
    def matrix(self) -> np.ndarray:
        return observation_matrix(self.entity_ids, self.values)

    @classmethod
    def from_arrays(cls, values: Any, entity_ids: Any = None, observation_ids: Any = None) -> "ObservationBatch":
        values = np.asarray(values, dtype=float).reshape(-1)
        if not np.all(np.isfinite(values)):
            bad = int(np.flatnonzero(~np.isfinite(values))[0])
            raise ValueError(f"values[{bad}]: must be a finite number")
        if entity_ids is None:
            entities = np.full(values.shape[0], np.nan)
        else:
            entities = np.asarray(entity_ids, dtype=float).reshape(-1)
        ids = None if observation_ids is None else np.asarray(observation_ids, dtype=np.int64).reshape(-1)
        return cls(values, entities, ids, has_entities=entity_ids is not None)

    @classmethod
    def from_values(cls, values: Sequence[Any]) -> "ObservationBatch":
        """Accept numbers, observation dicts, ORM objects or SQLAlchemy rows."""
        if isinstance(values, ObservationBatch):
            return values
        if isinstance(values, np.ndarray) and values.dtype.kind in "fiu":
            return cls.from_arrays(values)
        items = list(values)
        numbers: list[float] = []
        entities: list[float] = []
        ids: list[Optional[int]] = []
        observation_like = False
        for index, item in enumerate(items):
            value, entity, obs_id = _unpack(item, index)
            observation_like = observation_like or entity is not _PLAIN
            numbers.append(value)
            entities.append(np.nan if entity in (None, _PLAIN) else float(entity))
            ids.append(obs_id)
        batch = cls.from_arrays(numbers)
        batch.entity_ids = np.asarray(entities, dtype=float)
        batch.has_entities = observation_like
        if observation_like and ids and all(i is not None for i in ids):
            batch.observation_ids = np.asarray(ids, dtype=np.int64)
        return batch


_PLAIN = object()  # marker: the item was a bare number, not an observation


def _unpack(item: Any, index: int) -> tuple[float, Any, Optional[int]]:
    if isinstance(item, bool):
        raise ValueError(f"values[{index}]: must be a number or an observation, not a boolean")
    if isinstance(item, (int, float, np.integer, np.floating)):
        return _finite(item, index), _PLAIN, None
    if hasattr(item, "_mapping"):  # SQLAlchemy Row
        item = item._mapping
    if isinstance(item, Mapping):  # dicts, RowMapping
        raw = item.get("metric_value", item.get("value"))
        obs_id = item.get("observation_id", item.get("id"))
        entity = item.get("entity_id")
    elif hasattr(item, "metric_value"):  # ORM object (MLMetric)
        raw, entity, obs_id = item.metric_value, getattr(item, "entity_id", None), getattr(item, "id", None)
    else:
        raise ValueError(f"values[{index}]: must be a number or an observation, got {type(item).__name__}")
    if raw is None or isinstance(raw, bool):
        raise ValueError(f"values[{index}].metric_value: must be a number")
    return _finite(raw, index), entity, None if obs_id is None else int(obs_id)


def _finite(value: Any, index: int) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"values[{index}]: must be a number (got {value!r})") from None
    if not math.isfinite(number):
        raise ValueError(f"values[{index}]: must be a finite number (got {value!r})")
    return number


# -------------------------------------------------------------------- scoring
@dataclass
class Scores:
    """Per-value arrays of one scoring pass."""

    score: np.ndarray
    is_anomaly: np.ndarray
    threshold: float
    expected: Optional[np.ndarray]
    severity: list[Optional[str]]


def _grade(excess: np.ndarray, cuts: Sequence[float], is_anomaly: np.ndarray) -> list[Optional[str]]:
    levels = np.searchsorted(np.asarray(cuts), excess, side="right")
    return [SEVERITIES[int(level)] if flag else None for level, flag in zip(levels, is_anomaly)]


def score_with_model(model: Any, matrix: np.ndarray) -> Scores:
    """Score the observation matrix with a fitted model (our pipeline or a legacy estimator).

    Isolation Forest: score = ``-score_samples`` and anomaly when the score is
    above ``-offset_`` — exactly ``predict() == -1``, computed from one pass.
    Raises whatever the model raises (the caller falls back).
    """
    X = model_input(model, matrix)
    final = model.steps[-1][1] if isinstance(model, Pipeline) else model
    if hasattr(model, "score_samples") and hasattr(final, "offset_"):
        score = -np.asarray(model.score_samples(X), dtype=float)
        threshold = -float(final.offset_)
        is_anomaly = score > threshold
    elif hasattr(model, "decision_function"):
        decision = np.asarray(model.decision_function(X), dtype=float)
        score, threshold, is_anomaly = -decision, 0.0, decision < 0
    else:
        is_anomaly = np.asarray(model.predict(X)) == -1
        score, threshold = is_anomaly.astype(float), 0.5
    if score.shape != (matrix.shape[0],) or not np.all(np.isfinite(score)):
        raise ValueError(f"model returned {score.shape} scores for {matrix.shape[0]} values, or non-finite scores")
    expected = None
    if is_feature_pipeline(model):
        expected = model.steps[0][1].reference(matrix)[0]
    return Scores(score, is_anomaly, threshold, expected, _grade(score - threshold, _IFOREST_MARGINS, is_anomaly))


def robust_zscores(values: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Modified Z-scores of ``values`` against ``reference``: ``(v - median) / (1.4826 * MAD)``.

    When MAD is 0 (over half the reference is one value) the mean absolute
    deviation is used instead; when that is 0 too, any difference is infinitely
    far and gets a very large finite score.
    """
    reference = np.asarray(reference, dtype=float)
    median = float(np.median(reference))
    deviations = np.abs(reference - median)
    scale = _MAD_TO_SIGMA * float(np.median(deviations))
    if scale <= 0:
        scale = _MEANAD_TO_SIGMA * float(np.mean(deviations))
    if scale <= 0:
        scale = 1e-9 * max(1.0, abs(median))
    return (np.asarray(values, dtype=float) - median) / scale, median, scale


def score_with_zscore(values: np.ndarray, reference: Optional[np.ndarray] = None,
                      threshold: float = ZSCORE_THRESHOLD) -> Scores:
    """Robust Z-score scores; ``reference`` defaults to ``values`` themselves."""
    values = np.asarray(values, dtype=float)
    reference = values if reference is None or len(reference) == 0 else np.asarray(reference, dtype=float)
    if values.size == 0:
        return Scores(np.empty(0), np.zeros(0, dtype=bool), threshold, np.empty(0), [])
    z, median, _scale = robust_zscores(values, reference)
    score = np.abs(z)
    is_anomaly = score > threshold
    return Scores(score, is_anomaly, threshold, np.full(values.shape, median),
                  _grade(score / threshold, _ZSCORE_RATIOS, is_anomaly))


def load_reference_values(metric_type: str, limit: int = REFERENCE_LIMIT,
                          window_days: Optional[int] = None, session: Any = None) -> np.ndarray:
    """The metric's most recent values (at most ``limit``, within the training window): the Z-score's baseline."""
    if session is None:
        from utils.extensions import db

        session = db.session
    if window_days is None:
        window_days = int(current_app.config.get("ML_TRAIN_WINDOW_DAYS", 60)) if has_app_context() else 60
    since = utcnow() - timedelta(days=window_days)
    rows = session.execute(
        select(MLMetric.metric_value)
        .where(MLMetric.metric_type == metric_type, MLMetric.timestamp >= since)
        .order_by(MLMetric.id.desc()).limit(limit)
    ).scalars().all()
    return np.asarray(rows, dtype=float)


# ---------------------------------------------------------------------- chain
class DetectorChain:
    """The fallback chain for one metric type, resolved once and used for many batches.

    The first call to :meth:`score` loads the best available model; if it
    fails to load or to score, the chain steps down (file -> database ->
    Z-score), logging each step, and never steps back up.  ``method``,
    ``model_id``, ``source``, ``load_ms`` and ``fallback_reasons`` describe
    where it ended.
    """

    STAGES = (METHOD_FILE, METHOD_DB, METHOD_ZSCORE)

    def __init__(self, manager: Any, metric_type: str, *, model_type: str = MODEL_TYPE,
                 reference_loader: Optional[Callable[[], np.ndarray]] = None,
                 stages: Sequence[str] = STAGES) -> None:
        self.manager = manager
        self.metric_type = metric_type
        self.model_type = model_type
        self.reference_loader = reference_loader
        self.stages = list(stages)
        self.fallback_reasons: list[str] = []
        self.load_ms = 0.0
        self.method: Optional[str] = None
        self.model: Any = None
        self.model_id: Optional[int] = None
        self.source = "none"
        self._stage = -1
        self._reference: Optional[np.ndarray] = None

    def _fall_back(self, method: str, reason: str, detail: Optional[str], model_id: Optional[int]) -> None:
        following = self.stages[self._stage + 1] if self._stage + 1 < len(self.stages) else None
        text = f"{method}: {reason}" + (f": {detail}" if detail else "")
        self.fallback_reasons.append(text)
        events.emit(
            "model_fallback",
            f"{self.metric_type}: {method} unavailable ({reason}{': ' + detail if detail else ''}); "
            f"falling back to {following or 'nothing'}",
            metric_type=self.metric_type, model_type=self.model_type, from_method=method, to_method=following,
            reason=reason, detail=detail, model_id=model_id,
        )

    def _advance(self) -> None:
        """Load the next stage that works (the Z-score always does)."""
        while self._stage + 1 < len(self.stages):
            self._stage += 1
            method = self.stages[self._stage]
            self.model, self.model_id, self.source = None, None, "none"
            if method == METHOD_ZSCORE:
                self.method = method
                return
            loader = self.manager.load_active if method == METHOD_FILE else self.manager.load_model_from_database
            started = time.perf_counter()
            try:
                outcome = loader(self.model_type, self.metric_type)
            except Exception as exc:  # the loaders report known causes; anything else still means "not this one"
                self.load_ms += (time.perf_counter() - started) * 1000
                self._fall_back(method, "load_error", f"{type(exc).__name__}: {exc}", None)
                continue
            self.load_ms += outcome.load_ms
            if outcome.ok:
                self.method, self.model, self.model_id, self.source = method, outcome.model, outcome.model_id, \
                    outcome.source
                return
            self._fall_back(method, outcome.reason or "not_loaded", outcome.detail, outcome.model_id)
        self.method = None

    def ensure_loaded(self) -> None:
        if self._stage < 0:
            self._advance()

    def reference(self, batch: ObservationBatch) -> np.ndarray:
        if self._reference is None and self.reference_loader is not None:
            self._reference = np.asarray(self.reference_loader(), dtype=float)
        if self._reference is not None and len(self._reference) >= MIN_REFERENCE_VALUES:
            return self._reference
        return batch.values

    def score(self, batch: ObservationBatch) -> Scores:
        """Score ``batch`` with the current stage, stepping down on failure."""
        self.ensure_loaded()
        while True:
            if self.method is None:
                raise ModelUnavailableError(self.metric_type, self.fallback_reasons)
            if self.method == METHOD_ZSCORE:
                return score_with_zscore(batch.values, self.reference(batch))
            try:
                return score_with_model(self.model, batch.matrix)
            except Exception as exc:  # any failure of a model at predict time means: do not trust it
                self._fall_back(self.method, "predict_failed", f"{type(exc).__name__}: {exc}", self.model_id)
                self._advance()

    def result(self, batch: ObservationBatch, scores: Scores) -> DetectionResult:
        rows: list[dict[str, Any]] = []
        expected = scores.expected
        for i in range(len(batch)):
            row: dict[str, Any] = {
                "value": float(batch.values[i]),
                "is_anomaly": bool(scores.is_anomaly[i]),
                "score": float(scores.score[i]),
                "severity": scores.severity[i],
                "expected_value": None if expected is None else float(expected[i]),
            }
            if batch.has_entities:
                entity = batch.entity_ids[i]
                row["entity_id"] = None if np.isnan(entity) else int(entity)
            if batch.observation_ids is not None:
                row["observation_id"] = int(batch.observation_ids[i])
            rows.append(row)
        return DetectionResult(
            method=self.method or METHOD_ZSCORE, model_id=self.model_id, fallback_reasons=list(self.fallback_reasons),
            load_ms=round(self.load_ms, 3), results=rows, metric_type=self.metric_type, source=self.source,
            threshold=float(scores.threshold),
        )


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
        from utils.ml.model_manager import validate_name

        validate_name("metric_type", metric_type)
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
