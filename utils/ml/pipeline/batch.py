"""Detection input as arrays: values, and for observations their entity and observation ids.

Detection accepts plain numbers or observations (dicts with ``metric_value``
/ ``value``, ``entity_id`` and ``id`` / ``observation_id``; ORM rows and
SQLAlchemy rows work too); :class:`ObservationBatch` turns either into the
arrays scoring needs.  A value that is not a finite number is refused with
:class:`~utils.ml.validation.InvalidInput` naming its position.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from utils.ml.pipeline.features import observation_matrix
from utils.ml.validation import InvalidInput


@dataclass
class ObservationBatch:
    """Values (and, for observations, entity and observation ids) as arrays."""

    values: np.ndarray
    entity_ids: np.ndarray  # float, NaN where unknown
    observation_ids: Optional[np.ndarray] = None
    has_entities: bool = False
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
