"""The detector without a model: a per-entity robust Z-score, and a scan's history per entity."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from utils.ml.detector import causal
from utils.ml.detector.scores import _Z_RATIOS, Scores, _combine, _grade

FALLBACK_MIN_PRIOR = 10  # earlier rows of its entity before a row may alert
FALLBACK_Z = 5.0  # DetectorSettings.fallback_z's default


def fallback_scores(entity: Any, ts: Any, value: Any, history: Optional[tuple[Any, Any, Any]] = None,
                    z: float = FALLBACK_Z) -> Scores:
    """Per-entity robust Z-score: no model, the entity's own previous observations as reference."""
    e, t, v, targets = _combine(entity, ts, value, history)
    f = causal.compute(causal.fit_stats(e[:0], t[:0], v[:0]), e, t, v, targets)
    score = np.abs(f.r)
    flags = f.ready & (score > z) & _enough(e, t, targets, FALLBACK_MIN_PRIOR)
    return Scores(score, np.full(score.size, z), flags, _grade(score / z, _Z_RATIOS, flags), f.baseline, "robust_z",
                  np.where(flags, "deviation", None))


def _enough(entity: np.ndarray, ts: np.ndarray, targets: np.ndarray, k: int) -> np.ndarray:
    """True where the target row has at least ``k`` earlier rows of its entity."""
    order, _ids, starts, inverse = causal.groups(entity, ts)
    position = np.empty(order.size, dtype=np.int64)
    position[order] = np.arange(order.size)
    t_sorted = position[targets]
    return (t_sorted - starts[inverse[t_sorted]]) >= k


def recent_history(entity: np.ndarray, ts: np.ndarray, k: int = causal.HISTORY) -> np.ndarray:
    """Indices of each entity's last ``k`` rows (what a scan must read per entity before its batch)."""
    order, _ids, starts, inverse = causal.groups(entity, ts)
    ends = np.r_[starts[1:], order.size]
    rank_from_end = ends[inverse] - np.arange(order.size)
    return np.sort(order[rank_from_end <= k])

