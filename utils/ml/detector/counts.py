"""Daily counts (items consumed in a room since the last count): how surprising the last days' sum is.

The count channel of the detector (see :func:`state.count_dispersion` for
which entities are daily counts).
"""
from __future__ import annotations

import numpy as np
from scipy.stats import nbinom

# The sum of the last w counts (w in COUNT_WINDOWS) against a negative binomial with the mean of the
# busy days among the COUNT_LEVEL counts before them (at least COUNT_MIN_LEVEL counts).
COUNT_WINDOWS, COUNT_LEVEL, COUNT_MIN_LEVEL = (1, 3), 14, 7


def count_surprise(x: np.ndarray, v_prev: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """-ln P(a sum of the last w counts at least this high), the largest over ``COUNT_WINDOWS``; and its w.

    ``x``: the row's count; ``v_prev``: its previous counts, newest first (NaN
    where there are none); ``k``: the entity's dispersion (0: not a count, the
    result is 0).  The sum of the row and the previous ``w - 1`` counts is
    judged against a negative binomial with ``w`` times the mean of the busy
    (non-zero) days among the ``COUNT_LEVEL`` counts before them and
    dispersion ``w k``; 0 with fewer than ``COUNT_MIN_LEVEL`` counts or 3
    busy days there (an empty room's zeros say nothing of how much a guest
    takes).  Under the model ``-ln p`` has an exponential tail, so the
    detector calibrates it as it does the deviation.
    """
    out, which = np.zeros(x.size), np.zeros(x.size, dtype=np.int64)
    rows = np.flatnonzero(k > 0)
    if rows.size == 0:
        return out, which
    for w in COUNT_WINDOWS:
        recent = v_prev[rows, :w - 1]
        base = v_prev[rows, w - 1:w - 1 + COUNT_LEVEL]
        n = np.sum(~np.isnan(base), axis=1)
        busy = np.sum(base > 0, axis=1)  # NaN compares False
        ok = (n >= COUNT_MIN_LEVEL) & (busy >= 3) & ~np.any(np.isnan(recent), axis=1)
        if not ok.any():
            continue
        total = x[rows] + np.nansum(recent, axis=1)
        mu = np.nansum(base, axis=1) / np.maximum(busy, 1) * w
        kk = w * k[rows]
        p = nbinom.sf(total - 1, kk, kk / (kk + mu))
        s = np.where(ok, -np.log(np.clip(p, 1e-300, 1.0)), 0.0)
        better = s > out[rows]
        out[rows[better]], which[rows[better]] = s[better], w
    return out, which
