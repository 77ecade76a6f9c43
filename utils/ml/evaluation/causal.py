"""Causal per-entity features: each observation against a baseline from BEFORE it.

Per entity, learnt from the training window (:func:`fit_stats`, refreshed at
every daily retrain and pickled with the model):

* **time-of-week profile** (additive, in the entity's own units):
  hour-of-day ``P_hod`` when the entity is observed more than twice a day
  and its window spans at least 3 days; plus day-of-week ``P_dow`` when it
  spans at least ``WEEKLY_MIN_DAYS`` = 21 days (3 weeks) and every weekday it
  works on was seen on at least 2 dates.  Otherwise no profile: the baseline
  is the recent level alone.  Estimated against a centred 7-day running
  median of daily medians, so trends and level shifts do not leak into it;
* **scale**: 1.4826 x MAD of the entity's own causal residuals in the window
  (mean absolute deviation x 1.2533 when MAD is 0), at least half its value
  resolution: never the metric's spread, so a 0-0.9 entity has its own;
* **level window** ``m`` = observations per active day, clipped to [5, 24];
* **repeat costs** = -log(share of consecutive equal values), after the
  entity's most common value (an empty room's 0) and after any other value;
* **daily medians** of the deseasonalised values of the last ``DRIFT_DAYS``
  days (the drift reference).

Per observation, from the entity's previous ``HISTORY`` (= 48) observations
(:func:`compute`):

* ``r``: (value - baseline) / scale, baseline = median of the previous
  ``m`` deseasonalised values + the profile at the observation's slot;
* ``stuck``: number of immediately preceding observations equal to this one
  x the repeat cost for that value (minus log-probability of such a run),
  0 below ``STUCK_MIN_RUN`` repeats;
* ``drift``: weekly slope when the last ~day's level, last week's median and
  the week before's all move the same way (the smaller of the two steps, in
  scales per week; 0 when they disagree, as after a one-off level shift).

An entity unknown to the model (new since training) gets no profile, a scale
from its own previous observations (inflated for small samples) and no drift.
An observation with fewer than ``MIN_PRIOR`` previous observations of its
entity has no baseline: it is *warming up* and is never an alert.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

DAY, HOUR = 86400.0, 3600.0
HISTORY = 48
NO_STATE = np.iinfo(np.int64).min  # the id of the placeholder row of a model-less state
MIN_PRIOR = 5
LEVEL_MIN, LEVEL_MAX = 5, 24
WEEKLY_MIN_DAYS = 21.0
DAILY_MIN_DAYS = 3.0
DRIFT_DAYS = 21
LOCAL = 3
COMMON_SHARE = 0.1  # a value the entity takes this often (an empty room's 0) is never a deviation
STUCK_MIN_RUN = 2  # a stuck value repeats at least twice (three equal readings): one repeat is chance
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

    def lookup(self, entity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Index into the arrays for each entity, and whether it is known."""
        if self.ids.size == 0:
            return np.zeros(entity.size, dtype=np.int64), np.zeros(entity.size, dtype=bool)
        index = np.clip(np.searchsorted(self.ids, entity), 0, self.ids.size - 1)
        return index, self.ids[index] == entity

    def tail(self, days: int) -> "EntityStats":
        """The same state keeping only the last ``days`` daily medians (what a saved model needs)."""
        keep = self.daily[:, -days:] if self.daily.shape[1] > days else self.daily
        return EntityStats(self.ids, self.n, self.rate, self.level_m, self.hod, self.dow, self.profile, self.scale,
                           self.scale_local, self.resolution, self.repeat_cost, self.mode, self.mode_share, keep, self.day0 + self.daily.shape[1] - keep.shape[1],
                           self.log_floor)


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
    return np.where(count > 0, 0.5 * (ordered[rows, lo] + ordered[rows, hi]), np.nan)


def robust_scale(deviations: np.ndarray, axis: Optional[int] = None) -> np.ndarray:
    """1.4826 x median |d| (d already centred), else 1.2533 x mean |d|; NaNs ignored."""
    a = np.abs(deviations)
    mad = _MAD * (row_median(a) if axis == 1 and a.ndim == 2 else np.nanmedian(a, axis=axis))
    return np.where(mad > 0, mad, _MEANAD * np.nanmean(a, axis=axis))


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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # gaps of a week or more are all-NaN
        trend = np.nanmedian(sliding_window_view(grid, 7), axis=1)  # centred 7-day running median
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
    stats = EntityStats(ids.astype(np.int64), np.zeros(size, dtype=np.int64), np.zeros(size), np.zeros(size, dtype=int),
                        np.zeros((size, 24)), np.zeros((size, 7)), np.zeros(size, dtype=int), np.ones(size),
                        np.ones(size), np.zeros(size), np.zeros((size, 2)), np.zeros(size), np.zeros(size), np.full((size, n_days), np.nan), day0,
                        np.zeros(size))
    for i, rows in enumerate(np.split(order, starts[1:]) if order.size else []):
        v = value[rows]
        active = np.unique(day[rows]).size
        span = float(ts[rows[-1]] - ts[rows[0]]) / DAY
        stats.n[i] = rows.size
        stats.rate[i] = rows.size / active
        stats.level_m[i] = int(np.clip(round(stats.rate[i]), LEVEL_MIN, LEVEL_MAX))
        distinct = np.unique(v)
        stats.resolution[i] = float(np.min(np.diff(distinct))) if distinct.size > 1 else max(abs(v[0]) * 1e-3, 1e-6)
        if np.all(v > 0):  # multiplicative noise and profiles: work with logs (see the module docstring)
            stats.log_floor[i] = 0.5 * stats.resolution[i]
            stats.resolution[i] = stats.resolution[i] / float(np.median(v))
        y = to_model_space(v, np.full(v.size, stats.log_floor[i]))
        stats.hod[i], stats.dow[i], stats.profile[i] = _profile(y, hod[rows], dow[rows], day[rows], span,
                                                                stats.rate[i])
        values, counts = np.unique(v, return_counts=True)
        stats.mode[i] = values[np.argmax(counts)]
        stats.mode_share[i] = counts.max() / v.size
        for j, pick in enumerate((v[:-1] == stats.mode[i], v[:-1] != stats.mode[i])):
            pairs = int(pick.sum())
            same = np.sum((v[1:] == v[:-1])[pick]) / pairs if pairs else 0.0
            stats.repeat_cost[i, j] = -np.log(np.clip(same, 1.0 / (pairs + 2), 0.99))
        deseason = y - stats.hod[i][hod[rows]] - stats.dow[i][dow[rows]]
        days, med = _group_median(day[rows, None], deseason)
        stats.daily[i, days[:, 0] - day0] = med
    return stats


@dataclass
class Features:
    r: np.ndarray
    r_local: np.ndarray
    stuck: np.ndarray
    drift: np.ndarray
    baseline: np.ndarray
    scale: np.ndarray
    ready: np.ndarray  # False: warming up (fewer than MIN_PRIOR previous observations)
    known: np.ndarray  # the entity has state in the model
    common: np.ndarray  # the value is the entity's most common one (>= COMMON_SHARE of its window)

    def deviation(self) -> np.ndarray:
        """One signed deviation: ``r`` and ``r_local`` must agree, and the smaller one counts.

        A busy day (stock drawn deeper than the profile says) moves ``r`` but
        not ``r_local``; a spike, dip, contextual value or shift onset moves both.
        The entity's most common value (an empty room's 0, if at least
        ``COMMON_SHARE`` of its window) is not rare, so never a deviation.
        """
        agree = (np.sign(self.r) == np.sign(self.r_local)) & ~self.common
        return np.where(agree, np.sign(self.r) * np.minimum(np.abs(self.r), np.abs(self.r_local)), 0.0)

    def forest_input(self) -> np.ndarray:
        """The forest's input column: the deviation through sign(x) log(1 + |x|).

        Isolation Forest splits uniformly between a feature's extremes; raw
        deviations run to hundreds of scales (the window's own anomalies), so
        a 6-scale spike would sit among the bulk.  The log keeps the order and
        lets moderate deviations be isolated early.
        """
        d = self.deviation()
        return (np.sign(d) * np.log1p(np.abs(d)))[:, None]


def weekly_medians(daily: np.ndarray) -> np.ndarray:
    """Median of each 7-day block ``[j, j + 7)`` of the daily medians (NaN with fewer than 3 days)."""
    padded = np.concatenate([daily, np.full((daily.shape[0], 7), np.nan)], axis=1)
    windows = sliding_window_view(padded, 7, axis=1)[:, : daily.shape[1] + 1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows
        med = np.nanmedian(windows, axis=2)
    med[np.sum(~np.isnan(windows), axis=2) < 3] = np.nan
    return med


def compute(stats: EntityStats, entity: np.ndarray, ts: np.ndarray, value: np.ndarray,
            targets: np.ndarray) -> Features:
    """Features of the rows ``targets`` (indices) from the rows before each of them in the same arrays.

    The arrays may hold any history of the same metric type, in any order;
    only rows of the same entity with an earlier timestamp (ties: earlier in
    the array's (entity, time) order) are used, at most ``HISTORY`` of them.
    """
    order, _ids, starts, inverse = groups(entity, ts)
    position = np.empty(order.size, dtype=np.int64)
    position[order] = np.arange(order.size)
    t_sorted = position[np.asarray(targets, dtype=np.int64)]
    group_start = starts[inverse[t_sorted]]
    prev = t_sorted[:, None] - np.arange(1, HISTORY + 1)[None, :]
    valid = prev >= group_start[:, None]
    prev = np.where(valid, prev, 0)
    v_sorted, ts_sorted = value[order], ts[order]
    e_t = entity[order][t_sorted]
    hod, dow, day = slots(ts_sorted)
    index, known = stats.lookup(e_t)
    all_index, all_known = stats.lookup(entity[order])
    season = np.where(all_known, stats.hod[all_index, hod] + stats.dow[all_index, dow], 0.0)
    log_floor = np.where(all_known, stats.log_floor[all_index], 0.0)
    y_sorted = to_model_space(v_sorted, log_floor)
    y_prev = np.where(valid, (y_sorted - season)[prev], np.nan)
    n_prior = valid.sum(axis=1)
    m = np.where(known, stats.level_m[index], LEVEL_MAX)
    level_cols = y_prev[:, :LEVEL_MAX].copy()
    level_cols[np.arange(LEVEL_MAX)[None, :] >= m[:, None]] = np.nan
    ready = n_prior >= MIN_PRIOR
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # rows without history are all-NaN
        level = row_median(level_cols)
    x = y_sorted[t_sorted]
    baseline = np.where(ready, level, np.nan) + season[t_sorted]
    scale = np.where(known, stats.scale[index] if stats.ids.size else 1.0, 1.0)
    live = np.flatnonzero(~known)  # entities new since training: a scale from their own previous rows
    if live.size:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            y_live = y_prev[live]
            live_scale = robust_scale(y_live - row_median(y_live)[:, None], axis=1)
        steps = np.diff(np.sort(y_live, axis=1), axis=1)
        distinct_step = np.min(np.where(steps > 0, steps, np.inf), axis=1)  # NaN steps compare False
        floor = np.where(np.isfinite(distinct_step), 0.5 * distinct_step, 1e-6)
        # Small samples: inflate, so a new entity's first readings do not meet a hair trigger.
        scale[live] = np.maximum(live_scale * (1 + 2.0 / np.sqrt(np.maximum(n_prior[live], 1))), floor)
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1e-6)
    r = np.where(ready, (x - baseline) / scale, 0.0)
    # The same deviation after the entity's last LOCAL observations' own deviations (median of
    # 3): what today's level of demand explains (a busier day depletes stock deeper) is removed.
    prev_resid = np.where(valid[:, :LOCAL], y_prev[:, :LOCAL] - level[:, None], np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        local = row_median(prev_resid)
    scale_local = np.where(known, stats.scale_local[index] if stats.ids.size else 1.0, scale)
    scale_local = np.where(np.isfinite(scale_local) & (scale_local > 0), scale_local, 1e-6)
    r_local = np.where(ready, (x - baseline - np.nan_to_num(local)) / scale_local, 0.0)
    eq = valid & (v_sorted[prev] == v_sorted[t_sorted][:, None])  # raw values: a stuck reading repeats exactly
    run = np.cumprod(eq, axis=1).sum(axis=1)
    live_cost = np.zeros(t_sorted.size)
    if live.size:
        same = np.sum(valid[live, 1:] & (y_prev[live, 1:] == y_prev[live, :-1]), axis=1) \
            / np.maximum(n_prior[live] - 1, 1)
        live_cost[live] = -np.log(np.clip(same, 1.0 / (n_prior[live] + 2), 0.99))
    own_cost = stats.repeat_cost[index, np.where(v_sorted[t_sorted] == stats.mode[index], 0, 1)] \
        if stats.ids.size else np.zeros(t_sorted.size)
    stuck = np.where(ready & (run >= STUCK_MIN_RUN), run * np.where(known, own_cost, live_cost), 0.0)
    drift = np.zeros(t_sorted.size)
    if stats.ids.size and stats.daily.shape[1]:
        weekly = weekly_medians(stats.daily)
        col1 = day[t_sorted] - 7 - stats.day0
        col2 = col1 - 7
        # Daily-cadence entities (one count a day) are too noisy for a weekly slope: no drift test.
        ok = known & ready & (col2 >= 0) & (col1 < weekly.shape[1]) & (stats.rate[index] > 2)
        w1 = np.where(ok, weekly[index, np.clip(col1, 0, weekly.shape[1] - 1)], np.nan)
        w2 = np.where(ok, weekly[index, np.clip(col2, 0, weekly.shape[1] - 1)], np.nan)
        d1, d2 = (level - w1) / 3.5, (w1 - w2) / 7.0
        agree = np.isfinite(d1) & np.isfinite(d2) & (np.sign(d1) == np.sign(d2))
        drift = np.where(agree, np.sign(d1) * np.minimum(np.abs(d1), np.abs(d2)) * 7.0 / scale, 0.0)
    expected = np.where(log_floor[t_sorted] > 0, np.exp(np.minimum(baseline, 700.0)), baseline)
    common = known & (v_sorted[t_sorted] == stats.mode[index]) & (stats.mode_share[index] >= COMMON_SHARE) \
        if stats.ids.size else np.zeros(t_sorted.size, dtype=bool)
    return Features(r, r_local, stuck, drift, expected, scale, ready, known, common)


def fit_scale(stats: EntityStats, features: Features, entity: np.ndarray) -> None:
    """Set each entity's scale from its causal residuals and rescale ``features`` to it.

    ``features`` must have been computed with the unit scale :func:`fit_stats`
    leaves, for the rows of ``entity`` (all known to ``stats``).
    """
    index, known = stats.lookup(entity)
    order = np.argsort(index, kind="stable")
    bounds = np.searchsorted(index[order], np.arange(stats.ids.size + 1))
    for i in range(stats.ids.size):
        mine = order[bounds[i]:bounds[i + 1]]
        mine = mine[features.ready[mine]]
        floor = 0.5 * stats.resolution[i]
        for target, resid in ((stats.scale, features.r[mine]), (stats.scale_local, features.r_local[mine])):
            target[i] = max(float(robust_scale(resid - np.median(resid))) if resid.size >= 3 else floor, floor)
    new_scale = np.where(known, stats.scale[index], features.scale)
    features.r_local = features.r_local / np.where(known, stats.scale_local[index], 1.0)
    for name in ("r", "drift"):
        setattr(features, name, getattr(features, name) * features.scale / new_scale)
    features.scale = new_scale
