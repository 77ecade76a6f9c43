"""The tail's shape pooled across a metric's entities (utils/ml/detector/calibration.py, ``_pooled_shape``).

Forty entities with the same Gaussian deviations: each one's tail scale,
fitted from its ~29 exceedances, scatters its limit; pooled, the limits sit
close together and near what the budget asks.  An entity with a genuinely
heavier tail keeps a higher limit, and a metric whose entities have too few
exceedances (daily counts) is left alone.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from utils.ml.detector import calibration as C

CONTAMINATION = 0.02
ROWS = 24 * 60  # an hourly entity's 60-day window
ALPHA = 0.003 / 24  # its budget per observation


def limits(x: np.ndarray, index: np.ndarray, size: int, tail_k: float) -> np.ndarray:
    """Per-entity limits of ``x`` (one side) as training computes them, with the pool's weight ``tail_k``."""
    n = np.bincount(index, minlength=size).astype(float)
    w = n / (n + 200)
    return C._limits(x, index, size, n, w, CONTAMINATION, np.full(size, ALPHA), ALPHA, tail_k=tail_k)[0]


def gaussian_entities(size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return np.abs(rng.normal(size=(size, ROWS))).ravel(), np.repeat(np.arange(size), ROWS)


def test_pooling_narrows_the_scatter_of_identical_entities_limits():
    x, index = gaussian_entities(40, seed=5)
    own, pooled = limits(x, index, 40, 0.0), limits(x, index, 40, 30.0)
    assert np.std(pooled) < 0.6 * np.std(own), (np.std(own), np.std(pooled))
    # The same place on average: pooling moves each limit toward the others, not the level.
    assert np.median(pooled) == pytest.approx(np.median(own), rel=0.05)
    # Beyond the exact limit for |x| at half the budget (the unshaped exponential tail errs high), not far.
    exact = norm.isf(ALPHA / 4)
    assert exact < np.median(pooled) < exact + 0.8, (np.median(pooled), exact)


def test_an_entity_with_a_heavier_tail_keeps_a_higher_limit():
    x, index = gaussian_entities(40, seed=6)
    rng = np.random.default_rng(7)
    heavy = rng.exponential(1.5, ROWS)  # entity 40: a heavy, exponential tail
    x, index = np.r_[x, heavy], np.r_[index, np.full(ROWS, 40)]
    pooled = limits(x, index, 41, 30.0)
    assert pooled[40] > np.max(pooled[:40]) + 1.0, (pooled[40], np.max(pooled[:40]))


def test_entities_with_few_exceedances_do_not_set_the_shape():
    q = np.array([2.0, 2.1, 1.9, 2.2, 2.0, 2.05])
    beta = np.array([0.4, 5.0, 0.5, 0.45, 0.35, 0.4])
    few = np.full(6, 1.2)  # a daily count's 60 days x 0.02: about one exceedance each
    assert np.array_equal(C._pooled_shape(q, beta, few), beta)
    many = np.full(6, 28.8)
    shrunk = C._pooled_shape(q, beta, many)
    ratio = np.median(beta / q)
    assert shrunk[1] == pytest.approx((28.8 * 5.0 + 30.0 * ratio * 2.1) / (28.8 + 30.0))
    assert shrunk[1] < beta[1] and np.all(np.abs(shrunk - ratio * q) <= np.abs(beta - ratio * q) + 1e-12)
    # Not positive or not finite: left as it is.
    q_bad = q.copy()
    q_bad[0], q_bad[2] = 0.0, np.nan
    out = C._pooled_shape(q_bad, beta, many)
    assert out[0] == beta[0] and out[2] == beta[2]
