"""The local correction only where an entity's residuals move together (``utils.ml.detector.local_view``).

The synthetic entities of ``test_evaluation_detector`` have independent
noise: training turns the correction off for them, so a spike right after
three rows that leaned its way keeps its full size.  An entity whose days
share a demand level keeps the correction.  (A model pickled before the rule:
``test_detector_day_view``'s pickle test.)
"""
from __future__ import annotations

import copy

import numpy as np

from tests.test_evaluation_detector import DAYS, T0, TRAIN_DAYS, history_before, split, synthetic
from tests.test_evaluation_detector_kinds import ENT, SD, START, base, rows_of  # noqa: F401  (base: a fixture)
from utils.ml.detector import causal, local_view
from utils.ml.detector import model as D
from utils.ml.evaluation.data import DAY, HOUR

LEAN, SPIKE = 3.0, 7.0  # noise sd: three rows before START, then START itself


def test_wanted_follows_the_lag_one_autocorrelation_of_the_residuals():
    rng = np.random.default_rng(0)
    independent = rng.normal(size=500)
    shared = np.zeros(500)
    for i in range(1, shared.size):
        shared[i] = 0.6 * shared[i - 1] + rng.normal()
    assert not local_view.wanted(independent)
    assert local_view.wanted(shared)
    assert local_view.wanted(independent[:local_view.MIN_ROWS - 1]), "too few residuals: kept, as before"
    assert local_view.wanted(np.zeros(100)), "equal residuals: kept, as before"
    spiked = independent.copy()
    spiked[100:106] = 40.0  # the window's own six-hour anomaly is clipped, not taken for shared days
    assert not local_view.wanted(spiked)


def test_combine_uses_r_alone_where_the_correction_is_off():
    r, r_local = np.array([5.0, 5.0, -5.0]), np.array([4.0, -1.0, -4.0])
    agree, magnitude = local_view.combine(r, r_local, np.array([True, True, True]))
    assert list(agree) == [True, False, True] and list(magnitude) == [4.0, 1.0, 4.0]
    agree, magnitude = local_view.combine(r, r_local, np.array([False, False, False]))
    assert list(agree) == [True, True, True] and list(magnitude) == [5.0, 5.0, 5.0]


def test_training_keeps_the_correction_only_for_an_entity_whose_days_move_together():
    e, t, v = synthetic(seed=5)
    rng = np.random.default_rng(7)
    hours = np.arange(DAYS * 24)
    demand = 1 + 0.08 * rng.normal(size=DAYS)  # a day's level (a full house), shared by its hours
    busy = 100 * (1 + 0.1 * np.sin(2 * np.pi * (hours % 24) / 24)) * demand[hours // 24] \
        * (1 + 0.01 * rng.normal(size=hours.size))
    e = np.concatenate([e, np.full(hours.size, 42)])
    t = np.concatenate([t, T0 + hours * HOUR])
    v = np.concatenate([v, np.round(busy, 3)])
    order = np.lexsort((e, t))
    train, _ = split(e[order], t[order], v[order], TRAIN_DAYS)
    model = D.train(*train, now=T0 + TRAIN_DAYS * DAY)
    on = dict(zip(model.stats.ids.tolist(), model.stats.local_on.tolist()))
    assert on == {1: False, 2: False, 3: False, 9: False, 42: True}


def _leaning_spike(data):
    e, t, v = data
    v = v.copy()
    v[rows_of(e, t, range(START - 3, START))] += LEAN * SD
    v[rows_of(e, t, [START])] += SPIKE * SD
    return e, t, v


def _at_start(model, e, t, v):
    _, rest = split(e, t, v, TRAIN_DAYS)
    result = model.score(*rest, history=history_before(e, t, v, TRAIN_DAYS))
    return result, rows_of(e, t, [START])[0] - np.searchsorted(t, T0 + TRAIN_DAYS * DAY)


def test_a_spike_after_rows_that_leaned_its_way_keeps_its_size(base):  # noqa: F811
    model, data = base
    e, t, v = _leaning_spike(data)
    i = rows_of(e, t, [START])
    f = causal.compute(model.stats, e, t, v, i)
    limit = model.calibration["dev_pos"][int(np.searchsorted(model.stats.ids, ENT))]
    assert not f.local_on[0] and f.r_local[0] < limit < f.r[0] == f.deviation()[0]
    result, row = _at_start(model, e, t, v)
    assert result.is_anomaly[row] and result.channel[row] == "deviation"
    # With the correction (as every model saved before the rule has it) the spike shrank under its limit.
    saved = copy.deepcopy(model)
    saved.stats.local_on = None
    assert causal.compute(saved.stats, e, t, v, i).deviation()[0] == f.r_local[0]
    old, row = _at_start(saved, e, t, v)
    assert old.channel[row] != "deviation"

