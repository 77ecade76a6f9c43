"""Reading the metric's forest: its score of a deviation, and the score at a per-entity limit."""
from __future__ import annotations

from typing import Optional

import numpy as np
from sklearn.ensemble import IsolationForest

_GRID = np.linspace(0.0, 8.0, 401)  # log1p(deviation) at which the forest is read for its thresholds


def _forest_score(forest: IsolationForest, deviation: np.ndarray) -> np.ndarray:
    """The forest's score of each deviation (its one input column)."""
    d = np.asarray(deviation, dtype=float)
    return -forest.score_samples((np.sign(d) * np.log1p(np.abs(d)))[:, None])


def _envelope(forest: IsolationForest, sign: float) -> np.ndarray:
    """The forest's lowest score over each grid deviation and every larger one, on one side."""
    scores = _forest_score(forest, sign * np.expm1(_GRID))
    return np.minimum.accumulate(scores[::-1])[::-1]


def _score_threshold(forest: IsolationForest, limit: np.ndarray, sign: float,
                     envelope: Optional[np.ndarray] = None) -> np.ndarray:
    """The lowest score the forest gives any deviation beyond ``limit`` on that side.

    A forest's score is a noisy, nearly monotone function of the deviation,
    flat where it saturates; reading it at the limit alone would let that
    noise reject a larger deviation.  The envelope over a grid of deviations
    (up to e^8 scales) keeps the forest's judgement and drops the noise.
    """
    grid = np.expm1(_GRID)  # deviations 0 .. ~3000 scales, log-spaced
    if envelope is None:
        envelope = _envelope(forest, sign)
    at = np.clip(np.searchsorted(grid, np.asarray(limit, dtype=float)), 0, grid.size - 1)
    return envelope[at]

