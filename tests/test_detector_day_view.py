"""The day view (``utils.ml.detector.day_view``): a deviation counts only when the same time a day before agrees.

The calm hourly entity of ``test_evaluation_detector_kinds`` (level 50, 2 %
noise): its 20 hours before a chosen hour are moved down, as a holiday's
deeper draw moves stock until the restock; the chosen hour is back at the
usual level (exactly its value a day before, so the day view's own noise
cannot pass the veto by chance).  Against the 24-row level median that hour
is a spike; against the same hour a day before it is ordinary.
"""
from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

from tests.test_evaluation_detector import T0, TRAIN_DAYS, history_before, split
from tests.test_evaluation_detector_kinds import ENT, SD, START, base, rows_of  # noqa: F401  (base: a fixture)
from utils.ml.detector import causal, day_view
from utils.ml.detector import model as D
from utils.ml.evaluation.data import DAY, HOUR

LOWERED = 20  # hours before START moved down
DEPTH = 8  # noise sd


def _lowered_then_back(data):
    e, t, v = data
    v = v.copy()
    v[rows_of(e, t, range(START - LOWERED, START))] -= DEPTH * SD
    v[rows_of(e, t, [START])] = v[rows_of(e, t, [START - 24])]
    return e, t, v


def _score_at(model, e, t, v, hours):
    _, rest = split(e, t, v, TRAIN_DAYS)
    result = model.score(*rest, history=history_before(e, t, v, TRAIN_DAYS))
    offset = np.searchsorted(t, T0 + TRAIN_DAYS * DAY)
    return result, rows_of(e, t, hours) - offset


def test_a_row_back_at_its_usual_level_is_not_a_spike_and_was_one_without_the_view(base):  # noqa: F811
    model, data = base
    e, t, v = _lowered_then_back(data)
    # Only the first hour back: the next ones move the median of three, which the shift channel
    # judges (a level that comes back is a level that moved; the view is the deviation's).
    result, rows = _score_at(model, e, t, v, [START])
    assert not result.is_anomaly[rows[0]], "the hour back at the usual level was an alert"
    saved = copy.deepcopy(model)
    saved.stats.scale_day = None  # a model saved before the day view
    old, rows = _score_at(saved, e, t, v, [START])
    assert old.is_anomaly[rows[0]] and old.channel[rows[0]] == "deviation"
    # The drop itself is still found, with or without the view.
    first, low = _score_at(model, e, t, v, range(START - LOWERED, START))
    assert first.is_anomaly[low].any()


def test_a_spike_after_a_normal_day_passes_the_view(base):  # noqa: F811
    model, (e, t, v) = base
    v = v.copy()
    v[rows_of(e, t, [START])] += 8 * SD
    result, rows = _score_at(model, e, t, v, [START])
    assert result.is_anomaly[rows[0]] and result.channel[rows[0]] == "deviation"
    # Its day view says the spike too: about its r, far past the veto.
    _, rest = split(e, t, v, TRAIN_DAYS)
    E, T, V, targets = D._combine(*rest, history_before(e, t, v, TRAIN_DAYS))
    f = causal.compute(model.stats, E, T, V, targets)
    row = np.flatnonzero((E[targets] == ENT) & (T[targets] == T0 + START * HOUR))[0]
    assert f.r_day[row] > 0.5 * f.r[row] > day_view.VETO


def test_the_view_needs_a_row_a_day_before_and_an_hourly_entity(base):  # noqa: F811
    model, (e, t, v) = base
    i = int(np.searchsorted(model.stats.ids, ENT))
    assert np.isfinite(model.stats.scale_day[i]) and model.stats.scale_day[i] > 0
    # Drop the row exactly a day before START (and 30 min either side has none): no view for START.
    keep = ~((e == ENT) & (t == T0 + (START - 24) * HOUR))
    e2, t2, v2 = e[keep], t[keep], v[keep]
    _, rest = split(e2, t2, v2, TRAIN_DAYS)
    E, T, V, targets = D._combine(*rest, history_before(e2, t2, v2, TRAIN_DAYS))
    f = causal.compute(model.stats, E, T, V, targets)
    at = (E[targets] == ENT) & (T[targets] == T0 + START * HOUR)
    nxt = (E[targets] == ENT) & (T[targets] == T0 + (START + 1) * HOUR)
    assert np.isnan(f.r_day[at]).all() and np.isfinite(f.r_day[nxt]).all()
    # An entity seen fewer than MIN_RATE times a day has no view.
    slow = copy.deepcopy(model)
    slow.stats.rate[i] = day_view.MIN_RATE - 1
    assert np.isnan(causal.compute(slow.stats, E, T, V, targets).r_day[nxt]).all()


@pytest.mark.parametrize("r_day, counts", [(np.nan, True), (3.0, True), (day_view.VETO, True),
                                           (0.9 * day_view.VETO, False), (0.0, False), (-4.0, False)])
def test_the_veto_rule(r_day, counts):
    """r = 5, r_local = 4: the deviation is 4 unless the day view contradicts it (below VETO on r's side)."""
    f = causal.Features(r=np.array([5.0, -5.0]), r_local=np.array([4.0, -4.0]), stuck=np.zeros(2),
                        drift=np.zeros(2), baseline=np.zeros(2), scale=np.ones(2), ready=np.ones(2, bool),
                        known=np.ones(2, bool), common=np.zeros(2, bool), r_day=np.array([r_day, -r_day]))
    assert list(f.deviation()) == ([4.0, -4.0] if counts else [0.0, 0.0])
    f.r_day = None
    assert list(f.deviation()) == [4.0, -4.0]


@pytest.mark.parametrize("field", ["scale_day", "local_on"])  # the day view; the local rule (local_view)
def test_a_pickled_model_without_the_view_still_loads_and_scores(base, field):  # noqa: F811
    model, data = base
    saved = copy.deepcopy(model)
    del saved.stats.__dict__[field]  # the state as pickled before the field existed
    loaded = pickle.loads(pickle.dumps(saved))
    assert getattr(loaded.stats, field) is None
    e, t, v = data
    _, rest = split(e, t, v, TRAIN_DAYS)
    result = loaded.score(*rest, history=history_before(e, t, v, TRAIN_DAYS))
    assert result.is_anomaly.size == rest[0].size
