"""A metric type's training window as arrays, and the held-out evaluation's confusion counts.

Used by :mod:`utils.ml.model_trainer` (and the promotion gate's comparison,
which loads windows through it).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Optional

import numpy as np

from utils.time import as_utc

HOLDOUT_FRACTION = 0.2
LABEL_UNKNOWN, LABEL_NORMAL, LABEL_ANOMALY = -1, 0, 1
_LABEL_CODES = {"anomaly": LABEL_ANOMALY, "normal": LABEL_NORMAL}


@dataclass
class TrainingData:
    """One metric type's window, ordered by time."""

    ids: np.ndarray
    entity_ids: np.ndarray  # float, NaN for none
    values: np.ndarray
    timestamps: list[datetime]
    labels: np.ndarray  # -1 unknown, 0 normal, 1 anomaly
    false_positives: int
    bad_rows: int = 0  # rows of the window dropped as unusable (see utils.ml.pipeline.bad_rows)

    def __len__(self) -> int:
        return int(self.values.shape[0])

    @property
    def epoch(self) -> np.ndarray:
        """Observation times as UTC epoch seconds."""
        return np.fromiter((as_utc(t).timestamp() for t in self.timestamps), dtype=float, count=len(self))


def _ratio(numerator: int, denominator: int) -> Optional[float]:
    return None if denominator == 0 else round(numerator / denominator, 6)


def evaluate(predicted: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Confusion counts and accuracy/precision/recall over the labelled entries (label >= 0).

    A metric whose denominator is zero is None, never a made-up 0 or 1.
    """
    known = labels >= 0
    pred, truth = predicted[known].astype(bool), labels[known] == LABEL_ANOMALY
    tp = int(np.sum(pred & truth))
    fp = int(np.sum(pred & ~truth))
    tn = int(np.sum(~pred & ~truth))
    fn = int(np.sum(~pred & truth))
    return {
        "labelled": int(known.sum()), "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        "accuracy": _ratio(tp + tn, tp + fp + tn + fn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
    }
