"""Causal per-entity features: each observation against a baseline from BEFORE it.

Per entity, learnt from the training window (:func:`fit_stats` and
:func:`fit_scale`, refreshed at every daily retrain and pickled with the model):

* **space**: an entity whose window values are all > 0 is modelled in logs
  (multiplicative noise and profiles: stock drawn down by a share, kWh that
  scale with occupancy), values clipped at half their resolution first; an
  entity with zeros (room counts) in its own units;
* **time-of-week profile** (additive in that space): hour-of-day ``P_hod``
  when the entity is observed more than twice a day and its window spans at
  least ``DAILY_MIN_DAYS`` = 3 days; plus day-of-week ``P_dow`` when it spans
  at least ``WEEKLY_MIN_DAYS`` = 21 days (3 weeks) and every weekday it works
  on was seen on at least 2 dates.  Otherwise no profile: the baseline is
  the recent level alone.  Estimated against a centred 7-day running median
  of daily medians, so trends and level shifts do not leak into it;
* **scales**: 1.4826 x MAD of the entity's own causal residuals in the
  window (mean absolute deviation x 1.2533 when MAD is 0), at least half its
  value resolution: never the metric's spread, so a 0-0.9 entity has its own.
  One for ``r``, one for ``r_local``.  An entity new in the window, with
  fewer than ``SCALE_MIN`` (10) causal residuals, gets the scale of its own
  values around their median x ``1 + 2/sqrt(n)`` (as an entity new since
  training does), not the resolution floor: measured, a new wing's rooms
  with ten counts 0-38 and the half-item floor as their scale raised most
  of the daily consumption's false incidents;
* **level window** ``m`` = observations per active day, clipped to [9, 24]
  (at least 9: with 5, a daily entity's three spike days were the median of
  its level and the next normal day a "dip", a third of the daily room
  consumption's false alerts);
* **repeat costs** = -log(share of consecutive equal values), after the
  entity's most common value (an empty room's 0) and after any other value;
  that value and its share;
* **daily medians** of the deseasonalised values of the last ``DRIFT_DAYS``
  days (the drift reference).

Per observation, from the entity's previous ``HISTORY`` (= 48) observations
(:func:`compute`):

* ``r``: (value - baseline) / scale, baseline = median of the previous
  ``m`` deseasonalised values + the profile at the observation's slot;
* ``r_local``: the same after also removing the median of the previous
  ``LOCAL`` (3) residuals -- what today's demand explains;
  the **deviation** the forest sees is the smaller of the two when they
  agree in sign and the **day view** confirms it, else 0
  (:meth:`Features.deviation`); ``r`` alone for an entity whose window
  residuals do not move together (:mod:`local_view`);
* ``r_day`` (entities seen at least 12 times a day): the row against the
  entity's row at the same time a day before, in its own scale of that
  difference; NaN where there is none (:mod:`day_view`);
* ``stuck``: number of immediately preceding observations equal to this one
  x the repeat cost for that value (minus log-probability of such a run),
  0 below ``STUCK_MIN_RUN`` repeats;
* ``shift``: (median of this row and the previous ``RUN - 1`` deseasonalised
  values - median of the ``m`` before them) / scale, 0 unless its sign is
  ``r``'s and the row has ``MIN_PRIOR + RUN - 1`` previous observations;
  ``shift_long`` the same over the entity's ``long_run`` rows (about a
  day's, at most ``state.LONG_RUN_MAX`` = 12: :func:`state.long_run`), for
  entities observed at least ``state.LONG_MIN_RATE`` (6) times a day (0 for the
  others; six rows in models saved before the run was per entity);
* ``count`` (daily counts only, see :func:`state.count_dispersion`): the
  largest over w = 1 and 3 of ``-ln P(sum of the row and its previous
  w - 1 counts >= what was seen)`` under a negative binomial with w x the
  mean of the busy (non-zero) days among the ``COUNT_LEVEL`` (14) counts
  before them and dispersion w x the entity's ``k``
  (:func:`count_surprise`); ``count_w`` is that w;
* ``drift``: weekly slope when the last ~day's level, last week's median and
  the week before's all move the same way (the smaller of the two steps, in
  scales per week; 0 when they disagree, as after a one-off level shift, and
  for entities observed at most twice a day).

An entity unknown to the model (new since training) gets no profile, a scale
from its own previous observations (inflated by ``1 + 2/sqrt(n)`` for small
samples) and no drift.  An observation with fewer than ``MIN_PRIOR`` previous
observations of its entity (10: with 5, a new room's sixth count met a
scale from five zeros) has no baseline: it is *warming up* and is never an
alert.  Timestamps are UTC: a hotel far from UTC should shift them to
local time before they get here (the profiles are by hour of day).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from utils.ml.detector import day_view, local_view
from utils.ml.detector.counts import COUNT_LEVEL, COUNT_MIN_LEVEL, COUNT_WINDOWS, count_surprise  # noqa: F401
from utils.ml.detector.state import (  # noqa: F401  (re-exported: the detector and tests use causal.*)
    DAILY_MIN_DAYS, DAY, DRIFT_DAYS, HOUR, LEVEL_MAX, LEVEL_MIN, NO_STATE, WEEKLY_MIN_DAYS, EntityStats, fit_stats,
    groups, robust_scale, row_median, slots, to_model_space, weekly_medians,
)

HISTORY = 48
MIN_PRIOR = 10  # measured: 5 let a new room's 6th count meet a scale from 5 zeros (13 of 58 false incidents)
LOCAL = 3
RUN = 3  # rows whose median the shift feature compares with the level before them
COMMON_SHARE = 0.1  # a value the entity takes this often (an empty room's 0) is never a deviation
SCALE_MIN = 10  # fewer causal residuals than this in the window: the scale comes from the values (fit_scale)
STUCK_MIN_RUN = 2  # a stuck value repeats at least twice (three equal readings): one repeat is chance


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
    shift: np.ndarray = None  # type: ignore[assignment]  # the last RUN rows' median against the level before them
    shift_long: np.ndarray = None  # type: ignore[assignment]  # the same over the entity's long_run rows
    count: np.ndarray = None  # type: ignore[assignment]  # daily counts: -log P(sum of the last w counts this high)
    count_w: np.ndarray = None  # type: ignore[assignment]  # the w of ``count`` (0: not a count)
    r_day: Optional[np.ndarray] = None  # the day view (NaN: no row a day before; None: a model without it)
    local_on: Optional[np.ndarray] = None  # the row's entity uses the local correction (None: every row does)

    def deviation(self) -> np.ndarray:
        """One signed deviation: ``r`` and ``r_local`` must agree, and the smaller one counts.

        Only for entities whose residuals move together (:mod:`local_view`;
        the others' deviation is ``r``).  A busy day (stock drawn deeper than
        the profile says) moves ``r`` but not ``r_local``; a spike, dip,
        contextual value or shift onset moves both.
        The row after such a day's rows, back at the usual level, moves both
        but not the day view (:func:`day_view.confirms`).
        The entity's most common value (an empty room's 0, if at least
        ``COMMON_SHARE`` of its window) is not rare, so never a deviation.
        """
        on = np.ones(self.r.size, dtype=bool) if self.local_on is None else self.local_on
        agree, magnitude = local_view.combine(self.r, self.r_local, on)  # r alone where the entity's is off
        agree &= ~self.common & day_view.confirms(self.r, self.r_day)
        return np.where(agree, np.sign(self.r) * magnitude, 0.0)

    def forest_input(self) -> np.ndarray:
        """The forest's input column: the deviation through sign(x) log(1 + |x|).

        Isolation Forest splits uniformly between a feature's extremes; raw
        deviations run to hundreds of scales (the window's own anomalies), so
        a 6-scale spike would sit among the bulk.  The log keeps the order and
        lets moderate deviations be isolated early.
        """
        d = self.deviation()
        return (np.sign(d) * np.log1p(np.abs(d)))[:, None]


def compute(stats: EntityStats, entity: np.ndarray, ts: np.ndarray, value: np.ndarray,
            targets: np.ndarray) -> Features:
    """Features of the rows ``targets`` (indices) from the rows before each of them in the same arrays.

    The arrays may hold any history of the same metric type, in any order;
    only rows of the same entity with an earlier timestamp (ties: earlier in
    the array's (entity, time) order) are used, at most ``HISTORY`` of them.
    """
    # Values near the float limit overflow to +-inf in the differences; what follows handles that (a
    # non-finite scale becomes the floor).  np.errstate is per thread, unlike warnings.catch_warnings.
    with np.errstate(over="ignore", invalid="ignore"):
        return _compute(stats, entity, ts, value, targets)


def _compute(stats: EntityStats, entity: np.ndarray, ts: np.ndarray, value: np.ndarray,
             targets: np.ndarray) -> Features:
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
    level = row_median(level_cols)  # NaN for a row without history (row_median never warns: see robust_scale)
    x = y_sorted[t_sorted]
    baseline = np.where(ready, level, np.nan) + season[t_sorted]
    scale = np.where(known, stats.scale[index] if stats.ids.size else 1.0, 1.0)
    live = np.flatnonzero(~known)  # entities new since training: a scale from their own previous rows
    if live.size:
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
    local = row_median(prev_resid)
    scale_local = np.where(known, stats.scale_local[index] if stats.ids.size else 1.0, scale)
    scale_local = np.where(np.isfinite(scale_local) & (scale_local > 0), scale_local, 1e-6)
    r_local = np.where(ready, (x - baseline - np.nan_to_num(local)) / scale_local, 0.0)
    r_day = day_view.compute(stats, index, known, ready, ts_sorted, t_sorted, prev, valid, y_prev,
                             x - season[t_sorted])
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
    # Shift: the median of this row and the previous RUN - 1 against the median of the m rows before
    # those, in the entity's scale.  A level shift's or a several-row spike's rows each sit near the
    # deviation limit, but together they move a median of RUN that normal noise rarely moves.
    shift = _run_shift(x - season[t_sorted], y_prev, m, scale, RUN)
    shift = np.where(ready & (n_prior >= MIN_PRIOR + RUN - 1) & np.isfinite(shift) & (np.sign(shift) == np.sign(r)),
                     shift, 0.0)
    run_long = np.where(known, stats.long_runs()[index], 0) if stats.ids.size else np.zeros(t_sorted.size, np.int64)
    shift_long = _run_shift(x - season[t_sorted], y_prev, m, scale, run_long)
    shift_long = np.where((run_long > 0) & ready & (n_prior >= MIN_PRIOR + run_long - 1) & np.isfinite(shift_long)
                          & (np.sign(shift_long) == np.sign(r)), shift_long, 0.0)
    count, count_w = np.zeros(t_sorted.size), np.zeros(t_sorted.size, dtype=np.int64)
    k = stats.count_dispersion()[index] if stats.ids.size else np.zeros(t_sorted.size)
    counts = np.flatnonzero(known & ready & (k > 0))
    if counts.size:  # the previous values matrix only for daily counts' rows: a scan's hot path
        v_prev = np.where(valid[counts], v_sorted[prev[counts]], np.nan)
        count[counts], count_w[counts] = count_surprise(v_sorted[t_sorted[counts]], v_prev, k[counts])
    local_on = np.where(known, stats.local_on[index], True) if stats.local_on is not None and stats.ids.size \
        else None
    return Features(r, r_local, stuck, drift, expected, scale, ready, known, common, shift, shift_long, count, count_w,
                    r_day, local_on)


def _run_shift(y: np.ndarray, y_prev: np.ndarray, m: np.ndarray, scale: np.ndarray, run: Any) -> np.ndarray:
    """(median of the row and its previous ``run - 1`` values - median of the ``m`` before them) / scale.

    ``run``: one length for every row, or one per row (0: no run, the result is NaN).
    """
    run = np.broadcast_to(np.asarray(run, dtype=np.int64), y.shape)
    if run.size == 0 or run.min() == run.max():  # one run for every row (the scan's hot path): slices, no gather
        width = int(run[0]) if run.size else 1
        if width <= 0:
            return np.full(y.shape, np.nan)
        last = np.column_stack([y, y_prev[:, :width - 1]])
        before = y_prev[:, width - 1:width - 1 + LEVEL_MAX].copy()
        before[np.arange(LEVEL_MAX)[None, :] >= m[:, None]] = np.nan
    else:
        width = int(run.max())
        last = np.column_stack([y, y_prev[:, :width - 1]])
        last[np.arange(width)[None, :] >= run[:, None]] = np.nan
        cols = np.maximum(run - 1, 0)[:, None] + np.arange(LEVEL_MAX)[None, :]
        before = np.take_along_axis(y_prev, np.minimum(cols, y_prev.shape[1] - 1), axis=1)
        before[(np.arange(LEVEL_MAX)[None, :] >= m[:, None]) | (cols >= y_prev.shape[1])] = np.nan
    return (row_median(last) - row_median(before)) / scale  # NaN without enough history


def fit_scale(stats: EntityStats, features: Features, entity: np.ndarray, value: Optional[np.ndarray] = None) -> None:
    """Set each entity's scale from its causal residuals and rescale ``features`` to it.

    ``features`` must have been computed with the unit scale :func:`fit_stats`
    leaves, for the rows of ``entity`` (all known to ``stats``).  With
    ``value`` (the rows' values), an entity with fewer than ``SCALE_MIN``
    causal residuals (new in the window) gets the scale of its own values
    around their median, inflated by ``1 + 2/sqrt(n)`` as an entity new since
    training does: a new suite's ten counts 0-38 must not meet the half-item
    floor as its scale.
    """
    index, known = stats.lookup(entity)
    order = np.argsort(index, kind="stable")
    bounds = np.searchsorted(index[order], np.arange(stats.ids.size + 1))
    for i in range(stats.ids.size):
        rows = order[bounds[i]:bounds[i + 1]]
        mine = rows[features.ready[rows]]
        floor = 0.5 * stats.resolution[i]
        if value is not None and mine.size < SCALE_MIN and rows.size >= 3:
            y = to_model_space(value[rows], np.full(rows.size, stats.log_floor[i]))
            young = float(robust_scale(y - np.median(y))) * (1 + 2.0 / np.sqrt(rows.size))
            stats.scale[i] = stats.scale_local[i] = max(young, floor)
            if stats.scale_day is not None:
                stats.scale_day[i] = np.nan  # too young for a day view's scale: deviations are judged without it
            continue
        for target, resid in ((stats.scale, features.r[mine]), (stats.scale_local, features.r_local[mine])):
            target[i] = max(float(robust_scale(resid - np.median(resid))) if resid.size >= 3 else floor, floor)
        if stats.scale_day is not None and features.r_day is not None:
            stats.scale_day[i] = day_view.fit_scale(features.r_day[mine], floor)
        if stats.local_on is not None:
            stats.local_on[i] = local_view.wanted(features.r[mine])
    if stats.local_on is not None:
        features.local_on = np.where(known, stats.local_on[index], True)
    new_scale = np.where(known, stats.scale[index], features.scale)
    features.r_local = features.r_local / np.where(known, stats.scale_local[index], 1.0)
    if features.r_day is not None and stats.scale_day is not None:
        features.r_day = features.r_day / np.where(known, stats.scale_day[index], np.nan)
    for name in ("r", "drift", "shift", "shift_long"):
        setattr(features, name, getattr(features, name) * features.scale / new_scale)
    features.scale = new_scale
