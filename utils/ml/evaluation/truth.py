"""The simulator's ground truth: each observation's own distribution.

Every generated observation is a draw from a known distribution, given per
row by ``mu`` (its mean; the median for ``lognormal``) and ``shape``:

* ``normal``: sd = ``shape`` x mu (a coefficient of variation), clipped at 0;
* ``nbinom``: negative binomial counts, mean mu, dispersion k = ``shape``;
* ``gamma``: mean mu, shape parameter ``shape``;
* ``lognormal``: median mu, sigma of the log = ``shape``.

The anomaly injector uses it to make anomalies that are anomalous *by
definition*, independently of any detector: a spike is a value whose upper
tail probability under the row's own distribution is at most ``p`` (drawn
log-uniformly, see ``utils.ml.evaluation.inject``), and so on.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

FAMILIES = ("normal", "nbinom", "gamma", "lognormal")


@dataclass
class Truth:
    family: str
    mu: np.ndarray
    shape: np.ndarray
    decimals: np.ndarray  # per row: values are rounded to this many decimals

    def take(self, index: np.ndarray) -> "Truth":
        return Truth(self.family, self.mu[index], self.shape[index], self.decimals[index])


def _nb(mu: np.ndarray, k: np.ndarray):
    return stats.nbinom(k, k / (k + np.maximum(mu, 1e-12)))


def draw(truth: Truth, rng: np.random.Generator) -> np.ndarray:
    """One value per row from the row's distribution, rounded to its decimals."""
    mu, shape = truth.mu, truth.shape
    if truth.family == "normal":
        raw = np.maximum(rng.normal(mu, shape * mu), 0.0)
    elif truth.family == "nbinom":
        lam = rng.gamma(shape, np.maximum(mu, 0.0) / shape)  # gamma-Poisson mixture = negative binomial
        raw = rng.poisson(lam).astype(float)
    elif truth.family == "gamma":
        raw = rng.gamma(shape, mu / shape)
    elif truth.family == "lognormal":
        raw = mu * np.exp(rng.normal(0.0, shape))
    else:
        raise ValueError(f"family: must be one of {FAMILIES} (got {truth.family!r})")
    return round_values(raw, truth.decimals)


def round_values(values: np.ndarray, decimals: np.ndarray) -> np.ndarray:
    scale = 10.0 ** np.asarray(decimals, dtype=float)
    return np.round(np.asarray(values, dtype=float) * scale) / scale


def quantile(truth: Truth, q: np.ndarray) -> np.ndarray:
    """The value at lower-tail probability ``q`` of each row's distribution (before rounding)."""
    mu, shape, q = truth.mu, truth.shape, np.asarray(q, dtype=float)
    if truth.family == "normal":
        return mu + shape * mu * stats.norm.ppf(q)
    if truth.family == "nbinom":
        return _nb(mu, shape).ppf(q)
    if truth.family == "gamma":
        return stats.gamma.ppf(q, shape, scale=mu / shape)
    return mu * np.exp(shape * stats.norm.ppf(q))


def tail_probability(truth: Truth, values: np.ndarray, upper: bool) -> np.ndarray:
    """P(X >= value) (``upper``) or P(X <= value) for the ROUNDED observation of each row.

    A continuous draw is rounded to the row's decimals before it is observed,
    so P(round(X) >= v) = P(X >= v - half a unit): without that, a count of
    4 units with a 3 % noise would call 5 a 1e-5 event, yet rounding a mean
    that moves with demand produces such steps every week.
    """
    mu, shape, v = truth.mu, truth.shape, np.asarray(values, dtype=float)
    if truth.family != "nbinom":
        half = 0.5 * 10.0 ** (-np.asarray(truth.decimals, dtype=float))
        v = v - half if upper else v + half
    if truth.family == "normal":
        z = (v - mu) / np.maximum(shape * mu, 1e-12)
        return stats.norm.sf(z) if upper else stats.norm.cdf(z)
    if truth.family == "nbinom":
        dist = _nb(mu, shape)
        return dist.sf(v - 1) if upper else dist.cdf(v)
    if truth.family == "gamma":
        dist = stats.gamma(shape, scale=mu / shape)
        return dist.sf(v) if upper else dist.cdf(v)
    z = (np.log(np.maximum(v, 1e-12)) - np.log(mu)) / shape
    return stats.norm.sf(z) if upper else stats.norm.cdf(z)


def coefficient_of_variation(truth: Truth) -> np.ndarray:
    """sd / mean of each row's observed value, the rounding's own variance (unit^2 / 12) included."""
    mu, shape = truth.mu, truth.shape
    if truth.family == "nbinom":
        return np.sqrt(1.0 / np.maximum(mu, 1e-12) + 1.0 / shape)
    if truth.family == "normal":
        cv = shape.astype(float)
    elif truth.family == "gamma":
        cv = 1.0 / np.sqrt(shape)
    else:
        cv = np.sqrt(np.exp(shape ** 2) - 1.0)
    unit = 10.0 ** (-np.asarray(truth.decimals, dtype=float))
    return np.sqrt(cv ** 2 + unit ** 2 / 12.0 / np.maximum(mu, 1e-12) ** 2)
