"""Daily counts, stuck runs across retrains, short level windows and tail-shaped limits of the detector.

The cases are small and hand-made; the walk-forward numbers these changes
moved are in the README (``python -m utils.ml.evaluation``).
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
from scipy.stats import nbinom

from utils.ml.detector import causal
from utils.ml.detector import model as D
from utils.ml.detector.calibration import _limits, _shaped_limits, tail_power
from utils.ml.detector.state import count_dispersion, fit_stats

T0 = 1_736_121_600.0  # 2025-01-06 00:00 UTC, a Monday
DAY = 86400.0
ROOMS, DAYS, TRAIN_DAYS = 30, 90, 60


def rooms(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Items consumed per room and day, counted at 11:00: vacant days 0, occupied ones negative binomial."""
    rng = np.random.default_rng(seed)
    entity, ts, value = [], [], []
    for room in range(ROOMS):
        rate = rng.uniform(1.0, 6.0)
        occupied = rng.random(DAYS) < 0.7
        lam = rng.gamma(2.5, rate / 2.5, DAYS)  # gamma-Poisson: negative binomial with k = 2.5
        entity.append(np.full(DAYS, 100 + room))
        ts.append(T0 + np.arange(DAYS) * DAY + 11 * 3600)
        value.append(np.where(occupied, rng.poisson(lam), 0).astype(float))
    e, t, v = np.concatenate(entity), np.concatenate(ts), np.concatenate(value)
    order = np.lexsort((e, t))
    return e[order], t[order], v[order]


# The budget these rooms were measured at (1e-3 a side).  At the default since the pooled tail shape
# (0.003), the deviation channel alone also reaches the 1e-4 days of the first test.
SETTINGS = D.DetectorSettings(false_alerts_per_entity_day=0.002)


def trained(e, t, v, day: int) -> D.TrainedDetector:
    keep = t < T0 + day * DAY
    model = D.train(e[keep], t[keep], v[keep], SETTINGS, now=T0 + day * DAY)
    assert model is not None
    return model


def score_day(model, e, t, v, day: int):
    past = t < T0 + day * DAY
    now = past ^ (t < T0 + (day + 1) * DAY)
    idx = D.recent_history(e[past], t[past])
    return model.score(e[now], t[now], v[now], history=(e[past][idx], t[past][idx], v[past][idx])), np.flatnonzero(now)


def test_count_dispersion_is_only_for_daily_whole_counts_with_zeros():
    rng = np.random.default_rng(1)
    counts = np.where(rng.random(60) < 0.7, rng.poisson(rng.gamma(2.5, 1.6, 60)), 0).astype(float)
    assert count_dispersion(counts, rate=1.0) > 0
    assert count_dispersion(counts + 0.5, rate=1.0) == 0  # not whole numbers
    assert count_dispersion(counts + 1, rate=1.0) == 0  # no zeros: a level, not a count of events
    assert count_dispersion(counts, rate=24.0) == 0  # hourly: its profile is not a count's
    spiked = counts.copy()
    spiked[10] = 90.0  # one of the window's own spikes
    busy = spiked[spiked > 0]
    untrimmed = busy.mean() ** 2 / (busy.var(ddof=1) - busy.mean())  # what the spike alone would make of k
    assert count_dispersion(spiked, 1.0) > 3 * untrimmed  # the top busy days are left out: not blinded


def test_count_surprise_is_the_negative_binomial_tail_of_one_and_of_three_days():
    k = np.array([2.0, 2.0, 0.0])
    history = np.array([3, 0, 1, 4, 0, 2, 5, 0, 3, 1, 0, 2, 4, 1, 0, 3, 2], dtype=float)
    v_prev = np.tile(history, (3, 1))
    x = np.array([14.0, 3.0, 14.0])
    surprise, w = causal.count_surprise(x, v_prev, k)

    def tail(total, base, days):  # the mean of the base's busy (non-zero) days, times the days summed
        mu = base[base > 0].mean() * days
        return -np.log(nbinom.sf(total - 1, days * 2.0, days * 2.0 / (days * 2.0 + mu)))

    one = tail(14.0, history[:causal.COUNT_LEVEL], 1)
    three = tail(14.0 + history[0] + history[1], history[2:2 + causal.COUNT_LEVEL], 3)
    assert surprise[0] == pytest.approx(max(one, three)) and w[0] == (1 if one >= three else 3)
    assert surprise[1] < surprise[0]
    assert surprise[2] == 0 and w[2] == 0  # not a count: no surprise


def test_rooms_high_days_are_found_by_the_count_channel_and_old_models_still_score():
    """A day at tail probability 1e-4 for its room (budget: 1e-3 a side): beyond the row limits of 60 days.

    Measured on these rooms: the deviation channel alone misses all three
    (its tail comes from each room's own 60 days); the negative binomial of
    the room's busy days finds them.
    """
    e, t, v = rooms()
    model = trained(e, t, v, TRAIN_DAYS)
    day = TRAIN_DAYS + 5
    v = v.copy()
    spikes = []
    for room in (101, 107, 115):
        row = int(np.flatnonzero((e == room) & (t == T0 + day * DAY + 11 * 3600))[0])
        before = v[(e == room) & (t < t[row])][-causal.COUNT_LEVEL:]
        mu = before[before > 0].mean()
        v[row] = float(nbinom.ppf(1 - 1e-4, 2.5, 2.5 / (2.5 + mu)))
        spikes.append(row)
    result, rows = score_day(model, e, t, v, day)
    at = np.flatnonzero(np.isin(rows, spikes))
    assert result.is_anomaly[at].all() and set(result.channel[at]) == {"deviation"}
    # Clean rooms over the scored month: about the budget of false alerts per room-day, not more.
    alerts = sum(int(score_day(model, e, t, v, d)[0].is_anomaly.sum()) for d in range(TRAIN_DAYS, DAYS) if d != day)
    assert alerts <= 0.01 * ROOMS * (DAYS - TRAIN_DAYS - 1)
    # A model saved before the count channel (no count state, no count limits) scores as it did.
    old = copy.deepcopy(model)
    old.stats.count_k = None
    old.stats.local_on = None  # nor the local rule, which came later (utils.ml.detector.local_view)
    del old.calibration["count"], old.metric["count"]
    legacy, _ = score_day(old, e, t, v, day)
    assert legacy.is_anomaly.size == rows.size and not legacy.is_anomaly[at].any()


@pytest.mark.parametrize("room,value", [(109, 5.0), (112, 3.0), (118, 3.0)])
def test_a_stuck_count_is_found_although_each_retrain_takes_its_days_into_the_window(room, value):
    """Retrained daily, a stuck room used to vouch for itself: each stuck day made repeats cheaper.

    Measured on these rooms: with the trailing run counted in the repeat
    costs, none of the three eight-day runs is ever an alert.
    """
    e, t, v = rooms(seed=2)
    mine = np.flatnonzero(e == room)
    v = v.copy()
    stuck = mine[(t[mine] >= T0 + 62 * DAY) & (t[mine] < T0 + 70 * DAY)]
    v[stuck] = value
    found = False
    for day in range(62, 70):
        result, rows = score_day(trained(e, t, v, day), e, t, v, day)
        mask = np.isin(rows, stuck)
        found |= bool(np.any(result.is_anomaly[mask] & (result.channel[mask] == "stuck")))
    assert found


def test_the_run_still_going_at_the_windows_end_does_not_set_repeat_costs():
    rng = np.random.default_rng(4)
    body = np.where(rng.random(200) < 0.4, 0.0, rng.integers(1, 40, 200).astype(float))
    ts = T0 + np.arange(206) * 3600.0
    with_run = np.r_[body, np.full(6, 7.0)]
    without = np.r_[body, 7.0]  # the same window, the run cut to its first reading
    a = fit_stats(np.zeros(206, dtype=np.int64), ts, with_run)
    b = fit_stats(np.zeros(201, dtype=np.int64), ts[:201], without)
    assert a.mode[0] == b.mode[0] == 0.0
    assert a.repeat_cost[0] == pytest.approx(b.repeat_cost[0])


def test_a_daily_entitys_next_day_after_a_three_day_spike_is_not_a_dip():
    """The level is the median of at least LEVEL_MIN (9) previous days: three spike days cannot move it."""
    rng = np.random.default_rng(5)
    v = np.round(10 + rng.normal(0, 0.5, 40), 2)
    v[30:33] = 30.0
    e, t = np.zeros(40, dtype=np.int64), T0 + np.arange(40) * DAY
    stats = fit_stats(e[:30], t[:30], v[:30])
    stats.scale[:] = stats.scale_local[:] = 0.05  # in logs: the noise is 5 % of the level
    f = causal.compute(stats, e, t, v, np.array([33]))
    assert abs(f.r[0]) < 3 and abs(f.deviation()[0]) < 3


def test_tail_power_is_one_for_an_exponential_tail_and_more_for_a_gaussian():
    rng = np.random.default_rng(6)
    assert tail_power(rng.exponential(1.0, 50_000), 0.02) == pytest.approx(1.0, abs=0.1)
    assert tail_power(np.abs(rng.standard_t(2, 50_000)), 0.02) == 1.0  # heavier: never below exponential
    assert tail_power(rng.normal(0, 1, 50_000), 0.02) > 1.3
    assert tail_power(rng.normal(0, 1, 200), 0.02) == 1.0  # too few rows in the tail to judge: unshaped


def test_shaped_limits_keep_a_gaussian_deviations_false_alert_rate_near_its_budget():
    rng = np.random.default_rng(7)
    window = rng.normal(0, 1, 60_000)
    index, size = np.zeros(window.size, dtype=np.int64), 1
    n, w = np.array([float(window.size)]), np.array([1.0])
    alpha = np.array([1e-4])
    shaped, _ = _shaped_limits(window, index, size, n, w, 0.02, alpha, 1e-4)
    plain, _ = _limits(window, index, size, n, w, 0.02, alpha, 1e-4)
    assert shaped[0] < plain[0]  # the exponential extrapolation of a Gaussian tail is too cautious
    fresh = rng.normal(0, 1, 2_000_000)
    rate = float(np.mean(fresh > shaped[0]))
    assert rate <= 3 * alpha[0] / 2  # each side gets half the budget
    assert rate >= alpha[0] / 2 / 10  # and the limit is not far out either
