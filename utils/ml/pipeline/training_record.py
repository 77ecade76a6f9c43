"""What one training run records about its model: the held-out evaluation and the saved ``parameters``.

Used by :meth:`utils.ml.model_trainer.ModelTrainer.train_one`; the meaning of
the numbers (time split, NULL without labels, never scored on its own
training rows) is described in that module's docstring.
"""
from __future__ import annotations

import time
from datetime import datetime
from typing import Any, Callable, Optional

import numpy as np

from utils.ml.detector import model as causal_detector
from utils.ml.pipeline.batch import ObservationBatch
from utils.ml.pipeline.history import entity_codes
from utils.ml.pipeline.scoring import score_causal
from utils.ml.pipeline.training_data import HOLDOUT_FRACTION, LABEL_ANOMALY, LABEL_NORMAL, TrainingData, evaluate
from utils.ml.promotion.fingerprint import KEY as FINGERPRINT_KEY
from utils.time import as_utc

# fit(data, upto, now): a detector fitted on data[:upto] as of epoch ``now``, or None if too few usable rows.
Fit = Callable[[TrainingData, int, float], Optional[causal_detector.TrainedDetector]]


def evaluate_on_holdout(data: TrainingData, fit: Fit) -> dict[str, Any]:
    """Fit on the older ``1 - HOLDOUT_FRACTION`` of ``data`` and judge it causally on the newer part's labels.

    Returns how (``method``, sizes, ``split_at``) and, when the held-out part
    has labels and a model could be fitted, :func:`evaluate`'s counts and
    accuracy/precision/recall; otherwise ``method`` is None and ``reason``
    says why.  ``fit`` is the trainer's, so a subclass's fitting is what gets judged.
    """
    n = len(data)
    split = int(n * (1 - HOLDOUT_FRACTION))
    info: dict[str, Any] = {"method": "time_split", "holdout_fraction": HOLDOUT_FRACTION,
                            "train_samples": split, "holdout_samples": n - split}
    holdout_labels = data.labels[split:]
    if not np.any(holdout_labels >= 0):
        info.update(method=None, reason="no labelled observations in the held-out (newest) part of the window")
        return info
    epoch = data.epoch
    model = fit(data, split, float(epoch[split])) if split >= 2 else None
    if model is None:
        info.update(method=None, reason="too few observations before the held-out part to fit a model")
        return info
    info["split_at"] = as_utc(data.timestamps[split]).isoformat()
    codes = entity_codes(data.entity_ids)
    batch = ObservationBatch.from_arrays(data.values[split:], data.entity_ids[split:], timestamps=epoch[split:])
    history = (codes[:split], epoch[:split], data.values[:split])
    predicted = score_causal(model, batch, history).is_anomaly
    info.update(evaluate(predicted, holdout_labels))
    info["note"] = ("metrics of a model fitted on the older part, judged causally on the newer; "
                    "the saved model is refitted on the whole window")
    return info


def entity_count(data: TrainingData) -> int:
    """How many distinct entities the window has observations of (observations without one not counted)."""
    return int(np.unique(data.entity_ids[~np.isnan(data.entity_ids)]).size)


def model_parameters(model: causal_detector.TrainedDetector, data: TrainingData, evaluation: dict[str, Any], *,
                     window_days: int, since: datetime, end: datetime, entities: int, data_print: str,
                     started: float) -> dict[str, Any]:
    """The ``parameters`` saved with a model fitted on the whole window ``[since, end]`` of ``data``.

    The settings, the window (``entities``: :func:`entity_count` of ``data``),
    the label counts, the evaluation, the fingerprint and ``fit_seconds``
    (since ``started``, a ``perf_counter`` reading).
    """
    labels = {"anomaly": int(np.sum(data.labels == LABEL_ANOMALY)),
              "normal": int(np.sum(data.labels == LABEL_NORMAL)),
              "false_positive_alerts": data.false_positives}
    return {
        "feature_version": causal_detector.FEATURE_VERSION,
        "detector": "causal_per_entity",
        "settings": dict(model.settings),
        "usable_samples": model.samples,
        "entities_with_state": int(model.stats.ids.size),
        "window": {
            "days": window_days, "start": since.isoformat(), "end": end.isoformat(),
            "first_observation": as_utc(data.timestamps[0]).isoformat(),
            "last_observation": as_utc(data.timestamps[-1]).isoformat(),
            "samples": len(data), "entities": entities, "max_observation_id": int(data.ids.max()),
        },
        "labels": labels,
        "evaluation": evaluation,
        FINGERPRINT_KEY: data_print,
        "fit_seconds": round(time.perf_counter() - started, 3),
    }
