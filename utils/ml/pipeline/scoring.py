"""Scoring: a fitted model (or the robust Z-score) plus observations -> scores, flags and severities.

The one place training and detection turn a model into scores: the trainer
judges its held-out models with these functions, and detection's fallback
chain scores every batch with them.  Scores are "higher = more anomalous".

* :func:`score_causal` — the per-entity causal detector (feature version 2,
  :mod:`utils.ml.detector.model`): each observation against its own entity's
  baseline from *before* it, thresholds per entity; needs the batch's
  timestamps and each entity's recent history (:mod:`.history`);
* :func:`score_entity_zscore` — the fallback without a model: a per-entity
  robust Z-score on the same history (median of the entity's last 24
  observations, MAD of its last 48, ``|z| > 5``; an entity needs 10 earlier
  observations before it can alert);
* :func:`score_with_model` — models saved before feature version 2 (our
  pipelines and the legacy bare forests), exactly as they always scored;
* :func:`score_with_zscore` — the pooled robust Z-score of the seed's
  ``detect_with_zscore`` (an explicit reference, or the values themselves).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
from sklearn.pipeline import Pipeline

from utils.ml.detector import model as causal_detector
from utils.ml.pipeline.batch import ObservationBatch
from utils.ml.pipeline.features import is_feature_pipeline, model_input, observation_matrix
from utils.ml.pipeline.history import History, entity_codes

# Iglewicz & Hoaglin (1993): a modified Z-score above 3.5 is a potential outlier.
ZSCORE_THRESHOLD = 3.5
# MAD -> standard deviation of a normal distribution.
_MAD_TO_SIGMA = 1.4826
# Mean absolute deviation -> sigma, used when more than half the values are equal (MAD = 0).
_MEANAD_TO_SIGMA = 1.2533

SEVERITIES = ("low", "medium", "high", "critical")
# Severity = how far past the detector's own threshold a score lies.
# Isolation Forest scores live in (0, 1] (0.5 = average path length); these
# margins above the fitted threshold split the demo data's detected
# anomalies roughly into contextual (low/medium) and global (high/critical).
_IFOREST_MARGINS = (0.03, 0.08, 0.15)
# Z-score: multiples of the threshold (3.5 -> 5.25, 8.75, 14).
_ZSCORE_RATIOS = (1.5, 2.5, 4.0)


@dataclass
class Scores:
    """Per-value arrays of one scoring pass."""

    score: np.ndarray
    is_anomaly: np.ndarray
    threshold: Any  # one float, or per value (the causal detector's per-entity thresholds)
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


def is_causal_model(model: Any) -> bool:
    """True for the per-entity causal detector (feature version 2 and later)."""
    return isinstance(model, causal_detector.TrainedDetector)


def _from_detector(result: causal_detector.Scores) -> Scores:
    return Scores(np.asarray(result.score, dtype=float), np.asarray(result.is_anomaly, dtype=bool),
                  np.asarray(result.threshold, dtype=float), np.asarray(result.expected, dtype=float),
                  list(result.severity))


def _arrays(batch: ObservationBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if batch.timestamps is None:
        raise ValueError("causal scoring needs the observations' timestamps")
    return entity_codes(batch.entity_ids), batch.timestamps, batch.values


def score_causal(model: Any, batch: ObservationBatch, history: History) -> Scores:
    """Score ``batch`` with a causal detector against each entity's ``history`` (rows before the batch)."""
    return _from_detector(model.score(*_arrays(batch), history=history))


def score_entity_zscore(batch: ObservationBatch, history: History) -> Scores:
    """The per-entity robust Z-score fallback (see the module docstring)."""
    return _from_detector(causal_detector.fallback_scores(*_arrays(batch), history=history))


def score_window(model: Any, entity_ids: np.ndarray, timestamps: np.ndarray, values: np.ndarray,
                 start: int = 0) -> Scores:
    """Score rows ``start:`` of a time-ordered window with any model this service loads.

    A causal detector judges each row against its entity's rows before
    ``start`` (the history a scan would have); a feature-version-1 pipeline
    scores the rows alone.  The gate and the comparison score champion and
    challenger through this one function, so both are judged the same way.
    """
    if is_causal_model(model):
        codes = entity_codes(entity_ids)
        batch = ObservationBatch.from_arrays(values[start:], entity_ids[start:], timestamps=timestamps[start:])
        return score_causal(model, batch, (codes[:start], timestamps[:start], values[:start]))
    return score_with_model(model, observation_matrix(entity_ids[start:], values[start:]))
