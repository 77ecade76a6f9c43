"""Detection: the fallback chain file -> database BLOB -> robust Z-score, and its result.

:class:`DetectorChain` resolves the best available model for one metric type
once and scores many batches with it (:mod:`utils.ml.pipeline.scoring`):

1. ``isolation_forest_file`` — the active model from its file
   (``ModelManager.load_active``: cached, checksum-verified);
2. ``isolation_forest_db`` — the active row's BLOB (legacy rows, and migrated
   rows whose file is gone: ``ModelManager.load_model_from_database``);
3. ``z_score`` — no model: a per-entity robust Z-score against each entity's
   own recent history (:func:`~utils.ml.pipeline.scoring.score_entity_zscore`);
   plain numbers (no entity: an old caller) get the pooled robust Z-score
   against the metric's recent values (:func:`load_reference_values`) instead.

A model of feature version 2 (the causal per-entity detector) scores each
batch against each entity's history before it, which the chain asks its
``history_loader`` for (once per batch); older models score as they always
did.  The ``method`` names stay those of the contract: where the model came
from (file or database), or ``z_score``.

Every step down the chain logs a WARNING naming the reason, through
``events.emit("model_fallback", ...)``, and the result lists the reasons.  A
model that loads but fails when scoring falls back too.  A model whose input
this service cannot compute (the minibar app's aggregate-feature models,
``utils.ml.store.signature``) is never used: reason ``incompatible_input``,
and the chain goes straight to the Z-score (its BLOB is the same model).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any, Callable, Optional, Sequence

import numpy as np
from sqlalchemy import select

from utils.ml import events
from utils.ml.pipeline.batch import ObservationBatch
from utils.ml.pipeline.features import MODEL_TYPE
from utils.ml.store.legacy import INCOMPATIBLE
from utils.ml.pipeline.history import History, empty_history
from utils.ml.pipeline.scoring import (
    Scores,
    is_causal_model,
    score_causal,
    score_entity_zscore,
    score_with_model,
    score_with_zscore,
)
from utils.models import METHOD_DB, METHOD_FILE, METHOD_ZSCORE, MLMetric
from utils.settings import current
from utils.time import utcnow

# The Z-score needs a reference distribution; below this many values it has none worth the name.
MIN_REFERENCE_VALUES = 10
REFERENCE_LIMIT = 50_000


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
    threshold: Optional[float] = None  # None when thresholds are per value (then each result has one)

    @property
    def anomalies(self) -> list[dict[str, Any]]:
        return [r for r in self.results if r["is_anomaly"]]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["anomaly_count"] = len(self.anomalies)
        return data


def load_reference_values(metric_type: str, limit: int = REFERENCE_LIMIT,
                          window_days: Optional[int] = None, session: Any = None) -> np.ndarray:
    """The metric's most recent values (at most ``limit``, within the training window): the Z-score's baseline."""
    if session is None:
        from utils.extensions import db

        session = db.session
    if window_days is None:
        window_days = int(current("ML_TRAIN_WINDOW_DAYS"))
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
                 history_loader: Optional[Callable[[ObservationBatch], History]] = None,
                 stages: Sequence[str] = STAGES) -> None:
        self.manager = manager
        self.metric_type = metric_type
        self.model_type = model_type
        self.reference_loader = reference_loader
        self.history_loader = history_loader
        self.pooled_zscore = False  # True: the Z-score step uses the reference values, never per entity
        self._history: Optional[tuple[int, History]] = None  # (id of the batch, its history)
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
            if outcome.reason == INCOMPATIBLE and METHOD_ZSCORE in self.stages:
                # The same row whichever store it comes from: skip to the Z-score.
                self._stage = self.stages.index(METHOD_ZSCORE) - 1
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

    def history(self, batch: ObservationBatch) -> History:
        """Each entity's history before ``batch`` (from ``history_loader``; read once per batch)."""
        if self._history is None or self._history[0] != id(batch):
            loaded = self.history_loader(batch) if self.history_loader is not None else empty_history()
            self._history = (id(batch), loaded)
        return self._history[1]

    def score(self, batch: ObservationBatch) -> Scores:
        """Score ``batch`` with the current stage, stepping down on failure."""
        self.ensure_loaded()
        while True:
            if self.method is None:
                raise ModelUnavailableError(self.metric_type, self.fallback_reasons)
            if self.method == METHOD_ZSCORE:
                if batch.timestamps is None or self.pooled_zscore or not batch.has_entities:
                    return score_with_zscore(batch.values, self.reference(batch))
                return score_entity_zscore(batch, self.history(batch))
            try:
                if is_causal_model(self.model):
                    return score_causal(self.model, batch, self.history(batch))
                return score_with_model(self.model, batch.matrix)
            except Exception as exc:  # any failure of a model at predict time means: do not trust it
                self._fall_back(self.method, "predict_failed", f"{type(exc).__name__}: {exc}", self.model_id)
                self._advance()

    def result(self, batch: ObservationBatch, scores: Scores) -> DetectionResult:
        rows: list[dict[str, Any]] = []
        expected = scores.expected
        per_value = np.ndim(scores.threshold) > 0
        for i in range(len(batch)):
            row: dict[str, Any] = {
                "value": float(batch.values[i]),
                "is_anomaly": bool(scores.is_anomaly[i]),
                "score": float(scores.score[i]),
                "severity": scores.severity[i],
                # NaN: the entity is still warming up (too few earlier observations for a baseline).
                "expected_value": None if expected is None or np.isnan(expected[i]) else float(expected[i]),
            }
            if per_value:
                row["threshold"] = float(scores.threshold[i])
            if batch.has_entities:
                entity = batch.entity_ids[i]
                row["entity_id"] = None if np.isnan(entity) else int(entity)
            if batch.observation_ids is not None:
                row["observation_id"] = int(batch.observation_ids[i])
            rows.append(row)
        return DetectionResult(
            method=self.method or METHOD_ZSCORE, model_id=self.model_id, fallback_reasons=list(self.fallback_reasons),
            load_ms=round(self.load_ms, 3), results=rows, metric_type=self.metric_type, source=self.source,
            threshold=None if per_value else float(scores.threshold),
        )
