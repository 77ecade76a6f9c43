"""Observations and labelled events as plain numpy arrays, and their CSV files.

A :class:`Series` is one metric type's observations, sorted by time:
``entity`` (int64; -1 stands for "no entity"), ``ts`` (float64 seconds since
the Unix epoch, UTC) and ``value`` (float64).  An :class:`Event` is a labelled
anomaly *window* of one entity: ``(metric_type, entity_id, kind, start, end)``,
both ends inclusive.  A :class:`Dataset` is the series of every metric type
plus the events.

CSV formats (UTF-8, header required, timestamps ISO 8601; no zone = UTC):

* observations: ``metric_type,entity_id,metric_value,timestamp`` — the header
  of ``flask ml import-metrics``, so a file exported for the service can be
  evaluated as it is (further columns such as ``extra_data`` are ignored);
* events: ``metric_type,entity_id,kind,start,end``.

Readers refuse bad input with a :class:`ValueError` naming the line, the
column and the rule.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

NO_ENTITY = -1
HOUR = 3600.0
DAY = 86400.0
OBSERVATION_COLUMNS = ("metric_type", "entity_id", "metric_value", "timestamp")
EVENT_COLUMNS = ("metric_type", "entity_id", "kind", "start", "end")


@dataclass
class Series:
    """One metric type's observations, sorted by ``(ts, entity)``."""

    metric_type: str
    entity: np.ndarray
    ts: np.ndarray
    value: np.ndarray

    def __post_init__(self) -> None:
        self.entity = np.asarray(self.entity, dtype=np.int64)
        self.ts = np.asarray(self.ts, dtype=float)
        self.value = np.asarray(self.value, dtype=float)
        if not (self.entity.shape == self.ts.shape == self.value.shape):
            raise ValueError(f"{self.metric_type}: entity, ts and value differ in length")
        order = np.lexsort((self.entity, self.ts))
        if np.any(order != np.arange(order.size)):
            self.entity, self.ts, self.value = self.entity[order], self.ts[order], self.value[order]

    def __len__(self) -> int:
        return int(self.ts.size)

    def slice(self, start: int, stop: int) -> "Series":
        return Series(self.metric_type, self.entity[start:stop], self.ts[start:stop], self.value[start:stop])

    def index_at(self, t: float) -> int:
        """Index of the first observation at or after ``t``."""
        return int(np.searchsorted(self.ts, t, side="left"))


@dataclass(frozen=True)
class Event:
    """A labelled anomaly window of one entity (both ends inclusive)."""

    metric_type: str
    entity_id: int
    kind: str
    start: float
    end: float


@dataclass
class Dataset:
    series: dict[str, Series]
    events: list[Event]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def start(self) -> float:
        return min(float(s.ts[0]) for s in self.series.values() if len(s))

    @property
    def end(self) -> float:
        return max(float(s.ts[-1]) for s in self.series.values() if len(s))


def iso(t: float) -> str:
    return datetime.fromtimestamp(float(t), tz=timezone.utc).isoformat()


def parse_time(text: str) -> float:
    """ISO 8601 -> epoch seconds; a time without a zone is UTC."""
    moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def labelled_mask(series: Series, events: Iterable[Event]) -> np.ndarray:
    """True for the observations that fall inside an event window of their entity."""
    mask = np.zeros(len(series), dtype=bool)
    for event in events:
        if event.metric_type != series.metric_type:
            continue
        lo = int(np.searchsorted(series.ts, event.start, side="left"))
        hi = int(np.searchsorted(series.ts, event.end, side="right"))
        mask[lo:hi] |= series.entity[lo:hi] == event.entity_id
    return mask


# ---------------------------------------------------------------------- CSV
def write_observations(path: str | Path, dataset: Dataset) -> int:
    """Write every observation (time order within each metric type); return the row count."""
    count = 0
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(OBSERVATION_COLUMNS)
        for name, series in dataset.series.items():
            for e, t, v in zip(series.entity.tolist(), series.ts.tolist(), series.value.tolist()):
                writer.writerow([name, "" if e == NO_ENTITY else e, repr(v), iso(t)])
                count += 1
    return count


def write_events(path: str | Path, events: Iterable[Event]) -> int:
    count = 0
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(EVENT_COLUMNS)
        for ev in events:
            writer.writerow([ev.metric_type, "" if ev.entity_id == NO_ENTITY else ev.entity_id, ev.kind,
                             iso(ev.start), iso(ev.end)])
            count += 1
    return count


def _rows(path: str | Path, columns: tuple[str, ...]) -> Iterable[tuple[int, dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: line 1: header must contain {', '.join(columns)} (missing {', '.join(missing)})")
        for line, row in enumerate(reader, start=2):
            yield line, row


def _field(path: Any, line: int, column: str, rule: str) -> ValueError:
    return ValueError(f"{path}: line {line}, column {column}: {rule}")


def _entity(path: Any, line: int, text: Optional[str]) -> int:
    text = (text or "").strip()
    if not text:
        return NO_ENTITY
    if not text.isdigit():
        raise _field(path, line, "entity_id", f"must be a whole number >= 0 or empty (got {text!r})")
    return int(text)


def _time(path: Any, line: int, column: str, text: Optional[str]) -> float:
    try:
        return parse_time(text or "")
    except ValueError:
        raise _field(path, line, column, f"must be an ISO 8601 time (got {text!r})") from None


def read_observations(path: str | Path) -> dict[str, Series]:
    """Read an observations CSV into one :class:`Series` per metric type."""
    columns: dict[str, tuple[list[int], list[float], list[float]]] = {}
    for line, row in _rows(path, OBSERVATION_COLUMNS):
        name = (row["metric_type"] or "").strip()
        if not name:
            raise _field(path, line, "metric_type", "must not be empty")
        try:
            value = float(row["metric_value"])
        except (TypeError, ValueError):
            raise _field(path, line, "metric_value", f"must be a number (got {row['metric_value']!r})") from None
        if not math.isfinite(value):
            raise _field(path, line, "metric_value", "must be finite")
        entity = _entity(path, line, row["entity_id"])
        ts = _time(path, line, "timestamp", row["timestamp"])
        target = columns.setdefault(name, ([], [], []))
        target[0].append(entity)
        target[1].append(ts)
        target[2].append(value)
    return {name: Series(name, np.asarray(e), np.asarray(t), np.asarray(v)) for name, (e, t, v) in columns.items()}


def read_events(path: str | Path) -> list[Event]:
    events = []
    for line, row in _rows(path, EVENT_COLUMNS):
        name = (row["metric_type"] or "").strip()
        kind = (row["kind"] or "").strip()
        if not name:
            raise _field(path, line, "metric_type", "must not be empty")
        if not kind:
            raise _field(path, line, "kind", "must not be empty")
        start = _time(path, line, "start", row["start"])
        end = _time(path, line, "end", row["end"])
        if end < start:
            raise _field(path, line, "end", "must not be before start")
        events.append(Event(name, _entity(path, line, row["entity_id"]), kind, start, end))
    return events


def read_dataset(observations: str | Path, events: Optional[str | Path] = None) -> Dataset:
    """Observations CSV (+ optional events CSV) -> :class:`Dataset` (no events: everything is normal)."""
    series = read_observations(observations)
    labels = read_events(events) if events is not None else []
    return Dataset(series, labels, {"source": str(observations), "labels": None if events is None else str(events)})
