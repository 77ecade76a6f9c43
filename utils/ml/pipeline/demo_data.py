"""Realistic minibar observations with labelled, injected anomalies.

A hotel of ``rooms`` rooms, ``products`` minibar products and ``attendants``
floor attendants, observed for ``days`` days up to ``end``:

* ``stok_seviye`` (entity = product id 1..P): the store's stock of each
  product, counted at 08:00 and 20:00.  Each product has its own usual level
  (a few dozen for champagne, hundreds for water); weekends run it lower.
* ``tuketim_miktar`` (entity = room number, e.g. 101..130, 201..): items
  consumed in the last 24 h, recorded at 23:00 for occupied rooms (about 85 %
  of room-nights).  Standard rooms, deluxe rooms and suites consume very
  differently; Friday and Saturday nights are busier.  Poisson noise.
* ``dolum_sure`` (entity = attendant id 1..A): minutes between two refills,
  about ten a shift between 08:00 and 18:00; each attendant has a pace of
  their own, weekends are slower.  Gamma noise.

Anomalies (``anomaly_rate`` of each metric's observations for each kind):

* **global**: 2-4 times the largest normal value of the metric (a stock
  miscount, a burst of consumption, a refill forgotten for hours);
* **contextual**: a value between the metric's 5th and 95th percentile —
  unremarkable for the hotel — yet at least ``CONTEXT_SIGMAS`` standard
  deviations from that entity's own expected value (a standard room
  consuming like a suite, a quick attendant taking an hour).  Only entities
  for which such a value exists can carry one.

Every row's ``extra_data`` carries its label: ``{"label": "normal"}`` or
``{"label": "anomaly", "anomaly_kind": "global" | "contextual"}``, plus
``"source": "demo"``.  Rows are inserted in time order with chunked Core
``INSERT`` statements (PostgreSQL: ``COPY``), so a million rows is practical.
"""
from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Iterable, Iterator, Optional

import numpy as np
from sqlalchemy import text

from utils.db_bounds import JOB, bounds_profile
from utils.db_deadline import wait_callback_suspended
from utils.extensions import db
from utils.ml import events
from utils.ml.pipeline.observations import DOLUM_SURE, STOK_SEVIYE, TUKETIM_MIKTAR, bulk_insert
from utils.models import MLMetric
from utils.time import as_utc, utcnow

DEFAULT_SEED = 20251112
DEFAULT_ANOMALY_RATE = 0.01
# A contextual anomaly lies at least this many of the entity's standard deviations from its expectation.
CONTEXT_SIGMAS = 5.0
# Global anomalies: this range of multiples of the metric's largest normal value.
GLOBAL_FACTOR = (2.0, 4.0)

# Day-of-week factors, Monday first.
_STOCK_WEEK = np.array([1.00, 1.02, 1.03, 1.01, 0.95, 0.86, 0.90])
_CONSUMPTION_WEEK = np.array([0.85, 0.85, 0.90, 0.95, 1.25, 1.40, 1.05])
_REFILL_WEEK = np.array([1.00, 0.98, 1.00, 1.02, 1.05, 1.15, 1.12])

_LABELS = {
    0: {"label": "normal", "source": "demo"},
    1: {"label": "anomaly", "anomaly_kind": "global", "source": "demo"},
    2: {"label": "anomaly", "anomaly_kind": "contextual", "source": "demo"},
}


@dataclass
class MetricSeries:
    """One metric type's generated observations (parallel arrays)."""

    metric_type: str
    entity: np.ndarray  # int64
    seconds: np.ndarray  # float64 seconds since the series start
    value: np.ndarray  # float64
    expected: np.ndarray  # the generator's expectation for that entity and time
    sigma: np.ndarray  # the generator's noise standard deviation there
    integer: bool  # values are counts
    kind: Optional[np.ndarray] = None  # 0 normal, 1 global, 2 contextual


def _weekday(start: datetime, seconds: np.ndarray) -> np.ndarray:
    return ((start.weekday() + (start.hour * 3600 + start.minute * 60 + seconds) // 86400) % 7).astype(np.int64)


def _stock(rng: np.random.Generator, start: datetime, days: int, products: int) -> MetricSeries:
    base = np.round(rng.lognormal(mean=np.log(90), sigma=0.7, size=products).clip(20, 400))
    day = np.repeat(np.arange(days), 2)
    hour = np.tile([8, 20], days)
    seconds_one = day * 86400.0 + hour * 3600.0
    entity = np.repeat(np.arange(1, products + 1), seconds_one.size)
    seconds = np.tile(seconds_one, products)
    mu = np.repeat(base, seconds_one.size) * _STOCK_WEEK[_weekday(start, seconds)]
    sigma = 0.06 * np.repeat(base, seconds_one.size)
    value = np.maximum(np.round(rng.normal(mu, sigma)), 0)
    return MetricSeries(STOK_SEVIYE, entity, seconds, value, mu, sigma, integer=True)


def _consumption(rng: np.random.Generator, start: datetime, days: int, rooms: int) -> MetricSeries:
    per_floor = 30
    numbers = np.array([(i // per_floor + 1) * 100 + i % per_floor + 1 for i in range(rooms)])
    # 70 % standard, 20 % deluxe, 10 % suites (at least one of each above two rooms), in random places.
    suites = max(1, round(0.1 * rooms)) if rooms > 2 else 0
    deluxe = max(1, round(0.2 * rooms)) if rooms > 2 else 0
    room_type = rng.permutation(np.repeat([0, 1, 2], [rooms - suites - deluxe, deluxe, suites]))
    room_mean = np.array([2.0, 5.0, 13.0])[room_type] * rng.lognormal(0.0, 0.15, size=rooms)
    occupied = rng.random((rooms, days)) < 0.85
    r_idx, d_idx = np.nonzero(occupied)
    seconds = d_idx * 86400.0 + 23 * 3600.0
    mu = room_mean[r_idx] * _CONSUMPTION_WEEK[_weekday(start, seconds)]
    value = rng.poisson(mu).astype(float)
    return MetricSeries(TUKETIM_MIKTAR, numbers[r_idx], seconds, value, mu, np.sqrt(mu), integer=True)


def _refill(rng: np.random.Generator, start: datetime, days: int, attendants: int) -> MetricSeries:
    per_day = 10
    # Stratified: a few attendants still span quick to slow.
    pace = 14.0 + 31.0 * rng.permutation((np.arange(attendants) + rng.uniform(size=attendants)) / attendants)
    shape = 10.0  # coefficient of variation 1/sqrt(10) ~ 0.32
    a_idx = np.repeat(np.arange(attendants), days * per_day)
    d_idx = np.tile(np.repeat(np.arange(days), per_day), attendants)
    slot = np.tile(np.arange(per_day), attendants * days)
    seconds = d_idx * 86400.0 + 8 * 3600.0 + slot * 3600.0 + rng.uniform(0, 3000, size=slot.size)
    mu = pace[a_idx] * _REFILL_WEEK[_weekday(start, seconds)]
    value = np.round(rng.gamma(shape, mu / shape), 1)
    return MetricSeries(DOLUM_SURE, a_idx + 1, seconds, value, mu, mu / np.sqrt(shape), integer=False)


def inject_anomalies(series: MetricSeries, rng: np.random.Generator, rate: float) -> MetricSeries:
    """Replace ``rate`` of the values by global and ``rate`` by contextual anomalies (see module doc)."""
    n = series.value.size
    kind = np.zeros(n, dtype=np.int8)
    normal = series.value.copy()
    n_each = int(round(rate * n))
    if n_each == 0 or n < 4:
        series.kind = kind
        return series
    low, high = np.percentile(normal, [5, 95])
    top = float(normal.max())

    # Contextual first: only where the hotel's ordinary range reaches far outside the entity's own.
    up_from = series.expected + CONTEXT_SIGMAS * series.sigma
    down_to = series.expected - CONTEXT_SIGMAS * series.sigma
    rounding = 1.0 if series.integer else 0.1
    can_up = up_from + rounding <= high
    can_down = down_to - rounding >= low
    candidates = np.flatnonzero(can_up | can_down)
    chosen_ctx = rng.choice(candidates, size=min(n_each, candidates.size), replace=False)
    for i in chosen_ctx:
        go_up = can_up[i] and (not can_down[i] or rng.random() < 0.5)
        if go_up:
            lo, hi = np.ceil(up_from[i] / rounding) * rounding, high
        else:
            lo, hi = low, np.floor(down_to[i] / rounding) * rounding
        value = rng.uniform(lo, hi)
        value = np.round(value / rounding) * rounding
        series.value[i] = min(max(value, lo), hi)
    kind[chosen_ctx] = 2

    remaining = np.flatnonzero(kind == 0)
    chosen_global = rng.choice(remaining, size=min(n_each, remaining.size), replace=False)
    factor = rng.uniform(*GLOBAL_FACTOR, size=chosen_global.size)
    values = top * factor
    series.value[chosen_global] = np.round(values) if series.integer else np.round(values, 1)
    kind[chosen_global] = 1
    series.kind = kind
    return series


COPY_CHUNK = 100_000


def _copy_rows(rows: Iterable[tuple[str, int, float, datetime, str]]) -> int:
    """PostgreSQL: stream the rows through COPY (an order of magnitude faster than INSERT).

    The text is built and sent ``COPY_CHUNK`` rows at a time, in the session's
    transaction, so memory stays flat however many rows there are.
    """
    connection = db.session.connection().connection.driver_connection
    count = 0
    with connection.cursor() as cursor:
        for chunk in _chunks(rows, COPY_CHUNK):
            buffer = io.StringIO()
            buffer.writelines(f"{m}\t{e}\t{v!r}\t{ts.isoformat()}\t{x}\n" for m, e, v, ts, x in chunk)
            buffer.seek(0)
            cursor.copy_expert(
                "COPY ml_metrics (metric_type, entity_id, metric_value, timestamp, extra_data) FROM STDIN", buffer
            )
            count += len(chunk)
    return count


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def generate_demo_data(rooms: int = 120, products: int = 40, attendants: int = 8, days: int = 60,
                       seed: int = DEFAULT_SEED, end: Optional[datetime] = None,
                       anomaly_rate: float = DEFAULT_ANOMALY_RATE) -> dict[str, Any]:
    """Generate and insert the demo hotel's observations (one transaction); return the counts.

    Batch work, called at the top of a command: it first ends the session's
    current transaction (so the load gets a connection with the jobs'
    database bounds), which commits anything the caller left pending.

    Returns ``{"observations", "start", "end", "seed", "seconds", "by_metric_type":
    {metric_type: {"observations", "entities", "global", "contextual"}}}``.
    """
    for name, value, minimum in (("rooms", rooms, 1), ("products", products, 1), ("attendants", attendants, 1),
                                 ("days", days, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name}: must be a whole number >= {minimum} (got {value!r})")
    if not 0 <= anomaly_rate <= 0.2:
        raise ValueError(f"anomaly_rate: must be between 0 and 0.2 (got {anomaly_rate!r})")
    started = time.perf_counter()
    end = as_utc(end) if end is not None else utcnow()
    end = end.replace(second=0, microsecond=0)
    start = end - timedelta(days=days)
    rng = np.random.default_rng(seed)

    series = [
        _stock(rng, start, days, products),
        _consumption(rng, start, days, rooms),
        _refill(rng, start, days, attendants),
    ]
    summary: dict[str, Any] = {}
    for s in series:
        inject_anomalies(s, rng, anomaly_rate)
        summary[s.metric_type] = {
            "observations": int(s.value.size),
            "entities": int(np.unique(s.entity).size),
            "global": int(np.sum(s.kind == 1)),
            "contextual": int(np.sum(s.kind == 2)),
        }

    metric = np.concatenate([np.full(s.value.size, i, dtype=np.int8) for i, s in enumerate(series)])
    entity = np.concatenate([s.entity for s in series])
    seconds = np.concatenate([s.seconds for s in series])
    value = np.concatenate([s.value for s in series])
    kind = np.concatenate([s.kind for s in series])
    order = np.argsort(seconds, kind="stable")  # a real feed arrives in time order
    names = [s.metric_type for s in series]
    labels_json = {k: json.dumps(v) for k, v in _LABELS.items()}

    # Labels are fixed strings without tabs or backslashes: safe in COPY's text format as they are.
    stamps = (start + timedelta(seconds=float(seconds[i])) for i in order)
    # A bulk load is batch work: the jobs' database bounds (ML_JOB_STATEMENT_TIMEOUT_SECONDS), not a
    # request's (measured: one 100,000-row COPY outlasted the requests' 3 s on a slower machine).
    with bounds_profile(JOB):
        # A connection gets its profile's bounds at checkout (utils.db_bounds): end the session's
        # transaction so the load below checks one out under the jobs' profile, not one held since.
        db.session.commit()
        if db.session.get_bind().dialect.name == "postgresql":
            rows = ((names[metric[i]], int(entity[i]), float(value[i]), ts, labels_json[int(kind[i])])
                    for i, ts in zip(order, stamps))
            try:
                with wait_callback_suspended():  # psycopg2 refuses COPY under a wait callback
                    count = _copy_rows(rows)
                    db.session.commit()
            except BaseException:
                db.session.rollback()
                raise
            # Fresh statistics after a bulk load, so the scans' and training's
            # queries get index plans at once instead of after autovacuum's next visit.
            db.session.execute(text("ANALYZE ml_metrics"))
            db.session.commit()
        else:
            count = bulk_insert(
                {"metric_type": names[metric[i]], "entity_id": int(entity[i]), "metric_value": float(value[i]),
                 "timestamp": ts, "extra_data": _LABELS[int(kind[i])]}
                for i, ts in zip(order, stamps)
            )
    result = {
        "observations": count,
        "start": start.isoformat(),
        "end": end.isoformat(),
        "seed": seed,
        "seconds": round(time.perf_counter() - started, 3),
        "by_metric_type": summary,
    }
    events.emit("demo_data_generated", f"Generated {count} demo observations", observations=count,
                rooms=rooms, products=products, attendants=attendants, days=days, seed=seed)
    return result


def has_observations() -> bool:
    """True when ``ml_metrics`` holds at least one observation (not counting internal figures)."""
    from sqlalchemy import select

    from utils.ml.pipeline.observations import INTERNAL_METRIC_TYPES

    return db.session.execute(
        select(MLMetric.id).where(MLMetric.metric_type.not_in(INTERNAL_METRIC_TYPES)).limit(1)
    ).first() is not None
