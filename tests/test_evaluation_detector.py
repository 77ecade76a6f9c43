"""The new detector: causal scores, per-entity calibration, its fallback and its pickled artefact."""
from __future__ import annotations

import pickle
import sys
import threading
import warnings

import numpy as np
import pytest

from utils.ml.detector import model as D
from utils.ml.evaluation.data import DAY, HOUR

T0 = 1_736_121_600.0  # 2025-01-06 00:00 UTC, a Monday
TRAIN_DAYS, DAYS = 40, 50
CALM = {1: (16778.0, 0.01), 2: (0.6, 0.04), 3: (50.0, 0.02)}  # entity: (level, relative noise)
VOLATILE = 9


def synthetic(seed: int = 0, spikes: tuple[tuple[int, int], ...] = ()) -> tuple[np.ndarray, ...]:
    """Hourly rows of three calm entities (levels 0.6 to 16,778) and one heavy-tailed volatile one."""
    rng = np.random.default_rng(seed)
    hours = np.arange(DAYS * 24)
    daily = 1 + 0.1 * np.sin(2 * np.pi * (hours % 24) / 24)
    entity, ts, value = [], [], []
    for e, (level, noise) in CALM.items():
        v = level * daily * (1 + noise * rng.normal(size=hours.size))
        entity.append(np.full(hours.size, e))
        ts.append(T0 + hours * HOUR)
        value.append(np.round(v, 3))
    volatile = 100 * daily + 15 * rng.standard_t(1.5, size=hours.size)
    entity.append(np.full(hours.size, VOLATILE))
    ts.append(T0 + hours * HOUR)
    value.append(np.round(volatile, 3))
    e, t, v = np.concatenate(entity), np.concatenate(ts), np.concatenate(value)
    for ent, hour in spikes:  # +10 noise sd at that hour
        i = np.flatnonzero((e == ent) & (t == T0 + hour * HOUR))[0]
        level, noise = CALM[ent]
        v[i] = v[i] + 10 * noise * level * daily[hour]
    order = np.lexsort((e, t))
    return e[order], t[order], v[order]


def split(e, t, v, at_day: float):
    cut = np.searchsorted(t, T0 + at_day * DAY)
    return (e[:cut], t[:cut], v[:cut]), (e[cut:], t[cut:], v[cut:])


def history_before(e, t, v, start_day: float):
    past, _ = split(e, t, v, start_day)
    idx = D.recent_history(past[0], past[1])
    return past[0][idx], past[1][idx], past[2][idx]


@pytest.fixture(scope="module")
def clean_model():
    e, t, v = synthetic()
    train, _ = split(e, t, v, TRAIN_DAYS)
    model = D.train(*train, now=T0 + TRAIN_DAYS * DAY)
    assert model is not None
    return model


def test_scores_never_change_when_later_rows_are_appended(clean_model):
    e, t, v = synthetic()
    _, rest = split(e, t, v, TRAIN_DAYS)
    history = history_before(e, t, v, TRAIN_DAYS)
    n_first = int(np.searchsorted(rest[1], T0 + (TRAIN_DAYS + 3) * DAY))
    short = clean_model.score(rest[0][:n_first], rest[1][:n_first], rest[2][:n_first], history=history)
    long = clean_model.score(*rest, history=history)
    assert np.array_equal(short.score, long.score[:n_first])
    assert np.array_equal(short.is_anomaly, long.is_anomaly[:n_first])
    # Hourly scans (many small batches, each with its own history) give the same scores as one batch.
    half = n_first // 2
    first = clean_model.score(rest[0][:half], rest[1][:half], rest[2][:half], history=history)
    h2 = history_before(e, t, v, (rest[1][half] - T0) / DAY)
    second = clean_model.score(rest[0][half:n_first], rest[1][half:n_first], rest[2][half:n_first], history=h2)
    assert np.allclose(np.r_[first.score, second.score], short.score)


def test_changing_a_later_value_does_not_change_earlier_scores(clean_model):
    e, t, v = synthetic()
    _, rest = split(e, t, v, TRAIN_DAYS)
    history = history_before(e, t, v, TRAIN_DAYS)
    before = clean_model.score(*rest, history=history).score
    altered = rest[2].copy()
    late = len(altered) // 2
    altered[late:] *= 3.0
    after = clean_model.score(rest[0], rest[1], altered, history=history).score
    assert np.array_equal(before[:late], after[:late])
    assert not np.array_equal(before[late:], after[late:])


def test_volatile_entity_cannot_take_the_alerts_of_calm_ones():
    spikes = tuple((ent, (TRAIN_DAYS + 1 + i) * 24 + 13) for i, ent in enumerate(CALM))
    e, t, v = synthetic(seed=1, spikes=spikes)
    train, rest = split(e, t, v, TRAIN_DAYS)
    model = D.train(*train, now=T0 + TRAIN_DAYS * DAY)
    result = model.score(*rest, history=history_before(e, t, v, TRAIN_DAYS))
    for ent, hour in spikes:  # every calm entity's spike, the 0.6-level one included
        i = np.flatnonzero((rest[0] == ent) & (rest[1] == T0 + hour * HOUR))[0]
        assert result.is_anomaly[i], f"entity {ent}: spike missed"
        assert result.severity[i] in D.SEVERITIES
        assert result.expected[i] == pytest.approx(CALM[ent][0] * (1 + 0.1 * np.sin(2 * np.pi * 13 / 24)), rel=0.1)
    volatile = rest[0] == VOLATILE
    assert result.is_anomaly[volatile].mean() < 0.02
    calm_false = result.is_anomaly & ~volatile
    calm_false[[np.flatnonzero((rest[0] == ent) & (rest[1] == T0 + h * HOUR))[0] for ent, h in spikes]] = False
    assert calm_false.sum() <= 2


def test_contamination_is_a_calibration_target_not_a_quota():
    e, t, v = synthetic(seed=2)
    train, rest = split(e, t, v, TRAIN_DAYS)
    history = history_before(e, t, v, TRAIN_DAYS)
    calm = rest[0] != VOLATILE
    for contamination in (0.02, 0.1):
        model = D.train(*train, D.DetectorSettings(contamination=contamination), now=T0 + TRAIN_DAYS * DAY)
        rate = model.score(*rest, history=history).is_anomaly[calm].mean()
        assert rate < contamination / 10, contamination


def test_pickle_round_trip_keeps_scores_and_stays_small(clean_model):
    e, t, v = synthetic()
    _, rest = split(e, t, v, TRAIN_DAYS)
    history = history_before(e, t, v, TRAIN_DAYS)
    blob = pickle.dumps(clean_model, protocol=pickle.HIGHEST_PROTOCOL)
    loaded = pickle.loads(blob)
    assert loaded.feature_version == D.FEATURE_VERSION
    a, b = clean_model.score(*rest, history=history), loaded.score(*rest, history=history)
    assert np.array_equal(a.score, b.score) and np.array_equal(a.is_anomaly, b.is_anomaly)
    size = clean_model.size()
    assert size["bytes_per_entity"] < 2000
    # Every array of the state counts, the ones added after the first version too.
    held = [v for v in vars(clean_model.stats).values() if isinstance(v, np.ndarray)]
    assert clean_model.stats.long_run is not None and clean_model.stats.count_k is not None
    expected = sum(a.nbytes for a in held) + sum(a.nbytes for a in clean_model.calibration.values())
    assert size["bytes_per_entity"] == round(expected / clean_model.stats.ids.size, 1)
    assert len(blob) == size["total_bytes"]


def test_new_entity_warms_up_then_has_its_own_scale(clean_model):
    hours = np.arange(60)
    rng = np.random.default_rng(4)
    values = 5000 + 10 * rng.normal(size=hours.size)
    values[40] = 5200  # 20 sd: its own scale, not the metric's
    result = clean_model.score(np.full(60, 77), T0 + (TRAIN_DAYS + hours / 24) * DAY, values)
    assert not result.is_anomaly[:5].any()  # warming up: never judged on nothing
    assert result.is_anomaly[40]
    assert result.is_anomaly.sum() <= 3


def test_fallback_is_a_per_entity_robust_z():
    hours = np.arange(80)
    rng = np.random.default_rng(5)
    entity = np.r_[np.full(80, 1), np.full(80, 2)]
    ts = np.r_[T0 + hours * HOUR, T0 + hours * HOUR]
    values = np.r_[100 + rng.normal(size=80), 1e6 + 1e4 * rng.normal(size=80)]
    values[50] = 120  # 20 sd for entity 1, nothing at all on entity 2's scale
    result = D.fallback_scores(entity, ts, values)
    assert result.method == "robust_z"
    assert result.is_anomaly[50]
    assert not result.is_anomaly[:D.FALLBACK_MIN_PRIOR].any()
    assert result.is_anomaly.sum() <= 3


def test_bad_input_is_refused(clean_model):
    with pytest.raises(ValueError, match="same length"):
        clean_model.score([1, 2], [T0], [1.0, 2.0])
    with pytest.raises(ValueError, match=r"values\[1\]"):
        clean_model.score([1, 1], [T0, T0 + 1], [1.0, np.nan])
    with pytest.raises(ValueError, match=r"timestamps\[0\]"):
        clean_model.score([1], [np.inf], [1.0])


@pytest.mark.parametrize("field, value", [("contamination", 0.0), ("false_alerts_per_entity_day", 1.5),
                                          ("n_estimators", 0), ("fallback_z", -1.0)])
def test_bad_settings_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        D.DetectorSettings(**{field: value})


def test_too_little_data_trains_nothing():
    assert D.train([1] * 10, T0 + np.arange(10) * HOUR, np.arange(10.0)) is None


def test_entity_new_in_the_window_gets_a_scale_from_its_values_not_the_floor():
    """A room opened 12 hours before training: 12 counts 0-38, too few causal residuals for a scale.

    Its scale comes from its own values (with the small-sample inflation), so
    a later 30 -- as ordinary as its 26 and 38 -- is no alert; with the
    half-item floor as its scale, it was 60 scales out.
    """
    e, t, v = synthetic()
    (e, t, v), _ = split(e, t, v, TRAIN_DAYS)
    counts = np.array([0, 26, 0, 10, 6, 13, 0, 8, 0, 16, 38, 5], dtype=float)
    hours = TRAIN_DAYS * 24 - counts.size + np.arange(counts.size)
    model = D.train(np.r_[e, np.full(counts.size, 55)], np.r_[t, T0 + hours * HOUR], np.r_[v, counts],
                    now=T0 + TRAIN_DAYS * DAY)
    i = np.searchsorted(model.stats.ids, 55)
    assert model.stats.ids[i] == 55 and model.stats.scale[i] >= 5.0
    result = model.score([55, 55], T0 + TRAIN_DAYS * DAY + np.array([0.0, HOUR]), [30.0, 12.0],
                         history=(np.full(counts.size, 55), T0 + hours * HOUR, counts))
    assert not result.is_anomaly.any()


def test_one_spike_in_a_short_window_does_not_set_the_tail_scale():
    """A daily entity's 60 deviations with one of the window's own spikes: the tail scale stays that of the rest."""
    from utils.ml.detector.calibration import _tail

    rng = np.random.default_rng(3)
    clean = rng.exponential(1.0, 60)
    polluted = clean.copy()
    polluted[np.argmax(polluted)] = 80.0  # a past spike, 80 scales out
    q_clean, beta_clean = _tail(clean, 0.02)
    q, beta = _tail(polluted, 0.02)
    assert q == pytest.approx(q_clean) and beta == pytest.approx(beta_clean)
    assert 0.2 < beta_clean < 5.0


def test_no_limit_is_below_one_scale_even_when_every_deviation_in_the_window_is_equal():
    """A window of repeated readings (a small legacy database) has q = beta = 0: without the floor, its
    limits were 0 and every deviation, however small, passed them."""
    hours = np.arange(24 * 30, dtype=float) * 3600.0
    entity = np.repeat(np.arange(3), hours.size)
    ts = np.tile(hours, 3)
    values = np.tile(np.where(np.arange(hours.size) % 2 == 0, 10.0, 11.0), 3)  # two values, alternating
    model = D.train(entity, ts, values)
    assert model is not None
    for name in ("dev_pos", "dev_neg", "shift_pos", "shift_neg"):
        assert np.all(model.calibration[name] >= 1.0), (name, model.calibration[name])  # one scale at least
        assert model.metric[name] >= 1.0, name


def _batch_with_new_entities(e, t, v):
    """The scored day plus two entities the model has never seen: their first rows have no history at all."""
    history = history_before(e, t, v, TRAIN_DAYS)
    _, (be, bt, bv) = split(e, t, v, TRAIN_DAYS)
    hours = np.arange(30)
    new_e = np.r_[np.full(30, 501), np.full(30, 502)]
    new_t = np.r_[T0 + TRAIN_DAYS * DAY + hours * HOUR, T0 + TRAIN_DAYS * DAY + hours * HOUR]
    new_v = np.r_[np.full(30, 7.0), 40 + np.arange(30.0)]
    return (np.r_[be, new_e], np.r_[bt, new_t], np.r_[bv, new_v]), history


def test_training_and_scoring_emit_no_warnings_on_rows_without_history(clean_model):
    """Rows without history give all-NaN medians: computed without numpy warnings, not by hiding them.

    (Hiding them needs ``warnings.catch_warnings``, which swaps the
    process-wide filters: see the thread test below.)
    """
    e, t, v = synthetic()
    (be, bt, bv), history = _batch_with_new_entities(e, t, v)
    gap = (t < T0 + 10 * DAY) | (t >= T0 + 20 * DAY)  # a gap of ten days: the running medians across it are NaN
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        retrained = D.train(e[gap & (t < T0 + TRAIN_DAYS * DAY)], t[gap & (t < T0 + TRAIN_DAYS * DAY)],
                            v[gap & (t < T0 + TRAIN_DAYS * DAY)], now=T0 + TRAIN_DAYS * DAY)
        scored = clean_model.score(be, bt, bv, history=history)
        fallback = D.fallback_scores(be, bt, bv)
    assert retrained is not None
    new = np.isin(be, (501, 502))
    assert not scored.is_anomaly[new][:D.causal.MIN_PRIOR].any()  # warming up, judged on nothing
    assert np.isnan(scored.expected[new][:D.causal.MIN_PRIOR]).all()
    assert np.isfinite(fallback.score).all()


def test_causal_features_on_threads_leave_the_process_wide_warning_filters_alone(clean_model):
    """Scans score on threads: computing features must not touch ``warnings.filters``.

    ``warnings.catch_warnings`` swaps the module's filter list for every
    thread; threads leaving it in another order than they entered leave a
    stale list behind (measured before the fix: 10 trials of 4 threads x 10
    feature computations left the filters changed 10 times, and numpy's
    "Mean of empty slice" escaped the silencing).  Four threads compute the
    features and the fallback's scores of a batch with never-seen entities
    (all-NaN histories) at once; the filters and every result must be what
    one thread alone gets.
    """
    e, t, v = synthetic()
    (be, bt, bv), history = _batch_with_new_entities(e, t, v)
    E, T, V, targets = D._combine(be, bt, bv, history)
    alone = D.causal.compute(clean_model.stats, E, T, V, targets).deviation()
    alone_fallback = D.fallback_scores(be, bt, bv).score
    before = list(warnings.filters)
    mismatches: list[int] = []

    def work() -> None:
        for _ in range(10):
            if not np.array_equal(D.causal.compute(clean_model.stats, E, T, V, targets).deviation(), alone):
                mismatches.append(1)
            if not np.array_equal(D.fallback_scores(be, bt, bv).score, alone_fallback):
                mismatches.append(2)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, as a busy server does
    try:
        for _trial in range(3):
            threads = [threading.Thread(target=work) for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
            assert not any(thread.is_alive() for thread in threads)
            assert list(warnings.filters) == before
    finally:
        sys.setswitchinterval(interval)
    assert mismatches == []


def test_values_near_the_float_limit_score_without_warnings(clean_model):
    """Values near 1.8e308 (the API's fuzz test sends them) are scored without numpy overflow warnings.

    A warning from a scan is a log line per request; the values are judged
    all the same (an infinite scale becomes the floor, as before).
    """
    e, t, v = synthetic()
    (be, bt, bv), history = _batch_with_new_entities(e, t, v)
    huge = np.isin(be, (501, 502))
    bv = np.where(huge, np.where(np.arange(bv.size) % 2 == 0, 1.7e308, -1.7e308), bv)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scored = clean_model.score(be, bt, bv, history=history)
        fallback = D.fallback_scores(be, bt, bv)
    assert scored.score.shape == fallback.score.shape == bv.shape
    assert not scored.is_anomaly[huge][:D.causal.MIN_PRIOR].any()
