"""Per-entity state of the causal detector, learnt from the training window (see :mod:`causal`).

Plain numpy arrays aligned with the sorted entity ids; pickled with the model.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

DAY, HOUR = 86400.0, 3600.0
NO_STATE = np.iinfo(np.int64).min  # the id of the placeholder row of a model-less state
LEVEL_MIN, LEVEL_MAX = 9, 24  # observations in the level median (see causal's module docstring)
WEEKLY_MIN_DAYS = 21.0
DAILY_MIN_DAYS = 3.0
DRIFT_DAYS = 21
# The long shift (causal.Features.shift_long): the median of the entity's rows of about a day, at most
# LONG_RUN_MAX, for entities observed at least LONG_MIN_RATE times a day.  Measured (walk-forward,
# seeds 1-5): 6 rows for every such entity -> P 0.80 R 0.795, drift 8/15; a day's rows up to 12 (and
# model.LONG_MARGIN 1.4) -> P 0.78 R 0.80, drift 9/15; held-out seeds 6 + 7 R 0.76 either way, P 0.67 -> 0.68.
LONG_MIN_RATE, LONG_RUN_MAX, LONG_RUN_SAVED = 6.0, 12, 6
COUNT_MAX_RATE, COUNT_K_MAX, COUNT_MIN_POSITIVE, COUNT_TRIM = 2.0, 1000.0, 5, 0.05
_MAD, _MEANAD = 1.4826, 1.2533


@dataclass
class EntityStats:
    """Per-entity state, rows aligned with the sorted ``ids``."""

    ids: np.ndarray  # int64, sorted
    n: np.ndarray  # observations in the window
    rate: np.ndarray  # observations per active day
    level_m: np.ndarray  # int
    hod: np.ndarray  # (E, 24)
    dow: np.ndarray  # (E, 7)
    profile: np.ndarray  # 0 none, 1 hour of day, 2 hour of day + day of week
    scale: np.ndarray
    scale_local: np.ndarray  # the scale of r_local's residuals (smaller where busy days move r)
    resolution: np.ndarray
    repeat_cost: np.ndarray  # (E, 2): -log P(repeat) after the entity's most common value, after any other
    mode: np.ndarray  # the entity's most common value (an empty room's 0)
    mode_share: np.ndarray  # its share of the window's observations
    daily: np.ndarray  # (E, D) deseasonalised daily medians, day index day0 .. day0 + D - 1
    day0: int
    log_floor: np.ndarray  # > 0: the entity is modelled in logs, values clipped at this floor first
    # > 0: a daily count (see :func:`count_dispersion`), the negative-binomial dispersion of its window
    count_k: Optional[np.ndarray] = None
    # The rows of the long shift (see :func:`long_run`), 0 for an entity without one; None in models
    # saved before it was per entity, whose long shift was LONG_RUN_SAVED rows.
    long_run: Optional[np.ndarray] = None
    # The scale of the day view's differences (see :mod:`day_view`), NaN for an entity without the view;
    # None in models saved before it, which judge every deviation without it.
    scale_day: Optional[np.ndarray] = None
    # Whether the entity's deviation uses the local correction (see :mod:`local_view`); None in models
    # saved before the rule, which use it for every entity.
    local_on: Optional[np.ndarray] = None

    def long_runs(self) -> np.ndarray:
        """``long_run``, or what a model saved before it used: ``LONG_RUN_SAVED`` rows where the rate allows."""
        if self.long_run is not None:
            return self.long_run
        return np.where(self.rate >= LONG_MIN_RATE, LONG_RUN_SAVED, 0).astype(np.int64)

    def count_dispersion(self) -> np.ndarray:
        """``count_k``, or zeros for a model saved before it existed (no entity is a count there)."""
        return self.count_k if self.count_k is not None else np.zeros(self.ids.size)

    def lookup(self, entity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Index into the arrays for each entity, and whether it is known."""
        if self.ids.size == 0:
            return np.zeros(entity.size, dtype=np.int64), np.zeros(entity.size, dtype=bool)
        index = np.clip(np.searchsorted(self.ids, entity), 0, self.ids.size - 1)
        return index, self.ids[index] == entity

    def tail(self, days: int) -> "EntityStats":
        """The same state keeping only the last ``days`` daily medians (what a saved model needs)."""
        keep = self.daily[:, -days:] if self.daily.shape[1] > days else self.daily
        return replace(self, daily=keep, day0=self.day0 + self.daily.shape[1] - keep.shape[1])


def to_model_space(value: np.ndarray, log_floor: np.ndarray) -> np.ndarray:
    """log(max(value, floor)) where ``log_floor`` > 0, else the value itself."""
    logged = np.log(np.maximum(value, np.where(log_floor > 0, log_floor, 1.0)))
    return np.where(log_floor > 0, logged, value)


def slots(ts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hour of day, day of week with Monday = 0, epoch day) of UTC timestamps."""
    day = np.floor(ts / DAY).astype(np.int64)
    return ((ts - day * DAY) // HOUR).astype(np.int64), (day + 3) % 7, day


def groups(entity: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Order by (entity, time): (order, ids, group starts, group of each sorted row)."""
    order = np.lexsort((ts, entity))
    ids, starts, inverse = np.unique(entity[order], return_index=True, return_inverse=True)
    return order, ids, starts, inverse


def row_median(a: np.ndarray) -> np.ndarray:
    """Median of each row ignoring NaNs (NaN for an all-NaN row); much faster than ``np.nanmedian`` here."""
    ordered = np.sort(a, axis=1)  # NaNs sort last
    count = np.sum(~np.isnan(a), axis=1)
    lo = np.clip((count - 1) // 2, 0, a.shape[1] - 1)
    hi = np.clip(count // 2, 0, a.shape[1] - 1)
    rows = np.arange(a.shape[0])
    # Halves first: the same value bit for bit (halving is exact), and no overflow for values near the float limit.
    return np.where(count > 0, 0.5 * ordered[rows, lo] + 0.5 * ordered[rows, hi], np.nan)


def robust_scale(deviations: np.ndarray, axis: Optional[int] = None) -> np.ndarray:
    """1.4826 x median |d| (d already centred), else 1.2533 x mean |d|; NaNs ignored (NaN if all are).

    ``axis``: None (all values) or 1 (each row of a 2-D array).  Never warns:
    scans score on threads, and silencing numpy's all-NaN warnings with
    ``warnings.catch_warnings`` swaps the process-wide filters under them.
    """
    a = np.abs(np.asarray(deviations, dtype=float))
    if axis == 1 and a.ndim == 2:
        count = np.sum(~np.isnan(a), axis=1)
        mad = _MAD * row_median(a)
        mean = np.where(count > 0, np.nansum(a, axis=1) / np.maximum(count, 1), np.nan)
    elif axis is None:
        seen = a[~np.isnan(a)]
        mad = _MAD * float(np.median(seen)) if seen.size else np.nan
        mean = float(np.mean(seen)) if seen.size else np.nan
    else:
        raise ValueError(f"axis: must be None or 1 (got {axis!r})")
    return np.where(mad > 0, mad, _MEANAD * mean)


def _group_median(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median of ``values`` per distinct row of the int matrix ``keys``."""
    order = np.lexsort((values,) + tuple(keys[:, i] for i in range(keys.shape[1] - 1, -1, -1)))
    k, v = keys[order], values[order]
    new = np.r_[True, np.any(k[1:] != k[:-1], axis=1)]
    starts = np.flatnonzero(new)
    counts = np.diff(np.r_[starts, k.shape[0]])
    lo, hi = starts + (counts - 1) // 2, starts + counts // 2
    return k[starts], 0.5 * (v[lo] + v[hi])


def _profile(y: np.ndarray, hod: np.ndarray, dow: np.ndarray, day: np.ndarray,
             span: float, rate: float) -> tuple[np.ndarray, np.ndarray, int]:
    """(hour-of-day, day-of-week, kind) profile of one entity's (transformed) values ``y``."""
    p_hod, p_dow = np.zeros(24), np.zeros(7)
    days, daily = _group_median(day[:, None], y)
    days = days[:, 0]
    grid = np.full(days[-1] - days[0] + 7, np.nan)
    grid[days - days[0] + 3] = daily
    trend = row_median(sliding_window_view(grid, 7))  # centred 7-day running median; NaN across a week's gap
    resid = y - trend[day - days[0]]
    ok = np.isfinite(resid)  # a gap of a week or more has no running median
    resid, hod, dow, day = resid[ok], hod[ok], dow[ok], day[ok]
    kind = 0
    if rate > 2 and span >= DAILY_MIN_DAYS:
        for slot in np.unique(hod):
            if np.sum(hod == slot) >= 3:
                p_hod[slot] = np.median(resid[hod == slot])
        resid = resid - p_hod[hod]
        kind = 1
    if span >= WEEKLY_MIN_DAYS and resid.size:
        w, d = dow, day
        seen = [np.unique(d[w == slot]).size for slot in range(7)]
        if all(s == 0 or s >= 2 for s in seen):
            for slot in range(7):
                if seen[slot]:
                    p_dow[slot] = np.median(resid[w == slot])
            kind = 2
    return p_hod, p_dow, kind


def fit_stats(entity: np.ndarray, ts: np.ndarray, value: np.ndarray) -> EntityStats:
    """Profiles, level windows, repeat costs and drift medians of every entity in the window.

    The scale is left at 1: :func:`fit_scale` sets it from causal residuals.
    """
    order, ids, starts, _ = groups(entity, ts)
    if ids.size == 0:  # no model: one placeholder row no real entity id matches keeps the indexing simple
        ids, order, starts = np.array([NO_STATE]), np.empty(0, dtype=np.int64), np.array([0])
    hod, dow, day = slots(ts)
    day0 = int(day.min()) if day.size else 0
    n_days = int(day.max()) - day0 + 1 if day.size else 1
    size = ids.size
    stats = EntityStats(ids=ids.astype(np.int64), n=np.zeros(size, dtype=np.int64), rate=np.zeros(size),
                        level_m=np.zeros(size, dtype=int), hod=np.zeros((size, 24)), dow=np.zeros((size, 7)),
                        profile=np.zeros(size, dtype=int), scale=np.ones(size), scale_local=np.ones(size),
                        resolution=np.zeros(size), repeat_cost=np.zeros((size, 2)), mode=np.zeros(size),
                        mode_share=np.zeros(size), daily=np.full((size, n_days), np.nan), day0=day0,
                        log_floor=np.zeros(size), count_k=np.zeros(size), long_run=np.zeros(size, dtype=np.int64),
                        scale_day=np.ones(size), local_on=np.ones(size, dtype=bool))
    for i, rows in enumerate(np.split(order, starts[1:]) if order.size else []):
        v = value[rows]
        active = np.unique(day[rows]).size
        span = float(ts[rows[-1]] - ts[rows[0]]) / DAY
        stats.n[i] = rows.size
        stats.rate[i] = rows.size / active
        stats.level_m[i] = int(np.clip(round(stats.rate[i]), LEVEL_MIN, LEVEL_MAX))
        stats.long_run[i] = long_run(stats.rate[i])
        distinct = np.unique(v)
        stats.resolution[i] = float(np.min(np.diff(distinct))) if distinct.size > 1 else max(abs(v[0]) * 1e-3, 1e-6)
        if np.all(v > 0):  # multiplicative noise and profiles: work with logs (see the module docstring)
            stats.log_floor[i] = 0.5 * stats.resolution[i]
            stats.resolution[i] = stats.resolution[i] / float(np.median(v))
        y = to_model_space(v, np.full(v.size, stats.log_floor[i]))
        stats.count_k[i] = count_dispersion(v, stats.rate[i])
        stats.hod[i], stats.dow[i], stats.profile[i] = _profile(y, hod[rows], dow[rows], day[rows], span,
                                                                stats.rate[i])
        values, counts = np.unique(v, return_counts=True)
        stats.mode[i] = values[np.argmax(counts)]
        stats.mode_share[i] = counts.max() / v.size
        # The run still going at the window's end is left out: it is what the next scan judges,
        # and a stuck reading retrained into the window daily would vouch for itself (measured: a
        # room stuck at 5 for six days got cheaper by the day and never reached its limit).
        changes = np.flatnonzero(v[1:] != v[:-1])
        pairs_end = int(changes[-1]) + 1 if changes.size else v.size - 1
        repeated = (v[1:] == v[:-1])[:pairs_end]
        for j, pick in enumerate((v[:pairs_end] == stats.mode[i], v[:pairs_end] != stats.mode[i])):
            pairs = int(pick.sum())
            same = np.sum(repeated[pick]) / pairs if pairs else 0.0
            stats.repeat_cost[i, j] = -np.log(np.clip(same, 1.0 / (pairs + 2), 0.99))
        deseason = y - stats.hod[i][hod[rows]] - stats.dow[i][dow[rows]]
        days, med = _group_median(day[rows, None], deseason)
        stats.daily[i, days[:, 0] - day0] = med
    return stats


def long_run(rate: float) -> int:
    """The rows of an entity's long shift: about a day's (at most ``LONG_RUN_MAX``), 0 below ``LONG_MIN_RATE`` a day.

    The run must fall within about a day of a level shift's onset (an
    operator wants to hear of it that day); within that, the longer the run,
    the less its median moves by chance, so a smaller shift clears the limit.
    """
    return int(min(np.floor(rate), LONG_RUN_MAX)) if rate >= LONG_MIN_RATE else 0


def count_dispersion(v: np.ndarray, rate: float) -> float:
    """The negative-binomial dispersion ``k`` of a daily count's window values, or 0 if it is not one.

    A daily count: whole numbers >= 0 with at least one 0, at most ``COUNT_MAX_RATE``
    observations per active day (items consumed in a room since the last count), and at
    least ``COUNT_MIN_POSITIVE`` busy (non-zero) days.  ``k`` by moments of the busy
    days, var = mean + mean^2 / k, at most ``COUNT_K_MAX`` (Poisson-like), without the
    top ``COUNT_TRIM`` of them.  Vacant days are left out: they say whether a guest
    was there, not how much one takes (the channel's mean is of busy days too).
    """
    if rate > COUNT_MAX_RATE or v.size < 3 or np.any(v < 0) or np.any(v != np.round(v)) or not np.any(v == 0):
        return 0.0
    positive = v[v > 0]
    if positive.size < COUNT_MIN_POSITIVE:
        return 0.0
    # The top COUNT_TRIM of the window's busy days left out: one of the window's own spikes would
    # otherwise set the dispersion and blind the entity for the 60 days it stays in the window.
    positive = np.sort(positive)[:positive.size - max(1, int(COUNT_TRIM * positive.size))]
    mean, var = float(np.mean(positive)), float(np.var(positive, ddof=1))
    return float(min(mean * mean / (var - mean), COUNT_K_MAX)) if var > mean * (1 + 1e-3) else COUNT_K_MAX


def weekly_medians(daily: np.ndarray) -> np.ndarray:
    """Median of each 7-day block ``[j, j + 7)`` of the daily medians (NaN with fewer than 3 days)."""
    padded = np.concatenate([daily, np.full((daily.shape[0], 7), np.nan)], axis=1)
    windows = sliding_window_view(padded, 7, axis=1)[:, : daily.shape[1] + 1]
    # row_median, not np.nanmedian: the same values without the all-NaN warning, whose
    # suppression (warnings.catch_warnings) is not thread-safe and scans score on threads.
    med = row_median(windows.reshape(-1, 7)).reshape(windows.shape[:2])
    med[np.sum(~np.isnan(windows), axis=2) < 3] = np.nan
    return med
