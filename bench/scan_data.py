"""Millions of observations into ``ml_metrics`` fast: one binary ``COPY FROM STDIN`` fed by numpy.

The rows look like the hotel's (3 metric types, 1,000 entities each with its
own level, 1 % of values several times their entity's level) and arrive in
time order, day by day, so ids grow with time as in production.  Indexes
other than constraints are dropped for the load and rebuilt after it (about
three times faster than maintaining them row by row), then the table is
vacuumed and analysed.
"""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

import numpy as np
import sqlalchemy as sa

from utils.db_deadline import wait_callback_suspended

TYPES = ("stok_seviye", "tuketim_miktar", "dolum_sure")
ENTITIES = 1000  # per metric type at 10 million rows; fewer in smaller runs (see _entities)
ANOMALY_SHARE = 0.01
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)
_HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
_TRAILER = (-1).to_bytes(2, "big", signed=True)


def _row_dtype(metric_type: str) -> np.dtype:
    """One row of (metric_type, entity_id, metric_value, timestamp) in binary COPY layout."""
    return np.dtype([("fields", ">i2"), ("len_type", ">i4"), ("type", f"S{len(metric_type)}"),
                     ("len_entity", ">i4"), ("entity", ">i4"), ("len_value", ">i4"), ("value", ">f8"),
                     ("len_ts", ">i4"), ("ts", ">i8")])


def _entities(rows: int) -> int:
    """Entities per metric type: 1,000 at 10 million rows, fewer in small runs, so each keeps a history.

    The causal detector trains only on observations with enough earlier ones of their own entity.
    """
    return max(5, min(ENTITIES, rows // 10_000))


def _chunks(rows: int, days: int, seed: int) -> Iterator[bytes]:
    rng = np.random.default_rng(seed)
    entities = _entities(rows)
    levels = {t: rng.lognormal(np.log(20.0), 0.8, entities) for t in TYPES}
    start = datetime.now(timezone.utc) - timedelta(days=days)
    start_us = int((start - _PG_EPOCH).total_seconds() * 1e6)
    day_us = 86_400 * 1_000_000
    yield _HEADER
    per_day = np.diff(np.linspace(0, rows, days + 1).round().astype(np.int64))
    for day, count in enumerate(per_day):
        for index, metric_type in enumerate(TYPES):
            n = int(count) // len(TYPES) + (1 if index < int(count) % len(TYPES) else 0)
            entity = rng.integers(0, entities, n)
            value = levels[metric_type][entity] * (1.0 + 0.15 * rng.standard_normal(n))
            odd = rng.random(n) < ANOMALY_SHARE
            value[odd] *= rng.uniform(3.0, 6.0, int(odd.sum()))
            table = np.zeros(n, dtype=_row_dtype(metric_type))
            table["fields"], table["len_type"], table["type"] = 4, len(metric_type), metric_type.encode()
            table["len_entity"], table["entity"] = 4, entity
            table["len_value"], table["value"] = 8, np.round(np.maximum(value, 0.0), 2)
            table["len_ts"] = 8
            table["ts"] = start_us + day * day_us + np.sort(rng.integers(0, day_us, n))
            yield table.tobytes()
    yield _TRAILER


class _Stream:
    """A read()-able file over the generated chunks, for ``copy_expert``."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks, self._pending = chunks, b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._pending) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._pending += chunk
        if size < 0:
            size = len(self._pending)
        out, self._pending = self._pending[:size], self._pending[size:]
        return out


def load_observations(engine: sa.Engine, rows: int, days: int = 400, seed: int = 14) -> dict[str, Any]:
    """``rows`` observations over the last ``days`` days; returns how long the load and the indexes took."""
    started = time.perf_counter()
    with engine.begin() as conn:
        indexes = conn.execute(sa.text(
            "SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.tablename = 'ml_metrics' AND NOT EXISTS "
            "(SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)")).all()
        for name, _ in indexes:
            conn.execute(sa.text(f'DROP INDEX "{name}"'))
        cursor = conn.connection.dbapi_connection.cursor()
        with wait_callback_suspended():  # psycopg2 refuses COPY under the app's wait callback
            cursor.copy_expert("COPY ml_metrics (metric_type, entity_id, metric_value, timestamp) FROM STDIN "
                               "(FORMAT binary)", _Stream(_chunks(rows, days, seed)), size=1 << 20)
        cursor.close()
        copied = time.perf_counter() - started
        for _, definition in indexes:
            conn.execute(sa.text(definition))
    indexed = time.perf_counter() - started - copied
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE ml_metrics"))
        loaded = conn.execute(sa.text("SELECT count(*) FROM ml_metrics")).scalar()
    return {"rows": int(loaded), "days": days, "entities_per_type": _entities(rows),
            "copy_seconds": round(copied, 1),
            "index_seconds": round(indexed, 1), "total_seconds": round(time.perf_counter() - started, 1),
            "copy_rows_per_second": round(rows / copied)}
