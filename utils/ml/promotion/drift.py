"""Drift: recent observations' features against the champion's training window, PSI and KS per feature.

For each metric type with an active model, :func:`measure_type` transforms
both samples with the champion's *own* features and computes, per feature:

* **PSI** (population stability index) over ten bins at the reference's
  deciles: ``sum((q - p) * ln(q / p))``, proportions floored at 1e-4 so an
  empty bin does not make it infinite.  Rule of thumb: < 0.1 stable,
  0.1-0.25 moderate, > 0.25 a shift;
* **KS**: the two-sample Kolmogorov-Smirnov distance.

The features (:func:`model_features`): for the causal detector (feature
version 2) its ``deviation`` (each row against its entity's baseline from
the rows before it; the recent rows get the reference rows before them as
history, so they do not start cold) and ``level`` (against the entity's
level when the champion was trained, which a lasting shift moves; see
:meth:`TrainedDetector.drift_features`); for a pooled pipeline its feature
step's columns; for any other model the raw value.

The largest of each over the features is the report's ``psi`` / ``ks``;
above ``ML_DRIFT_PSI_THRESHOLD`` or ``ML_DRIFT_KS_THRESHOLD`` it has
``drifted``.  :mod:`.drift_job` stores the reports and triggers retraining.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Optional

import numpy as np
from scipy.stats import ks_2samp

from utils.ml.pipeline.features import is_feature_pipeline, model_input, observation_matrix
from utils.ml.pipeline.history import entity_codes
from utils.ml.pipeline.scoring import is_causal_model
from utils.settings import current
from utils.time import as_utc

BINS = 10
FLOOR = 1e-4


def psi(reference: np.ndarray, recent: np.ndarray, bins: int = BINS) -> float:
    """Population stability index of ``recent`` against ``reference`` (bins at the reference's quantiles)."""
    reference, recent = reference[np.isfinite(reference)], recent[np.isfinite(recent)]
    if reference.size == 0 or recent.size == 0:
        return 0.0
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    expected = np.bincount(np.searchsorted(edges, reference, side="left"), minlength=edges.size + 1) / reference.size
    actual = np.bincount(np.searchsorted(edges, recent, side="left"), minlength=edges.size + 1) / recent.size
    expected, actual = np.maximum(expected, FLOOR), np.maximum(actual, FLOOR)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def ks(reference: np.ndarray, recent: np.ndarray) -> float:
    reference, recent = reference[np.isfinite(reference)], recent[np.isfinite(recent)]
    if reference.size == 0 or recent.size == 0:
        return 0.0
    return float(ks_2samp(reference, recent).statistic)


Sample = tuple[np.ndarray, np.ndarray, np.ndarray]  # (float entity ids with NaN for none, epoch seconds, values)


def model_features(model: Any, sample: Sample, history: Optional[Sample] = None) -> tuple[list[str], np.ndarray]:
    """``(names, columns)`` of the model's own features for ``sample`` (``history``: earlier rows, causal only)."""
    entity_ids, epoch, values = sample
    if is_causal_model(model):
        before = None if history is None else (entity_codes(history[0]), history[1], history[2])
        return model.drift_features(entity_codes(entity_ids), epoch, values, before)
    matrix = observation_matrix(entity_ids, values)
    if is_feature_pipeline(model):
        step = model.steps[0][1]
        return list(step.features), np.asarray(step.transform(model_input(model, matrix)), dtype=float)
    return ["value"], matrix[:, 1:2].astype(float)


@dataclass(frozen=True)
class DriftSettings:
    window_days: int
    min_samples: int
    psi_threshold: float
    ks_threshold: float

    @classmethod
    def current(cls) -> "DriftSettings":
        return cls(int(current("ML_DRIFT_WINDOW_DAYS")), int(current("ML_DRIFT_MIN_SAMPLES")),
                   float(current("ML_DRIFT_PSI_THRESHOLD")), float(current("ML_DRIFT_KS_THRESHOLD")))


def compare(model: Any, reference: Sample, recent: Sample, cfg: DriftSettings,
            history: Optional[Sample] = None) -> dict[str, Any]:
    """The drift numbers of two samples under ``model``'s features (``history``: rows before ``recent``)."""
    names, ref = model_features(model, reference)
    _, new = model_features(model, recent, history)
    per_feature = {name: {"psi": round(psi(ref[:, i], new[:, i]), 6), "ks": round(ks(ref[:, i], new[:, i]), 6)}
                   for i, name in enumerate(names)}
    worst_psi = max((f["psi"] for f in per_feature.values()), default=0.0)
    worst_ks = max((f["ks"] for f in per_feature.values()), default=0.0)
    return {"features": per_feature, "psi": worst_psi, "ks": worst_ks,
            "drifted": worst_psi > cfg.psi_threshold or worst_ks > cfg.ks_threshold}


def reference_window(parameters: dict[str, Any]) -> Optional[tuple[datetime, datetime]]:
    """The champion's training window from its parameters, or None (a legacy model has none)."""
    window = (parameters or {}).get("window") or {}
    try:
        return as_utc(datetime.fromisoformat(window["start"])), as_utc(datetime.fromisoformat(window["end"]))
    except (KeyError, TypeError, ValueError):
        return None


def measure_type(trainer: Any, model: Any, parameters: dict[str, Any], metric_type: str, now: datetime,
                 cfg: DriftSettings) -> Optional[dict[str, Any]]:
    """Drift of ``metric_type`` now against the champion ``model``'s window; None when it cannot be measured.

    ``trainer`` (a :class:`utils.ml.model_trainer.ModelTrainer`) loads the samples.
    The returned dict also carries ``reference_samples``, ``recent_samples``
    and ``recent_start``, or ``skipped`` (why not) instead of the numbers.
    """
    window = reference_window(parameters)
    if window is None:
        return {"skipped": "the active model records no training window"}
    reference = trainer.load(metric_type, window[0], window[1])
    since = now - timedelta(days=cfg.window_days)
    recent = trainer.load(metric_type, since, now)
    if len(recent) < cfg.min_samples or len(reference) < cfg.min_samples:
        return {"skipped": f"{len(recent)} recent and {len(reference)} reference observations, "
                           f"fewer than ML_DRIFT_MIN_SAMPLES={cfg.min_samples}"}
    reference_epoch = reference.epoch
    before = reference_epoch < since.timestamp()  # the reference rows before the recent ones: their history
    numbers = compare(model, (reference.entity_ids, reference_epoch, reference.values),
                      (recent.entity_ids, recent.epoch, recent.values), cfg,
                      (reference.entity_ids[before], reference_epoch[before], reference.values[before]))
    numbers.update(reference_samples=len(reference), recent_samples=len(recent), recent_start=since.isoformat())
    return numbers
