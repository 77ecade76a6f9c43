"""Detection input as arrays: values, and for observations their entity and observation ids.

Detection accepts plain numbers or observations (dicts with ``metric_value``
/ ``value``, ``entity_id`` and ``id`` / ``observation_id``; ORM rows and
SQLAlchemy rows work too); :class:`ObservationBatch` turns either into the
arrays scoring needs.  A value that is not a finite number is refused with
:class:`~utils.ml.validation.InvalidInput` naming its position.
"""
from __future__ import annotations

import math
import queue
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from utils.ml.pipeline.features import observation_matrix
from utils.ml.pipeline.producer import READ_TIMEOUT_MS, ReadStopped, put_polling, start_producer, stop_producer, \
    take_polling
from utils.ml.validation import InvalidInput


@dataclass
class ObservationBatch:
    """Values (and, for observations, entity and observation ids) as arrays."""

    values: np.ndarray
    entity_ids: np.ndarray  # float, NaN where unknown
    observation_ids: Optional[np.ndarray] = None
    has_entities: bool = False
    # Scan pages only: the last id read (None for an empty page) and how many
    # rows read were dropped as unusable (see utils.ml.pipeline.bad_rows), so
    # the watermark steps over a bad row once instead of re-reading it forever.
    last_read_id: Optional[int] = None
    dropped: int = 0
    # Observation times, UTC epoch seconds (float): what causal scoring orders by; None when unknown.
    timestamps: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return int(self.values.shape[0])

    @property
    def matrix(self) -> np.ndarray:
        return observation_matrix(self.entity_ids, self.values)

    @classmethod
    def from_arrays(cls, values: Any, entity_ids: Any = None, observation_ids: Any = None,
                    timestamps: Any = None) -> "ObservationBatch":
        values = np.asarray(values, dtype=float).reshape(-1)
        if not np.all(np.isfinite(values)):
            bad = int(np.flatnonzero(~np.isfinite(values))[0])
            raise InvalidInput(f"values[{bad}]", "must be a finite number")
        if entity_ids is None:
            entities = np.full(values.shape[0], np.nan)
        else:
            entities = np.asarray(entity_ids, dtype=float).reshape(-1)
        ids = None if observation_ids is None else np.asarray(observation_ids, dtype=np.int64).reshape(-1)
        times = None if timestamps is None else np.asarray(timestamps, dtype=float).reshape(-1)
        return cls(values, entities, ids, has_entities=entity_ids is not None, timestamps=times)

    @classmethod
    def from_values(cls, values: Sequence[Any]) -> "ObservationBatch":
        """Accept numbers, observation dicts, ORM objects or SQLAlchemy rows."""
        if isinstance(values, ObservationBatch):
            return values
        if isinstance(values, np.ndarray) and values.dtype.kind in "fiu":
            return cls.from_arrays(values)
        items = list(values)
        numbers: list[float] = []
        entities: list[float] = []
        ids: list[Optional[int]] = []
        observation_like = False
        for index, item in enumerate(items):
            value, entity, obs_id = _unpack(item, index)
            observation_like = observation_like or entity is not _PLAIN
            numbers.append(value)
            entities.append(np.nan if entity in (None, _PLAIN) else float(entity))
            ids.append(obs_id)
        batch = cls.from_arrays(numbers)
        batch.entity_ids = np.asarray(entities, dtype=float)
        batch.has_entities = observation_like
        if observation_like and ids and all(i is not None for i in ids):
            batch.observation_ids = np.asarray(ids, dtype=np.int64)
        return batch


_PLAIN = object()  # marker: the item was a bare number, not an observation


def _unpack(item: Any, index: int) -> tuple[float, Any, Optional[int]]:
    if isinstance(item, bool):
        raise InvalidInput(f"values[{index}]", "must be a number or an observation, not a boolean")
    if isinstance(item, (int, float, np.integer, np.floating)):
        return _finite(item, index), _PLAIN, None
    if hasattr(item, "_mapping"):  # SQLAlchemy Row
        item = item._mapping
    if isinstance(item, Mapping):  # dicts, RowMapping
        raw = item.get("metric_value", item.get("value"))
        obs_id = item.get("observation_id", item.get("id"))
        entity = item.get("entity_id")
    elif hasattr(item, "metric_value"):  # ORM object (MLMetric)
        raw, entity, obs_id = item.metric_value, getattr(item, "entity_id", None), getattr(item, "id", None)
    else:
        raise InvalidInput(f"values[{index}]", f"must be a number or an observation, got {type(item).__name__}")
    if raw is None or isinstance(raw, bool):
        raise InvalidInput(f"values[{index}].metric_value", "must be a number")
    return _finite(raw, index), entity, None if obs_id is None else int(obs_id)


def _finite(value: Any, index: int) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"values[{index}]", f"must be a number (got {value!r})") from None
    if not math.isfinite(number):
        raise InvalidInput(f"values[{index}]", f"must be a finite number (got {value!r})")
    return number


# ---------------------------------------------------------------------------
# Reading a scan's batches: one page of observations per call, in id order.
#
# A page is ``metric_type``'s rows with ``after < id <= upper``, the first
# ``limit`` of them by id (keyset paging on idx_ml_metrics_type_id).
# PostgreSQL sends the page as ONE bytea value: each row packed server-side
# into 32 fixed-width big-endian bytes (int8send/float8send), which numpy reads
# in one pass.  That is what made binary COPY fast (no Python tuple per row,
# little time holding the GIL, which matters when the page is read on a second
# thread while the first one scores: :class:`BatchReader` below), and unlike
# COPY it works under the process's psycopg2 wait callback (utils.db_bounds),
# which refuses COPY.

_PAGE_SQL = ("SELECT id, entity_id, metric_value, {ts} FROM ml_metrics "
             "WHERE metric_type = {p} AND id > {p} AND id <= {p} ORDER BY id LIMIT {p}")
# A missing entity, value or time becomes NaN, so every row has the same width.
_PACKED_SQL = ("SELECT string_agg(int8send(id) || float8send(coalesce(entity_id::float8, 'NaN')) "
               "|| float8send(coalesce(metric_value::float8, 'NaN')) "
               "|| float8send(coalesce(CAST(EXTRACT(EPOCH FROM timestamp) AS float8), 'NaN')), ''::bytea ORDER BY id) "
               "FROM (SELECT id, entity_id, metric_value, timestamp FROM ml_metrics "
               "WHERE metric_type = %s AND id > %s AND id <= %s ORDER BY id LIMIT %s) AS page")
_PACKED_ROW = np.dtype([("id", ">i8"), ("entity", ">f8"), ("value", ">f8"), ("ts", ">f8")])


def read_page(dbapi_connection: Any, dialect_name: str, metric_type: str, after: int, upper: int,
              limit: int) -> ObservationBatch:
    """One page of the scan (see above) through a DBAPI connection, in whatever transaction it is in."""
    cursor = dbapi_connection.cursor()
    try:
        if dialect_name == "postgresql":
            cursor.execute(_PACKED_SQL, (metric_type, after, upper, limit))
            return decode_packed(cursor.fetchone()[0])
        from utils.ml.pipeline.history import epoch_sql

        placeholder = "%s" if dialect_name != "sqlite" else "?"
        cursor.execute(_PAGE_SQL.format(p=placeholder, ts=epoch_sql(dialect_name)), (metric_type, after, upper, limit))
        rows = cursor.fetchall()
    finally:
        cursor.close()
    # None -> NaN in the same C-level pass; float64 holds ids exactly up to 2**53.
    table = np.array(rows, dtype=float).reshape(-1, 4)
    return _page(table[:, 2], table[:, 1], table[:, 0].astype(np.int64), table[:, 3])


def _page(values: np.ndarray, entity_ids: np.ndarray, observation_ids: np.ndarray,
          timestamps: np.ndarray) -> ObservationBatch:
    """A scan page without its unusable rows (non-finite value or no time), remembering the last id read."""
    ok = np.isfinite(values) & np.isfinite(timestamps)
    dropped = int(ok.size - int(ok.sum()))
    last_read_id = int(observation_ids[-1]) if observation_ids.size else None
    if dropped:
        values, entity_ids, observation_ids, timestamps = (values[ok], entity_ids[ok], observation_ids[ok],
                                                           timestamps[ok])
    page = ObservationBatch(values, entity_ids, observation_ids, has_entities=True, timestamps=timestamps)
    page.last_read_id, page.dropped = last_read_id, dropped
    return page


def decode_packed(data: Any) -> ObservationBatch:
    """The page in a ``_PACKED_SQL`` value (None: no rows); ValueError if the bytes are not whole rows."""
    if data is None:
        data = b""
    view = memoryview(data)
    if len(view) % _PACKED_ROW.itemsize:
        raise ValueError(f"packed page of {len(view)} bytes is not whole rows of {_PACKED_ROW.itemsize}")
    rows = np.frombuffer(view, dtype=_PACKED_ROW)
    return _page(rows["value"].astype(float), rows["entity"].astype(float), rows["id"].astype(np.int64),
                 rows["ts"].astype(float))


class BatchReader:
    """A scan's pages (:func:`read_page`), read up to ``read_ahead`` pages ahead of the scan.

    ``fetch(after)`` returns the page that starts after id ``after`` —
    the same rows a read in the scan's own transaction would return, since
    every id up to ``upper`` is settled.  With ``read_ahead`` > 0 on
    PostgreSQL a thread reads the following pages on its own connection
    (one short transaction per page) while the caller scores; the pages wait
    in a queue of ``read_ahead`` places, so at most ``read_ahead`` + 2 pages
    are in memory (queued, being read, being scored).  If ``after`` is not
    where the thread's pages start (another scan moved the watermark), the
    thread is restarted there.  An error on the thread is raised by the
    ``fetch`` that would have returned the failed page.  ``close()`` (or
    leaving the ``with`` block) stops the thread promptly; so does ``stop``,
    an event the caller may set from anywhere, after which ``fetch`` raises
    :class:`ReadStopped`.  Otherwise (SQLite, ``read_ahead`` = 0) each
    ``fetch`` reads in the session's current transaction.
    """

    def __init__(self, metric_type: str, upper: Optional[int], limit: int, *, read_ahead: Optional[int] = None,
                 session: Any = None, stop: Optional[threading.Event] = None) -> None:
        if session is None:
            from utils.extensions import db
            session = db.session
        if read_ahead is None:
            from utils.settings import current
            read_ahead = int(current("ML_SCAN_READ_AHEAD"))
        self.session, self.metric_type, self.upper, self.limit = session, metric_type, upper or 0, limit
        self.engine = session.get_bind()
        self.read_ahead = read_ahead if self.engine.dialect.name == "postgresql" else 0
        self.stop = stop or threading.Event()
        self.pages_read = 0  # by the thread: how far it got (the memory bound is checked against it)
        self._thread: Optional[threading.Thread] = None
        self._queue: "queue.Queue[tuple[int, Any]]" = queue.Queue()
        self._halt = threading.Event()  # stops the current thread only (restart, close)
        self._next_after: Optional[int] = None

    def __enter__(self) -> "BatchReader":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def fetch(self, after: int) -> ObservationBatch:
        if self.stop.is_set():
            raise ReadStopped(self.metric_type)
        if not self.read_ahead:
            connection = self.session.connection()
            return read_page(connection.connection.dbapi_connection, connection.dialect.name,
                             self.metric_type, after, self.upper, self.limit)
        if self._thread is None or after != self._next_after:
            self._start(after)
        start, item = self._take()
        if isinstance(item, BaseException):
            self._next_after = None  # the next fetch starts a fresh thread
            raise item
        if start != after:  # cannot happen: pages are queued in order from where the thread started
            raise RuntimeError(f"scan reader out of step: page after {start}, wanted after {after}")
        self._next_after = item.last_read_id
        return item

    def close(self) -> None:
        """Stop the reading thread (if any) and wait for it to let go of its connection."""
        thread, self._thread = self._thread, None
        stop_producer(self._halt, thread)

    def _start(self, after: int) -> None:
        self.close()
        self._halt = threading.Event()
        self._queue = queue.Queue(maxsize=self.read_ahead)
        self._thread = start_producer(self._produce, (after, self._queue, self._halt),
                                      f"scan-reader-{self.metric_type}")

    def _take(self) -> tuple[int, Any]:
        return take_polling(self._queue, self._thread, self.stop, f"scan reader of {self.metric_type}",
                            self.metric_type)

    def _produce(self, after: int, pages: "queue.Queue[tuple[int, Any]]", halt: threading.Event) -> None:
        """The thread: pages from ``after`` on, ending with an empty one (or the error that ended it)."""
        def put(item: tuple[int, Any]) -> bool:
            return put_polling(pages, item, halt, self.stop)

        try:
            with self.engine.connect() as connection:
                while not (halt.is_set() or self.stop.is_set()):
                    if after >= self.upper:
                        page = _page(np.empty(0), np.empty(0), np.empty(0, dtype=np.int64), np.empty(0))
                    else:
                        with connection.begin():
                            connection.exec_driver_sql(f"SET LOCAL statement_timeout = {READ_TIMEOUT_MS}")
                            page = read_page(connection.connection.dbapi_connection, "postgresql",
                                             self.metric_type, after, self.upper, self.limit)
                        self.pages_read += 1
                    if not put((after, page)) or page.last_read_id is None:
                        return
                    after = page.last_read_id
        except BaseException as exc:  # handed to the scan, which raises it where the page was wanted
            put((after, exc))
