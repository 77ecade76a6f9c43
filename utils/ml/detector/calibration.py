"""Calibration of the causal detector's limits: per-entity tails shrunk toward the metric's.

The deviation and shift limits are computed on a power of the values
(:func:`tail_power`, :func:`_shaped_limits`): the exponential tail the
limits extrapolate fits a Gaussian-like deviation only after squaring it or
so, and before that it put hourly entities' limits at 4.65 standard
deviations where their budget asks for 3.9.  Each entity's tail scale is
shrunk toward the metric's tail shape (:func:`_pooled_shape`): estimated from
its own ~29 exceedances, it scattered the limits far more than the quantile
it extrapolates from.

Split from :mod:`utils.ml.detector.model` (which pickles the trained state and
must keep its class paths); these functions are only called while training.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from utils.ml.detector import causal

COMMON_DRIFT_SHARE = 0.15
# The tail's shape pooled across the metric's entities (:func:`_pooled_shape`): each entity's tail
# scale is shrunk toward the metric's typical scale-to-quantile ratio times its own quantile, with
# weight k / (k + TAIL_SHRINK_K) for k = its expected exceedances.  Only entities with at least
# TAIL_POOL_MIN_EXCEEDANCES of them, and at least TAIL_POOL_MIN_ENTITIES such entities, set the ratio.
TAIL_SHRINK_K, TAIL_POOL_MIN_EXCEEDANCES, TAIL_POOL_MIN_ENTITIES = 30.0, 5.0, 5
MIN_LIMIT = 1.0  # scales: a deviation within one robust scale of the baseline is never an alert
SPACING, SPACING_BELOW, SPACING_K = True, 5.0, 5.0
SHAPED = True


def _per_entity(index: np.ndarray, size: int, values: np.ndarray, fn) -> tuple[np.ndarray, np.ndarray]:
    """``fn`` of each entity's ``values`` (NaN where it has none) and the counts."""
    out, n = np.full(size, np.nan), np.zeros(size)
    order = np.argsort(index, kind="stable")
    bounds = np.searchsorted(index[order], np.arange(size + 1))
    for i in range(size):
        mine = values[order[bounds[i]:bounds[i + 1]]]
        if mine.size:
            n[i], out[i] = mine.size, fn(mine)
    return out, n


def _per_entity_tail(index: np.ndarray, size: int, values: np.ndarray, c: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_tail` of each entity's ``values`` in one pass: (q, beta), NaN where it has none."""
    q, beta = np.full(size, np.nan), np.full(size, np.nan)
    order = np.argsort(index, kind="stable")
    bounds = np.searchsorted(index[order], np.arange(size + 1))
    for i in range(size):
        if bounds[i + 1] > bounds[i]:
            q[i], beta[i] = _tail(values[order[bounds[i]:bounds[i + 1]]], c)
    return q, beta


def _limits(x: np.ndarray, index: np.ndarray, size: int, n: np.ndarray, w: np.ndarray, c: float,
            alpha: np.ndarray, m_alpha: float, tail_k: Optional[float] = None) -> tuple[np.ndarray, float]:
    """Per-entity and metric limits of one side of a deviation-like feature ``x`` (see the module docstring).

    ``tail_k``: the weight of the pooled tail shape (:func:`_pooled_shape`), ``TAIL_SHRINK_K`` if None.
    """
    m_q, m_beta = _tail(x, c)
    q_e, beta_e = _per_entity_tail(index, size, x, c)
    beta_e = _pooled_shape(q_e, beta_e, n * c, TAIL_SHRINK_K if tail_k is None else tail_k)
    # Shrinkage toward the metric only ever raises a short history's tail, never lowers it:
    # a new room with a heavy tail of its own is not held to the metric's lighter one.
    q_e = np.where(n > 0, np.maximum(np.nan_to_num(q_e), w * np.nan_to_num(q_e) + (1 - w) * m_q), m_q)
    beta_e = np.where(n > 0, np.maximum(np.nan_to_num(beta_e), w * np.nan_to_num(beta_e) + (1 - w) * m_beta), m_beta)
    # Few exceedances (a daily count has about one in 60 days) make the tail scale uncertain: widen it.
    beta_e = beta_e * (1 + 1 / np.maximum(n * c, 1.0))
    # Each side gets half the budget: tail probability alpha / 2 = c * exp(-(D - q) / beta).
    # Never below MIN_LIMIT scales: a window whose deviations are all equal (a small legacy
    # database, an entity at its most common value) has q = beta = 0, and a limit of 0 would
    # make every deviation an alert.
    return (np.maximum(q_e + beta_e * np.log(np.maximum(2 * c / alpha, 1.0)), MIN_LIMIT),
            max(m_q + m_beta * float(np.log(max(2 * c / m_alpha, 1.0))), MIN_LIMIT))


def _pooled_shape(q: np.ndarray, beta: np.ndarray, exceedances: np.ndarray,
                  shrink_k: float = TAIL_SHRINK_K) -> np.ndarray:
    """Each entity's tail scale ``beta`` shrunk toward ``ratio * q``, ``ratio`` the metric's median ``beta / q``.

    The limit extrapolates ``beta`` about six e-folds past the ``(1 - c)``
    quantile ``q`` (an hourly entity's budget), so ``beta``'s noise from its
    ~29 exceedances in a 60-day window scatters the limits: measured on the
    simulator's stock, 4.5-5.2 true standard deviations at the median but 5.5-11
    at the 90th percentile, where the budget alone asks for about 3.8.  The
    quantile is well estimated; the tail's *shape* relative to it is much the
    same across a metric's entities.  So ``beta`` becomes
    ``(k beta + K ratio q) / (k + K)``, ``k`` = the entity's expected
    exceedances, ``K`` = ``shrink_k``: an hourly entity (k about 29) keeps its
    own quantile and about half its own scale, so a genuinely heavier tail
    still gives a higher limit.  Where fewer than
    ``TAIL_POOL_MIN_ENTITIES`` entities have ``TAIL_POOL_MIN_EXCEEDANCES``
    (a metric of daily counts), or ``q`` is not positive, ``beta`` is left as it is.
    """
    ok = np.isfinite(q) & (q > 0) & np.isfinite(beta)
    sets = ok & (exceedances >= TAIL_POOL_MIN_EXCEEDANCES)
    if shrink_k <= 0 or sets.sum() < TAIL_POOL_MIN_ENTITIES:
        return beta
    ratio = float(np.median(beta[sets] / q[sets]))
    k = np.maximum(exceedances, 0.0)
    return np.where(ok, (k * beta + shrink_k * ratio * np.where(ok, q, 0.0)) / (k + shrink_k), beta)


def tail_power(x: np.ndarray, c: float, k: float = 5.0, most: float = 1.5) -> float:
    """The power ``g`` in [1, ``most``] that makes the upper tail of ``x ** g`` (x > 0) exponential.

    An exponential tail has ``(q(1 - c/2) - q(1 - c)) / (q(1 - c) - q(1 - k c)) = ln 2 / ln k``;
    a Gaussian deviation's tail is lighter (0.36 at g = 1), its square's
    about exponential.  ``g`` is where the spacing ratio of ``x ** g`` meets
    ln 2 / ln k (1 where the tail is already that heavy: the window's own
    anomalies push it that way, never toward a lower limit).
    """
    levels = np.array([1 - k * c, 1 - c, 1 - c / 2])
    q = np.quantile(x, levels) if x.size else np.zeros(3)
    if x.size * c / 2 < 20 or q[0] <= 0:
        return 1.0
    target = np.log(2) / np.log(k)

    def ratio(g: float) -> float:
        p = q ** g
        return float((p[2] - p[1]) / max(p[1] - p[0], 1e-12))

    lo, hi = 1.0, most
    if ratio(lo) >= target:
        return 1.0
    if ratio(hi) <= target:
        return most
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if ratio(mid) < target else (lo, mid)
    return 0.5 * (lo + hi)


def _shaped_limits(x: np.ndarray, index: np.ndarray, size: int, n: np.ndarray, w: np.ndarray, c: float,
                   alpha: np.ndarray, m_alpha: float) -> tuple[np.ndarray, float]:
    """:func:`_limits` of ``x ** g`` with the metric's :func:`tail_power` ``g``, taken back to ``x``."""
    g = tail_power(x, c) if SHAPED else 1.0
    t = np.sign(x) * np.abs(x) ** g
    e_lim, m_lim = _limits(t, index, size, n, w, c, alpha, m_alpha)
    return np.maximum(e_lim ** (1 / g), MIN_LIMIT), max(m_lim ** (1 / g), MIN_LIMIT)


def _common_drift(stats: causal.EntityStats, now: float) -> dict[str, float]:
    """Whether many entities moved the same way last week: a change of regime, not one entity's drift.

    From the daily medians before ``now``: each entity's step between its last
    two weekly medians, in its own scales.  When at least ``COMMON_DRIFT_SHARE``
    of the entities (and at least 3) stepped the same way by more than one
    scale, the drift channel is off for that direction until the next training
    (a new par level for a group of products, a new HVAC schedule).
    """
    weekly = causal.weekly_medians(stats.daily)
    col1 = int(np.floor(now / causal.DAY)) - 7 - stats.day0
    if stats.ids.size == 0 or col1 - 7 < 0 or col1 >= weekly.shape[1]:
        return {"drift_off_pos": 0.0, "drift_off_neg": 0.0}
    step = (weekly[:, col1] - weekly[:, col1 - 7]) / stats.scale
    known = np.isfinite(step)
    out = {}
    for side, moved in (("pos", step > 1.0), ("neg", step < -1.0)):
        count = int(np.sum(moved & known))
        out["drift_off_" + side] = float(count >= 3 and count >= COMMON_DRIFT_SHARE * max(int(known.sum()), 1))
    return out


def _tail(values: np.ndarray, c: float) -> tuple[float, float]:
    """(1 - c) quantile and exponential tail scale of ``values``.

    The scale is the median excess over ``q`` / ln 2; with fewer than
    ``SPACING_BELOW`` expected exceedances (a daily count's 60 days) those are
    one or two values, and one of the window's own spikes would set the scale
    (and blind the entity for the whole window), so the scale comes from the
    spacing of two quantiles instead: for an exponential tail,
    ``q(1 - c) - q(1 - k c) = beta ln k``.
    """
    q = float(np.quantile(values, 1 - c))
    if SPACING and values.size * c < SPACING_BELOW:
        k = min(SPACING_K, 0.5 / c)
        return q, max(q - float(np.quantile(values, 1 - k * c)), 0.0) / np.log(k)
    excess = values[values > q] - q
    return q, float(np.median(excess)) / np.log(2) if excess.size else 0.0
