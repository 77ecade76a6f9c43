"""What a scored batch returns, its severity grades, and the checks every batch's input passes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

SEVERITIES = ("low", "medium", "high", "critical")
# Severity: how far past the entity's own threshold.  Deviation and drift: the ratio of the deviation
# to the one at the threshold; stuck: how many times less likely than the threshold run (in nats).
_RATIOS = (1.5, 2.5, 4.0)
_NATS = (np.log(10.0), np.log(100.0), np.log(1000.0))
_Z_RATIOS = _RATIOS


@dataclass
class Scores:
    """Per row of a scored batch, in input order."""

    score: np.ndarray
    threshold: np.ndarray
    is_anomaly: np.ndarray
    severity: np.ndarray  # object: one of SEVERITIES, or None
    expected: np.ndarray  # the baseline (NaN while warming up)
    method: str
    channel: Optional[np.ndarray] = None  # per alert: deviation, stuck or drift


def _grade(ratio: np.ndarray, cuts: tuple[float, ...], flags: np.ndarray) -> np.ndarray:
    levels = np.searchsorted(np.asarray(cuts), ratio, side="right")
    out = np.full(flags.size, None, dtype=object)
    out[flags] = [SEVERITIES[int(i)] for i in levels[flags]]
    return out


def _combine(entity: Any, ts: Any, value: Any, history: Optional[tuple[Any, Any, Any]]
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(entity, ts, value) of the history followed by the batch, and the batch's indices in them.

    Raises ValueError naming the column and row of the first non-finite value.
    """
    e, t, v = (np.asarray(entity, dtype=np.int64).reshape(-1), np.asarray(ts, dtype=float).reshape(-1),
               np.asarray(value, dtype=float).reshape(-1))
    if not (e.shape == t.shape == v.shape):
        raise ValueError("entity_ids, timestamps and values must have the same length")
    for name, column in (("values", v), ("timestamps", t)):
        if not np.all(np.isfinite(column)):
            raise ValueError(f"{name}[{int(np.flatnonzero(~np.isfinite(column))[0])}]: must be a finite number")
    if history is None or len(history[0]) == 0:
        return e, t, v, np.arange(e.size)
    he, ht, hv = (np.asarray(history[0], dtype=np.int64), np.asarray(history[1], dtype=float),
                  np.asarray(history[2], dtype=float))
    return (np.concatenate([he, e]), np.concatenate([ht, t]), np.concatenate([hv, v]),
            np.arange(he.size, he.size + e.size))

