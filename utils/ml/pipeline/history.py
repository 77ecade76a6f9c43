"""Each entity's own recent history: what causal scoring compares an observation with.

The causal detector (:mod:`utils.ml.detector.model`) and the per-entity
Z-score fallback judge an observation against the same entity's previous
observations only (at most ``HISTORY`` = 48 of them, by timestamp).  This
module reads them from ``ml_metrics``:

* :func:`load_history` — the last ``HISTORY`` observations of each given
  entity of one metric type, before a time or up to an id, in one query
  (``ROW_NUMBER() OVER (PARTITION BY entity_id ...)``; PostgreSQL and SQLite
  3.25+ both have window functions);
* :class:`HistoryCache` — what a scan uses across its batches: the first
  batch reads the history of its entities from the database, later batches
  read only entities not seen yet, and every scored batch is appended (the
  rows just scored are the next batch's history).

Entity ids are int64 here; an observation without an entity is
:data:`NO_ENTITY` (all such rows of a metric type form one series).  Times
are UTC epoch seconds (float), computed by the database itself so a batch
converts to numpy in one pass.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from utils.ml.detector.causal import HISTORY
from utils.ml.detector.model import recent_history

NO_ENTITY = -(2 ** 62)  # no real entity id (a 32-bit integer column) can be this
History = tuple[np.ndarray, np.ndarray, np.ndarray]  # (entity int64, epoch seconds, value)
_IN_CHUNK = 500  # entity ids per IN (...) list


def empty_history() -> History:
    return np.empty(0, dtype=np.int64), np.empty(0), np.empty(0)


def entity_codes(entity_ids: np.ndarray) -> np.ndarray:
    """Float entity ids (NaN for none) -> int64 codes (:data:`NO_ENTITY` for none)."""
    entity_ids = np.asarray(entity_ids, dtype=float)
    return np.where(np.isnan(entity_ids), NO_ENTITY, np.nan_to_num(entity_ids)).astype(np.int64)


def epoch_sql(dialect: str, column: str = "timestamp") -> str:
    """SQL for ``column`` as UTC epoch seconds (double) on ``dialect``."""
    if dialect == "postgresql":
        return f"CAST(EXTRACT(EPOCH FROM {column}) AS double precision)"
    if dialect == "sqlite":
        # SQLAlchemy stores UTC text; julianday also understands a +HH:MM suffix if a writer added one.
        # Its double arithmetic is exact to ~10 us: rounded to the millisecond, whole times come out whole.
        return f"round((julianday({column}) - 2440587.5) * 86400.0, 3)"
    raise RuntimeError(f"unsupported database dialect {dialect!r}: PostgreSQL or SQLite expected")


def _query(connection: Any, metric_type: str, entities: list[int], with_null: bool, upto_id: Optional[int],
           before: Optional[float], k: int) -> list[tuple]:
    dialect = connection.dialect.name
    p = "?" if connection.dialect.paramstyle == "qmark" else "%s"
    where = [f"metric_type = {p}"]
    params: list[Any] = [metric_type]
    if upto_id is not None:
        where.append(f"id <= {p}")
        params.append(int(upto_id))
    if before is not None:
        where.append(f"{epoch_sql(dialect)} < {p}")
        params.append(float(before))
    who = []
    if entities:
        who.append(f"entity_id IN ({', '.join([p] * len(entities))})")
        params.extend(entities)
    if with_null:
        who.append("entity_id IS NULL")
    where.append("(" + " OR ".join(who) + ")")
    sql = (f"SELECT entity_id, ts, metric_value FROM (SELECT entity_id, {epoch_sql(dialect)} AS ts, metric_value, "
           f"ROW_NUMBER() OVER (PARTITION BY entity_id ORDER BY timestamp DESC, id DESC) AS rn "
           f"FROM ml_metrics WHERE {' AND '.join(where)}) h WHERE rn <= {p}")
    params.append(int(k))
    cursor = connection.connection.dbapi_connection.cursor()
    try:
        cursor.execute(sql, tuple(params))
        return cursor.fetchall()
    finally:
        cursor.close()


def load_history(session: Any, metric_type: str, entities: np.ndarray, *, upto_id: Optional[int] = None,
                 before: Optional[float] = None, k: int = HISTORY) -> History:
    """The last ``k`` observations of each entity in ``entities`` (int64 codes) of ``metric_type``.

    Only rows with ``id <= upto_id`` (a scan: what earlier scans covered)
    and/or a timestamp before ``before`` (epoch seconds: on-demand detection)
    count.  Runs on the session's current connection and transaction.
    """
    wanted = np.unique(np.asarray(entities, dtype=np.int64))
    with_null = bool(np.any(wanted == NO_ENTITY))
    ids = [int(e) for e in wanted if e != NO_ENTITY]
    connection = session.connection()
    rows: list[tuple] = []
    chunks = [ids[i:i + _IN_CHUNK] for i in range(0, len(ids), _IN_CHUNK)] or [[]]
    for n, chunk in enumerate(chunks):
        if chunk or (with_null and n == 0):
            rows += _query(connection, metric_type, chunk, with_null and n == 0, upto_id, before, k)
    if not rows:
        return empty_history()
    table = np.array(rows, dtype=float).reshape(-1, 3)
    return entity_codes(table[:, 0]), table[:, 1], table[:, 2]


class HistoryCache:
    """Per-entity recent history across a scan's batches (see the module docstring)."""

    def __init__(self, session: Any, metric_type: str, k: int = HISTORY) -> None:
        self.session, self.metric_type, self.k = session, metric_type, k
        self.entity, self.ts, self.value = empty_history()
        self._known: set[int] = set()
        self.loaded_rows = 0

    def for_batch(self, entities: np.ndarray, upto_id: int) -> History:
        """The history of ``entities``: cached, plus rows ``<= upto_id`` of any entity not seen before."""
        codes = np.unique(np.asarray(entities, dtype=np.int64))
        missing = np.array([e for e in codes.tolist() if e not in self._known], dtype=np.int64)
        if missing.size:
            e, t, v = load_history(self.session, self.metric_type, missing, upto_id=upto_id, k=self.k)
            self.loaded_rows += int(e.size)
            self._append(e, t, v)
            self._known.update(missing.tolist())
        mine = np.isin(self.entity, codes)
        return self.entity[mine], self.ts[mine], self.value[mine]

    def assume_empty(self, entities: np.ndarray) -> None:
        """Treat ``entities`` as having no history before the scan (nothing to read for them)."""
        self._known.update(np.unique(np.asarray(entities, dtype=np.int64)).tolist())

    def advance(self, entities: np.ndarray, ts: np.ndarray, values: np.ndarray) -> None:
        """Add the rows just scored; keep the last ``k`` of each entity."""
        self._known.update(np.unique(entities).tolist())
        self._append(np.asarray(entities, dtype=np.int64), np.asarray(ts, dtype=float),
                     np.asarray(values, dtype=float))

    def _append(self, e: np.ndarray, t: np.ndarray, v: np.ndarray) -> None:
        entity, ts, value = np.concatenate([self.entity, e]), np.concatenate([self.ts, t]), \
            np.concatenate([self.value, v])
        keep = recent_history(entity, ts, self.k) if entity.size else np.empty(0, dtype=np.int64)
        self.entity, self.ts, self.value = entity[keep], ts[keep], value[keep]
