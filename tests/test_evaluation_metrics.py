"""Event matching, incidents and delays of utils.ml.evaluation.metrics on hand-built cases."""
from __future__ import annotations

import numpy as np
import pytest

from utils.ml.evaluation.data import DAY, HOUR, Event, Series
from utils.ml.evaluation.metrics import finish, incident_gaps, incidents, merge, score_metric

T0 = 1_700_000_000.0 - (1_700_000_000.0 % DAY)  # a UTC midnight


def hourly(entity: int, hours: int) -> Series:
    return Series("m", np.full(hours, entity), T0 + np.arange(hours) * HOUR, np.zeros(hours))


def flags_at(series: Series, hours: list[int]) -> np.ndarray:
    flags = np.zeros(len(series), dtype=bool)
    flags[hours] = True
    return flags


def test_found_event_delay_and_false_incident():
    s = hourly(1, 96)
    events = [Event("m", 1, "spike", T0 + 10 * HOUR, T0 + 12 * HOUR)]
    flags = flags_at(s, [11, 12, 50])
    out = finish(score_metric(s, flags, flags.astype(float), events, T0, T0 + 4 * DAY))
    assert (out["events"], out["found"], out["recall"]) == (1, 1, 1.0)
    assert out["delay_h_median"] == pytest.approx(1.0)
    assert (out["incidents"], out["true_incidents"], out["false_incidents"]) == (2, 1, 1)
    assert out["precision"] == pytest.approx(0.5)
    assert out["alerts"] == 3 and out["alerts_in_windows"] == 2 and out["false_alerts"] == 1
    assert out["entity_days"] == 4
    assert out["false_incidents_per_100_entity_days"] == pytest.approx(25.0)
    assert out["f1"] == pytest.approx(2 * 0.5 * 1.0 / 1.5)


def test_alert_of_another_entity_does_not_find_the_event():
    a, b = hourly(1, 48), hourly(2, 48)
    s = Series("m", np.r_[a.entity, b.entity], np.r_[a.ts, b.ts], np.r_[a.value, b.value])
    events = [Event("m", 1, "dip", T0 + 5 * HOUR, T0 + 6 * HOUR)]
    flags = (s.entity == 2) & (s.ts == T0 + 5 * HOUR)
    out = finish(score_metric(s, flags, flags.astype(float), events, T0, T0 + 2 * DAY))
    assert out["found"] == 0 and out["recall"] == 0.0 and out["true_incidents"] == 0


def test_incident_gap_follows_the_entity_cadence():
    s = hourly(1, 48)
    assert incident_gaps(s)[1] == pytest.approx(6 * HOUR)
    daily = Series("m", np.ones(10), T0 + np.arange(10) * DAY, np.zeros(10))
    assert incident_gaps(daily)[1] == pytest.approx(1.5 * DAY)
    gaps = incident_gaps(s)
    one = incidents(np.array([1, 1]), T0 + np.array([20, 25]) * HOUR, np.zeros(2), gaps)
    two = incidents(np.array([1, 1]), T0 + np.array([20, 27]) * HOUR, np.zeros(2), gaps)
    assert len(one) == 1 and one[0]["count"] == 2
    assert len(two) == 2


def test_incident_records_start_end_count_and_peak():
    got = incidents(np.array([3, 3, 3]), T0 + np.array([1, 2, 4]) * HOUR, np.array([0.2, 0.9, 0.5]),
                    {3: 6 * HOUR})
    assert got == [{"entity_id": 3, "start": T0 + HOUR, "end": T0 + 4 * HOUR, "count": 3, "peak": 0.9}]


def test_incident_starting_before_the_window_is_false_but_finds_the_event():
    s = hourly(1, 48)
    events = [Event("m", 1, "level_shift", T0 + 10 * HOUR, T0 + 20 * HOUR)]
    flags = flags_at(s, [8, 9, 10, 11])  # one incident, first alert two hours early
    out = finish(score_metric(s, flags, flags.astype(float), events, T0, T0 + 2 * DAY))
    assert out["found"] == 1 and out["incidents"] == 1 and out["true_incidents"] == 0


def test_windows_starting_before_the_period_are_dont_care():
    s = hourly(1, 72)
    events = [Event("m", 1, "drift", T0 + 10 * HOUR, T0 + 40 * HOUR)]
    flags = flags_at(s, [30, 31])
    out = finish(score_metric(s, flags, flags.astype(float), events, T0 + DAY, T0 + 3 * DAY))
    assert out["events"] == 0 and out["incidents"] == 0 and out["false_alerts"] == 0
    assert out["recall"] is None and out["precision"] is None


def test_merge_sums_counts_and_kinds():
    s = hourly(1, 48)
    events = [Event("m", 1, "spike", T0 + 3 * HOUR, T0 + 3 * HOUR), Event("m", 1, "stuck", T0 + 30 * HOUR,
                                                                           T0 + 33 * HOUR)]
    first = score_metric(s, flags_at(s, [3]), np.ones(48), events, T0, T0 + 2 * DAY)
    second = score_metric(s, flags_at(s, [31, 40]), np.ones(48), events, T0, T0 + 2 * DAY)
    total = finish(merge([first, second]))
    assert total["events"] == 4 and total["found"] == 2
    assert total["kinds"]["spike"]["found"] == 1 and total["kinds"]["stuck"]["found"] == 1
    assert total["incidents"] == first["incidents"] + second["incidents"]
