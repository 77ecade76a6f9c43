"""The evaluation simulator has what real minibar data has, and its labels are the rows it changed."""
from __future__ import annotations

import numpy as np
import pytest

from utils.ml.evaluation.data import DAY, HOUR, labelled_mask, read_dataset, write_events, write_observations
from utils.ml.evaluation.simulator import DOLUM_SURE, ENERJI_TUKETIM, STOK_SEVIYE, TUKETIM_MIKTAR, HotelConfig, \
    simulate

SEED = 11


@pytest.fixture(scope="module")
def hotel():
    return simulate(HotelConfig(seed=SEED))


@pytest.fixture(scope="module")
def clean_hotel():
    return simulate(HotelConfig(seed=SEED, anomalies=False))


def entity_medians(series):
    return {int(e): float(np.median(series.value[series.entity == e])) for e in np.unique(series.entity)}


def test_levels_span_orders_of_magnitude_and_tiny_ranges_exist(hotel):
    for name in (STOK_SEVIYE, ENERJI_TUKETIM):
        medians = np.array(list(entity_medians(hotel.series[name]).values()))
        assert medians.max() / medians.min() > 1000, name
        s = hotel.series[name]
        ranges = [np.ptp(s.value[s.entity == e]) for e in np.unique(s.entity)]
        assert min(ranges) < 1.0, f"{name}: an entity with values inside one unit"


def test_weekly_and_daily_profiles(hotel):
    s = hotel.series[ENERJI_TUKETIM]
    hod = (s.ts % DAY) // HOUR
    dow = (np.floor(s.ts / DAY) + 3) % 7
    office = 8  # the eighth meter is the office (utils.ml.evaluation.simulator._METER_KINDS)
    day_time = (s.entity == office) & (hod >= 10) & (hod <= 16)
    weekday = np.median(s.value[day_time & (dow < 5)])
    weekend = np.median(s.value[day_time & (dow >= 5)])
    assert weekday > 1.5 * weekend
    stock = hotel.series[STOK_SEVIYE]
    h = (stock.ts % DAY) // HOUR
    one = stock.entity == 1
    assert np.median(stock.value[one & (h == 6)]) > np.median(stock.value[one & (h == 20)])  # restocked at night
    rooms = hotel.series[TUKETIM_MIKTAR]
    night = (np.floor(rooms.ts / DAY) + 3 - 1) % 7  # the count covers the night before
    assert rooms.value[np.isin(night, (4, 5))].mean() > 1.15 * rooms.value[np.isin(night, (0, 1, 2))].mean()


def test_counts_with_zeros_new_entities_and_missing_days(hotel):
    rooms = hotel.series[TUKETIM_MIKTAR]
    assert np.mean(rooms.value == 0) > 0.3
    assert np.all(rooms.value == np.round(rooms.value))
    start = hotel.start
    firsts = {name: [s.ts[s.entity == e].min() for e in np.unique(s.entity)] for name, s in hotel.series.items()}
    for name in (STOK_SEVIYE, TUKETIM_MIKTAR, DOLUM_SURE, ENERJI_TUKETIM):
        assert max(firsts[name]) > start + 10 * DAY, f"{name}: an entity appears mid-window"
    stock = hotel.series[STOK_SEVIYE]
    gaps = [np.diff(stock.ts[stock.entity == e]).max() for e in np.unique(stock.entity)]
    assert max(gaps) >= DAY


def test_anomaly_rate_and_every_kind_present(hotel):
    for name, info in hotel.meta["metric_types"].items():
        assert 0.001 <= info["labelled_rate"] <= 0.01, name
        assert info["labelled_rate"] not in (0.01, 0.02, 0.1)
        mask = labelled_mask(hotel.series[name], hotel.events)
        assert mask.sum() == info["labelled_rows"], name
    kinds = {ev.kind for ev in hotel.events}
    assert kinds == {"spike", "dip", "level_shift", "contextual", "stuck", "drift"}


def test_labels_match_the_injected_rows(hotel, clean_hotel):
    for name, s in hotel.series.items():
        clean = clean_hotel.series[name]
        assert np.array_equal(s.ts, clean.ts) and np.array_equal(s.entity, clean.entity)
        changed = s.value != clean.value
        events = [ev for ev in hotel.events if ev.metric_type == name]
        inside = labelled_mask(s, events)
        after_shift = np.zeros(len(s), dtype=bool)
        for ev in events:
            if ev.kind == "level_shift":
                after_shift |= (s.entity == ev.entity_id) & (s.ts >= ev.start)
        assert not np.any(changed & ~inside & ~after_shift), f"{name}: a changed row outside every window"
        for ev in events:
            rows = (s.entity == ev.entity_id) & (s.ts >= ev.start) & (s.ts <= ev.end)
            assert changed[rows].any(), f"{name}: {ev} changed nothing"


def test_level_shifts_persist(hotel, clean_hotel):
    shifts = [ev for ev in hotel.events if ev.kind == "level_shift"]
    assert shifts
    for ev in shifts:
        s, c = hotel.series[ev.metric_type], clean_hotel.series[ev.metric_type]
        later = (s.entity == ev.entity_id) & (s.ts > ev.end + DAY)
        if later.sum() < 5:
            continue
        ratio = np.mean(s.value[later]) / max(np.mean(c.value[later]), 1e-9)
        assert abs(np.log(ratio)) > np.log(1.1), f"{ev}: the shift did not persist"


def test_deterministic_by_seed():
    a, b = simulate(HotelConfig(seed=5, days=30)), simulate(HotelConfig(seed=5, days=30))
    c = simulate(HotelConfig(seed=6, days=30))
    for name in a.series:
        assert np.array_equal(a.series[name].value, b.series[name].value)
    assert a.events == b.events
    assert not np.array_equal(a.series[STOK_SEVIYE].value, c.series[STOK_SEVIYE].value)


def test_csv_round_trip(tmp_path):
    dataset = simulate(HotelConfig(seed=3, days=20, rooms=6, products=4, attendants=2, meters=3))
    write_observations(tmp_path / "obs.csv", dataset)
    write_events(tmp_path / "labels.csv", dataset.events)
    again = read_dataset(tmp_path / "obs.csv", tmp_path / "labels.csv")
    for name, s in dataset.series.items():
        assert np.array_equal(again.series[name].value, s.value)
        assert np.array_equal(again.series[name].entity, s.entity)
        assert np.allclose(again.series[name].ts, s.ts, atol=1e-6)
    assert [(e.metric_type, e.entity_id, e.kind) for e in again.events] == \
        [(e.metric_type, e.entity_id, e.kind) for e in dataset.events]


@pytest.mark.parametrize("line, message", [
    ("stok_seviye,1,abc,2025-01-01T00:00:00", "line 2, column metric_value"),
    ("stok_seviye,x,1.0,2025-01-01T00:00:00", "line 2, column entity_id"),
    ("stok_seviye,1,1.0,yesterday", "line 2, column timestamp"),
])
def test_bad_csv_names_line_and_column(tmp_path, line, message):
    path = tmp_path / "bad.csv"
    path.write_text("metric_type,entity_id,metric_value,timestamp\n" + line + "\n")
    with pytest.raises(ValueError, match=message):
        read_dataset(path)


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="rooms"):
        simulate(HotelConfig(rooms=0))


def test_stock_does_not_move_at_midnight(clean_hotel):
    """Stock is drawn from 09:00 to 18:00 and restocked at 02:00: between 23:00 and 01:00 nothing moves it.

    Into a holiday the night before keeps the previous day's depletion; the holiday's
    deeper draw shows in the afternoon.  (The simulator once applied the new day's demand
    from midnight: every product dropped about 6 % at 00:00 into a holiday.)
    """
    s, t0 = clean_hotel.series[STOK_SEVIYE], clean_hotel.meta["t0"]
    holidays = set(clean_hotel.meta["holidays"])
    first = [d for d in sorted(holidays) if d - 1 not in holidays]
    assert first

    def at(day, hour):
        m = s.ts == t0 + day * DAY + hour * HOUR
        return dict(zip(s.entity[m].tolist(), s.value[m].tolist()))

    for d in first:
        evening, night, afternoon, before = at(d - 1, 23), at(d, 1), at(d, 17), at(d - 1, 17)
        common = [e for e in evening if e in night and evening[e] > 50]
        assert abs(np.median([np.log(night[e] / evening[e]) for e in common])) < 0.01, d
        drawn = [e for e in afternoon if e in before and before[e] > 50]
        assert np.median([np.log(afternoon[e] / before[e]) for e in drawn]) < -0.02, d  # deeper on the holiday
