"""Each anomaly kind the simulator injects is found by the detector on a small hand-made case.

One calm hourly entity (level 50, 2 % noise, a +-10 % daily profile) among
the synthetic ones of ``test_evaluation_detector``; each case changes a
copy of its scored days and checks that an alert falls in the changed rows.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest

from tests.test_evaluation_detector import CALM, DAYS, T0, TRAIN_DAYS, history_before, split, synthetic
from utils.ml.detector import model as D
from utils.ml.evaluation.data import DAY, HOUR

ENT = 3
LEVEL, NOISE = CALM[ENT]
SD = LEVEL * NOISE
START = TRAIN_DAYS * 24 + 3 * 24 + 13  # an hour of day 43 (a Thursday), inside the scored days


@pytest.fixture(scope="module")
def base():  # shared: a test that changes the model changes a deep copy
    e, t, v = synthetic(seed=5)
    train, _ = split(e, t, v, TRAIN_DAYS)
    model = D.train(*train, now=T0 + TRAIN_DAYS * DAY)
    assert model is not None
    return model, (e, t, v)


def rows_of(e, t, hours):
    return np.array([np.flatnonzero((e == ENT) & (t == T0 + h * HOUR))[0] for h in hours])


def scored(model, e, t, v):
    _, rest = split(e, t, v, TRAIN_DAYS)
    result = model.score(*rest, history=history_before(e, t, v, TRAIN_DAYS))
    offset = np.searchsorted(t, T0 + TRAIN_DAYS * DAY)
    return result, offset


def alerts_in(model, data, changed_hours, label):
    e, t, v = data
    result, offset = scored(model, e, t, v)
    rows = rows_of(e, t, changed_hours) - offset
    assert result.is_anomaly[rows].any(), f"{label}: no alert in the changed rows"
    others = result.is_anomaly.copy()
    others[rows] = False
    return result, rows, int(others[(e[offset:] == ENT)].sum())


@pytest.mark.parametrize("kind,sign", [("spike", 1), ("dip", -1)])
def test_spike_and_dip(base, kind, sign):
    model, (e, t, v) = base
    v = v.copy()
    v[rows_of(e, t, [START])] += sign * 8 * SD
    result, rows, false = alerts_in(model, (e, t, v), [START], kind)
    assert result.channel[rows[0]] == "deviation" and false <= 1


def test_level_shift_is_found_within_a_day_of_its_onset(base):
    model, (e, t, v) = base
    v = v.copy()
    after = np.flatnonzero((e == ENT) & (t >= T0 + START * HOUR))
    v[after] *= 1 + 6 * NOISE  # a new stocking policy: 6 noise sd higher from now on
    alerts_in(model, (e, t, v), range(START, START + 24), "level shift")


def test_contextual_value_from_the_other_half_of_the_day(base):
    model, (e, t, v) = base
    v = v.copy()
    hour = START - 13 + 6  # 06:00, the profile's top; its value moved to 18:00, the bottom
    i, j = rows_of(e, t, [hour, hour + 12])
    v[j] = v[i]
    alerts_in(model, (e, t, v), [hour + 12], "contextual")


def test_stuck_reading(base):
    model, (e, t, v) = base
    v = v.copy()
    hours = list(range(START, START + 12))
    v[rows_of(e, t, hours)] = v[rows_of(e, t, [START - 1])[0]]
    result, rows, _ = alerts_in(model, (e, t, v), hours, "stuck")
    assert "stuck" in set(result.channel[rows[result.is_anomaly[rows]]])


def test_several_moderate_rows_are_found_by_the_shift_channel(base):
    """Three rows each below the deviation limit, together past the shift limit: the shift channel fires.

    On this calm entity the trained shift limit is above the deviation limit
    (a run that high is caught row by row); the case lowers it to half the
    deviation limit to check the channel itself: the median of the last
    three rows against the level before them.
    """
    model, (e, t, v) = copy.deepcopy(base)
    i = np.searchsorted(model.stats.ids, ENT)
    dev_limit = model.calibration["dev_pos"][i]
    model.calibration["shift_pos"] = model.calibration["shift_pos"].copy()
    model.calibration["shift_pos"][i] = 0.5 * dev_limit / D.SHIFT_MARGIN
    v = v.copy()
    hours = [START, START + 1, START + 2]
    v[rows_of(e, t, hours)] *= np.exp(0.75 * dev_limit * model.stats.scale[i])  # logs: 0.75 limits up
    result, rows, false = alerts_in(model, (e, t, v), hours, "shift")
    assert not result.is_anomaly[rows[0]], "the first row alone is below both limits"
    assert set(result.channel[rows[1:]]) == {"shift"} and false <= 1


def test_drift_channel_is_off_and_models_without_shift_limits_still_score(base):
    model, (e, t, v) = base
    result, _ = scored(model, e, t, v)
    assert "drift" not in set(result.channel[result.is_anomaly])
    old = D.TrainedDetector(model.stats, model.forest, {k: x for k, x in model.calibration.items()
                                                         if not k.startswith("shift")},
                            {k: x for k, x in model.metric.items() if not k.startswith("shift")},
                            D.DetectorSettings(), model.trained_until, model.samples)
    before, _ = scored(old, e, t, v)
    assert "shift" not in set(before.channel[before.is_anomaly])
    assert np.array_equal(before.is_anomaly & (result.channel != "shift"), before.is_anomaly)


def test_a_level_shift_below_both_row_limits_is_found_by_the_long_shift(base):
    """A lasting step of 0.75 deviation limits: no row and no run of three is past its limit, a day's rows are.

    The case makes the three-row shift limit unreachable and sets the
    long one to half the deviation limit, to check the long shift itself
    (median of the last twelve rows of this hourly entity against the level
    before them); a model saved without its limits finds nothing there.
    """
    model, (e, t, v) = copy.deepcopy(base)
    i = np.searchsorted(model.stats.ids, ENT)
    dev_limit = model.calibration["dev_pos"][i]
    for key, limit in (("shift_pos", 1e9), ("shift_long_pos", 0.5 * dev_limit / D.LONG_MARGIN)):
        model.calibration[key] = model.calibration[key].copy()
        model.calibration[key][i] = limit
    v = v.copy()
    hours = list(range(START, START + 24))
    v[np.flatnonzero((e == ENT) & (t >= T0 + START * HOUR))] *= np.exp(0.75 * dev_limit * model.stats.scale[i])
    result, rows, _ = alerts_in(model, (e, t, v), hours, "long shift")
    first = int(np.flatnonzero(result.is_anomaly[rows])[0])
    assert first >= 3 and result.channel[rows[first]] == "shift"
    old = D.TrainedDetector(model.stats, model.forest, {k: x for k, x in model.calibration.items()
                                                         if not k.startswith("shift_long")},
                            model.metric, D.DetectorSettings(), model.trained_until, model.samples)
    before, _ = scored(old, e, t, v)
    assert not before.is_anomaly[rows[:first + 1]].any()


@pytest.mark.parametrize("per_day, run", [(24, 12), (16, 12), (8, 8), (6, 6), (4, 0)])
def test_the_long_shift_is_the_median_of_about_a_days_rows(per_day, run):
    """An entity seen ``per_day`` times a day: its long shift is over ``run`` rows (a day's, at most 12).

    On a ramp (``y`` rising by ``b`` a row, in the model's log space, scale 1)
    the median of the last ``run`` rows minus the median of the ``m`` before
    them is ``b (run + m) / 2``; an entity seen fewer than six times a day has
    none (0).  A model saved before the run was per entity (``long_run`` None)
    keeps the six rows it was calibrated for.
    """
    step, b = DAY / per_day, 0.01
    calm = np.arange(3 * per_day)  # three whole days (rate per_day), spanning less than a daily profile needs
    stats = D.causal.fit_stats(np.full(calm.size, 1), T0 + calm * step, np.full(calm.size, 50.0))
    m = int(stats.level_m[0])
    ramp = np.arange(60)
    e, t, v = np.full(ramp.size, 1), T0 + (calm.size + ramp) * step, np.exp(4.0 + b * ramp)
    last = np.array([ramp.size - 1])
    got = D.causal.compute(stats, e, t, v, last).shift_long[0]
    assert int(stats.long_run[0]) == run
    assert got == pytest.approx(b * (run + m) / 2 if run else 0.0, rel=1e-9)
    saved = copy.deepcopy(stats)
    saved.long_run = None
    old = D.causal.compute(saved, e, t, v, last).shift_long[0]
    assert old == pytest.approx(b * (6 + m) / 2 if per_day >= 6 else 0.0, rel=1e-9)


@pytest.mark.parametrize("saved_with_six_rows, margin", [(False, D.LONG_MARGIN), (True, D.LONG_MARGIN_SIX_ROWS)])
def test_the_long_shift_margin_is_the_one_its_run_was_measured_with(base, saved_with_six_rows, margin):
    """A day's rows alert beyond 1.4 limits, a model saved with six rows beyond the 1.25 it had.

    The long limit is set so that the step's largest long shift is 1.32
    limits: past 1.25, short of 1.4.  Only the long channel can fire (the
    step is 0.75 deviation limits, the three-row limit unreachable).
    """
    model, (e, t, v) = copy.deepcopy(base)
    if saved_with_six_rows:
        model.stats.long_run = None
    i = np.searchsorted(model.stats.ids, ENT)
    v = v.copy()
    start = np.flatnonzero((e == ENT) & (t >= T0 + START * HOUR))
    v[start] *= np.exp(0.75 * model.calibration["dev_pos"][i] * model.stats.scale[i])
    _, rest = split(e, t, v, TRAIN_DAYS)
    hist = history_before(e, t, v, TRAIN_DAYS)
    E, T, V, targets = D._combine(*rest, hist)
    mine = (E[targets] == ENT) & (T[targets] >= T0 + START * HOUR) & (T[targets] < T0 + (START + 24) * HOUR)
    largest = float(np.max(D.causal.compute(model.stats, E, T, V, targets).shift_long[mine]))
    model.calibration["shift_pos"] = np.full_like(model.calibration["shift_pos"], 1e9)
    model.calibration["shift_long_pos"] = model.calibration["shift_long_pos"].copy()
    model.calibration["shift_long_pos"][i] = largest / 1.32
    result = model.score(*rest, history=hist)
    fired = result.is_anomaly[mine]
    assert largest > 0 and not (result.is_anomaly[mine] & (result.channel[mine] == "deviation")).any()
    assert fired.any() == (1.32 > margin)
    assert set(result.channel[mine][fired]) <= {"shift"}
