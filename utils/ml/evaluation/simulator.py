"""A realistic minibar hotel, written from how the hotel works, not from any model.

``simulate(HotelConfig(...))`` returns a :class:`~utils.ml.evaluation.data.Dataset`
of four metric types (times are UTC and stand for the hotel's local time):

* ``stok_seviye`` — hourly stock of each of ``products`` products in the
  store.  Levels are log-uniform between 3 and 20,000 units, and about one
  product in twenty is kept in kilograms/litres between 0.3 and 0.9 (two
  decimals): entities four to five orders of magnitude apart.  Stock is
  restocked at 02:00 and drawn down from 09:00 to 18:00 by the refill rounds,
  deeper on busy (weekend, holiday) days; the night keeps the day's depth
  until the restock, past midnight.  Normal noise of 1.5-5 %.
* ``tuketim_miktar`` — items consumed in a room during the last 24 h, counted
  by housekeeping around 11:00 (irregular, +-45 min).  Standard rooms, deluxe
  rooms and suites; empty rooms consume nothing, so most values are 0-3.
  Negative-binomial counts; Friday/Saturday nights and holidays are busier.
* ``dolum_sure`` — minutes between two minibar refills of a floor attendant,
  one observation per refill (irregular, 08:00-16:00 shifts, two days off a
  week).  Gamma noise; slower in the first hour, after lunch, at weekends.
* ``enerji_tuketim`` (generic) — hourly kWh of ``meters`` sub-meters (guest
  floors, kitchen, laundry, spa, office, main, pumps) with their own daily
  shapes; the office drops at weekends and on holidays.  Log-normal noise.
  One pump meter reads 0.3-0.9 kWh while the main meter reads hundreds.

What real data has, all of it *normal* (never labelled): a seasonal
occupancy with weekends and holiday blocks (about one per 25 days); slow
linear trends; a policy change in each metric (new par levels for a group
of products, a new minibar assortment in deluxe rooms, a new refill routing,
a new HVAC schedule) that ramps in over one to three days and stays;
entities that start mid-window (new products, a new wing, a new attendant,
a new meter); missing days (counter outages, rooms out of order, days off,
leave) and missing hours; integer counts with many zeros.

Anomalies are injected afterwards by :mod:`utils.ml.evaluation.inject`.
Deterministic by ``seed``: each metric type draws from its own child stream.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, Callable

import numpy as np

from utils.ml.evaluation.data import DAY, HOUR, Dataset, Series
from utils.ml.evaluation.truth import Truth, draw

STOK_SEVIYE, TUKETIM_MIKTAR, DOLUM_SURE, ENERJI_TUKETIM = "stok_seviye", "tuketim_miktar", "dolum_sure", \
    "enerji_tuketim"
METRIC_TYPES = (STOK_SEVIYE, TUKETIM_MIKTAR, DOLUM_SURE, ENERJI_TUKETIM)


@dataclass(frozen=True)
class HotelConfig:
    rooms: int = 120
    products: int = 40
    attendants: int = 8
    meters: int = 16
    days: int = 90
    seed: int = 1
    start: str = "2025-01-06"  # a Monday, 00:00 UTC
    anomaly_rate: float = 0.005  # share of each metric's rows inside labelled windows (drift excluded)
    max_labelled_rate: float = 0.01  # with the drift event, never more than this
    anomalies: bool = True

    def check(self) -> None:
        for name in ("rooms", "products", "attendants", "meters", "days"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be a whole number >= 1 (got {value!r})")
        if self.days < 14:
            raise ValueError(f"days: must be at least 14 (got {self.days})")
        if not 0.001 <= self.anomaly_rate <= self.max_labelled_rate <= 0.05:
            raise ValueError("anomaly_rate: must be between 0.001 and max_labelled_rate (<= 0.05)")


@dataclass
class Calendar:
    t0: float
    days: int
    dow: np.ndarray  # per day, Monday = 0
    holiday: np.ndarray  # per day
    occupancy: np.ndarray  # per night


@dataclass
class Generated:
    """One metric type before anomalies: parallel arrays (any order) and the truth per row."""

    metric_type: str
    entity: np.ndarray
    ts: np.ndarray
    truth: Truth
    value: np.ndarray


def make_calendar(cfg: HotelConfig, rng: np.random.Generator) -> Calendar:
    t0 = datetime.fromisoformat(cfg.start).replace(tzinfo=timezone.utc).timestamp()
    dow = (datetime.fromisoformat(cfg.start).weekday() + np.arange(cfg.days)) % 7
    holiday = np.zeros(cfg.days, dtype=bool)
    for _ in range(max(1, cfg.days // 25)):
        first = int(rng.integers(3, cfg.days - 3))
        holiday[first:first + int(rng.integers(1, 4))] = True
    season = 0.06 * np.sin(2 * np.pi * (np.arange(cfg.days) / 120.0 + rng.uniform()))
    occupancy = 0.68 + season + 0.12 * np.isin(dow, (4, 5)) + 0.18 * holiday + rng.normal(0, 0.03, cfg.days)
    return Calendar(t0, cfg.days, dow, holiday, np.clip(occupancy, 0.2, 0.98))


def _ramp(t_days: np.ndarray, at: float, length_days: float) -> np.ndarray:
    """0 before ``at``, 1 after ``at + length_days``, linear between."""
    return np.clip((t_days - at) / length_days, 0.0, 1.0)


def _drop_blocks(keep: np.ndarray, day: np.ndarray, rng: np.random.Generator, probability: float,
                 lengths: tuple[int, int], days: int) -> None:
    """Remove a block of whole days from ``keep`` with ``probability`` (an outage, a room out of order)."""
    if rng.random() < probability:
        first = int(rng.integers(2, max(3, days - lengths[1])))
        keep &= ~((day >= first) & (day < first + int(rng.integers(lengths[0], lengths[1] + 1))))


def _stock(cfg: HotelConfig, cal: Calendar, rng: np.random.Generator) -> Generated:
    n = cfg.products
    level = np.exp(rng.uniform(np.log(3.0), np.log(20000.0), n))
    decimals = np.zeros(n, dtype=int)
    fractional = rng.choice(n, size=max(1, n // 20), replace=False)
    level[fractional], decimals[fractional] = rng.uniform(0.3, 0.9, fractional.size), 2
    depletion, cv, trend = rng.uniform(0.1, 0.35, n), rng.uniform(0.015, 0.05, n), rng.normal(0, 0.08, n)
    first_day = np.zeros(n)
    late = rng.choice(n, size=max(1, n // 10), replace=False)
    first_day[late] = rng.uniform(0.3, 0.7, late.size) * cfg.days
    policy_group = rng.random(n) < 0.2
    policy_day, policy_factor = rng.uniform(0.35, 0.65) * cfg.days, rng.uniform(0.6, 1.6)
    hod = np.arange(24)
    shape = np.where((hod >= 2) & (hod <= 8), 0.0, np.where(hod <= 1, 1.0, np.clip((hod - 8) / 10.0, 0, 1)))
    demand = cal.occupancy / cal.occupancy.mean()
    hours = np.arange(cfg.days * 24)
    entities, stamps, mus, shapes, decs = [], [], [], [], []
    for e in range(n):
        day = hours // 24
        keep = (day >= first_day[e]) & (rng.random(hours.size) > 0.005)
        _drop_blocks(keep, day, rng, 0.3, (1, 3), cfg.days)
        h, d = hours[keep], day[keep]
        t_days = h / 24.0
        policy = 1 + (policy_factor - 1) * _ramp(t_days, policy_day, 3.0) if policy_group[e] else 1.0
        # Until the 02:00 restock the shelf still shows the previous day's draw: that day's demand.
        drawn_on = np.where(h % 24 < 2, np.maximum(d - 1, 0), d)
        drawn = depletion[e] * shape[h % 24] * demand[drawn_on]
        mu = level[e] * (1 + trend[e] * t_days / cfg.days) * policy * (1 - drawn)
        entities.append(np.full(h.size, e + 1))
        stamps.append(cal.t0 + h * HOUR)
        mus.append(mu)
        shapes.append(np.full(h.size, cv[e]))
        decs.append(np.full(h.size, decimals[e]))
    truth = Truth("normal", np.concatenate(mus), np.concatenate(shapes), np.concatenate(decs))
    return Generated(STOK_SEVIYE, np.concatenate(entities), np.concatenate(stamps), truth, draw(truth, rng))


def _consumption(cfg: HotelConfig, cal: Calendar, rng: np.random.Generator) -> Generated:
    n = cfg.rooms
    numbers = np.array([(i // 30 + 1) * 100 + i % 30 + 1 for i in range(n)])
    kind = rng.choice(3, size=n, p=(0.7, 0.2, 0.1))  # standard, deluxe, suite
    rate = np.array([1.2, 3.0, 8.0])[kind] * rng.lognormal(0.0, 0.25, n)
    opens = np.zeros(n)
    floors = (numbers // 100)
    if floors.max() >= 3:  # the top floor is a new wing that opens mid-window
        opens[floors == floors.max()] = rng.uniform(0.4, 0.55) * cfg.days
    policy_day = rng.uniform(0.4, 0.6) * cfg.days
    night = np.arange(1, cfg.days)  # the count at day d covers the night before it
    busy = np.where(np.isin(cal.dow[night - 1], (4, 5)), 1.3, 1.0) * np.where(cal.holiday[night - 1], 1.4, 1.0)
    entities, stamps, mus = [], [], []
    for e in range(n):
        keep = night >= opens[e]
        _drop_blocks(keep, night, rng, 0.15, (2, 7), cfg.days)
        d = night[keep]
        occupied = rng.random(d.size) < cal.occupancy[d - 1] * (0.8 if kind[e] == 2 else 1.0)
        policy = 1 + 0.3 * (d >= policy_day) if kind[e] == 1 else 1.0
        mu = occupied * rate[e] * busy[keep] * policy * (1 + 0.1 * d / cfg.days)
        entities.append(np.full(d.size, numbers[e]))
        stamps.append(cal.t0 + d * DAY + 11 * HOUR + np.clip(rng.normal(0, 2700, d.size), -5400, 5400))
        mus.append(mu)
    mu = np.concatenate(mus)
    truth = Truth("nbinom", mu, np.full(mu.size, 2.5), np.zeros(mu.size, dtype=int))
    return Generated(TUKETIM_MIKTAR, np.concatenate(entities), np.concatenate(stamps), truth, draw(truth, rng))


def _refill(cfg: HotelConfig, cal: Calendar, rng: np.random.Generator) -> Generated:
    n, shape = cfg.attendants, 6.0
    pace = rng.uniform(12.0, 40.0, n)
    first_day = np.zeros(n)
    if n >= 4:
        first_day[rng.integers(n)] = rng.uniform(0.45, 0.6) * cfg.days
    on_leave = np.zeros(cfg.days, dtype=bool)
    leave_who, leave_from = int(rng.integers(n)), int(rng.integers(5, cfg.days - 12))
    policy_day = rng.uniform(0.5, 0.7) * cfg.days
    entities, stamps, mus = [], [], []
    for e in range(n):
        on_leave[:] = False
        if e == leave_who:
            on_leave[leave_from:leave_from + int(rng.integers(7, 11))] = True
        for d in range(int(np.ceil(first_day[e])), cfg.days):
            if cal.dow[d] in ((e % 7), (e + 1) % 7) or on_leave[d]:
                continue  # two days off a week, rotating between attendants
            factor = (1.12 if cal.dow[d] >= 5 else 1.0) * (1.2 if cal.holiday[d] else 1.0) \
                * (0.85 + 0.3 * cal.occupancy[d]) * (1 - 0.1 * _ramp(np.array(d + 0.5), policy_day, 1.0))
            t, end = 8 * HOUR, 16 * HOUR
            while True:
                hour = t / HOUR
                mu = pace[e] * factor * (1.15 if hour < 9 else 1.1 if 13 <= hour < 14 else 1.0)
                minutes = rng.gamma(shape, mu / shape)
                t += minutes * 60.0
                if t > end:
                    break
                entities.append(e + 1)
                stamps.append(cal.t0 + d * DAY + t)
                mus.append(mu)
    mu = np.asarray(mus)
    truth = Truth("gamma", mu, np.full(mu.size, shape), np.ones(mu.size, dtype=int))
    return Generated(DOLUM_SURE, np.asarray(entities), np.asarray(stamps), truth, draw(truth, rng))


_METER_KINDS = ("guest", "guest", "guest", "guest", "kitchen", "laundry", "spa", "office", "main", "pump")


def _bump(hours: np.ndarray, centre: float, width: float) -> np.ndarray:
    return np.exp(-0.5 * ((hours - centre) / width) ** 2)


def _day_shape(kind: str) -> np.ndarray:
    h = np.arange(24.0)
    shapes = {
        "guest": _bump(h, 7.5, 1.5) + 1.2 * _bump(h, 20.5, 2.0),
        "kitchen": _bump(h, 7.5, 1.2) + _bump(h, 12.5, 1.5) + 1.2 * _bump(h, 19.5, 1.8),
        "laundry": ((h >= 8) & (h <= 17)).astype(float),
        "spa": ((h >= 9) & (h <= 21)).astype(float) * (0.7 + 0.3 * _bump(h, 17, 3)),
        "office": ((h >= 8) & (h <= 18)).astype(float),
        "main": 0.5 + _bump(h, 12, 5),
        "pump": _bump(h, 7, 1.0) + _bump(h, 19, 1.0),
    }
    shape = shapes[kind]
    return shape / shape.max()


def _energy(cfg: HotelConfig, cal: Calendar, rng: np.random.Generator) -> Generated:
    n = cfg.meters
    kinds = [_METER_KINDS[i % len(_METER_KINDS)] for i in range(n)]
    level = np.exp(rng.uniform(np.log(5.0), np.log(900.0), n))
    for i, kind in enumerate(kinds):
        if kind == "pump":
            level[i] = rng.uniform(0.3, 0.9)
    base = {"guest": 0.5, "kitchen": 0.2, "laundry": 0.1, "spa": 0.3, "office": 0.25, "main": 0.55, "pump": 0.4}
    sigma, trend = rng.uniform(0.04, 0.09, n), rng.normal(0, 0.06, n)
    first_day = np.zeros(n)
    first_day[rng.integers(n)] = rng.uniform(0.3, 0.6) * cfg.days
    hvac_day = rng.uniform(0.4, 0.6) * cfg.days
    hours = np.arange(cfg.days * 24)
    entities, stamps, mus = [], [], []
    for e, kind in enumerate(kinds):
        day = hours // 24
        keep = (day >= first_day[e]) & (rng.random(hours.size) > 0.005)
        _drop_blocks(keep, day, rng, 0.2, (1, 2), cfg.days)
        h, d = hours[keep], day[keep]
        variable = _day_shape(kind)[h % 24]
        closed = (cal.dow[d] >= 5) | cal.holiday[d]
        if kind == "office":
            variable = variable * np.where(closed, 0.3, 1.0)
        elif kind == "laundry":
            variable = variable * np.where(cal.dow[d] == 6, 0.5, 1.0)
        elif kind in ("guest", "main", "kitchen"):
            variable = variable * cal.occupancy[d] / cal.occupancy.mean()
        t_days = h / 24.0
        hvac = 1 - rng.uniform(0.05, 0.15) * _ramp(t_days, hvac_day, 2.0)
        mu = level[e] * (base[kind] * hvac + (1 - base[kind]) * variable) * (1 + trend[e] * t_days / cfg.days)
        entities.append(np.full(h.size, e + 1))
        stamps.append(cal.t0 + h * HOUR)
        mus.append(mu)
    mu = np.concatenate(mus)
    shape = np.concatenate([np.full(m.size, sigma[e]) for e, m in enumerate(mus)])
    truth = Truth("lognormal", mu, shape, np.full(mu.size, 2, dtype=int))
    return Generated(ENERJI_TUKETIM, np.concatenate(entities), np.concatenate(stamps), truth, draw(truth, rng))


GENERATORS: dict[str, Callable[[HotelConfig, Calendar, np.random.Generator], Generated]] = {
    STOK_SEVIYE: _stock, TUKETIM_MIKTAR: _consumption, DOLUM_SURE: _refill, ENERJI_TUKETIM: _energy,
}


def simulate(cfg: HotelConfig = HotelConfig()) -> Dataset:
    """The hotel's observations with injected, labelled anomalies (none when ``cfg.anomalies`` is false)."""
    from utils.ml.evaluation.inject import inject

    cfg.check()
    streams = np.random.SeedSequence(cfg.seed).spawn(1 + 2 * len(METRIC_TYPES))
    cal = make_calendar(cfg, np.random.default_rng(streams[0]))
    series, events, summary = {}, [], {}
    for i, name in enumerate(METRIC_TYPES):
        generated = GENERATORS[name](cfg, cal, np.random.default_rng(streams[1 + 2 * i]))
        order = np.lexsort((generated.entity, generated.ts))
        generated = Generated(name, generated.entity[order], generated.ts[order], generated.truth.take(order),
                              generated.value[order])
        info: dict[str, Any] = {"rows": int(generated.ts.size), "entities": int(np.unique(generated.entity).size)}
        if cfg.anomalies:
            found, changed, injected = inject(generated, cfg, np.random.default_rng(streams[2 + 2 * i]))
            events += found
            info.update(injected)
            info["changed_rows"] = int(changed.sum())
        series[name] = Series(name, generated.entity, generated.ts, generated.value)
        summary[name] = info
    meta = {"config": asdict(cfg), "holidays": [int(d) for d in np.flatnonzero(cal.holiday)],
            "metric_types": summary, "t0": cal.t0}
    return Dataset(series, events, meta)
