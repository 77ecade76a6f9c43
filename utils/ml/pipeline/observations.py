"""Observations: validating and writing what the hotel app measures.

An observation is one ``ml_metrics`` row: ``metric_type``, ``entity_id``,
``metric_value``, ``timestamp`` and ``extra_data``.  Every way in (the REST
API, ``flask ml import-metrics``, the demo data) goes through this module:

* :class:`ObservationIn` is the one definition of a valid observation;
* :func:`ingest_observations` validates *every* item before writing any, so a
  bad batch changes nothing, and raises :class:`ObservationValidationError`
  whose ``errors`` name the item, the field and the rule;
* :func:`~utils.ml.pipeline.csv_import.import_csv` (in :mod:`.csv_import`)
  does the same for a CSV file, naming line and column;
* :func:`bulk_insert` is the fast Core ``INSERT`` of many rows used by all three.

The ML subsystem writes its own figures to the same table (for instance
``model_load_time``); those metric types are listed in
:data:`INTERNAL_METRIC_TYPES`, refused from outside, and never trained on or
scanned.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Annotated, Any, Iterable, Mapping, Optional, Sequence, Union

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, StringConstraints, ValidationError, field_validator
from typing_extensions import TypeAliasType

from utils.extensions import db
from utils.ml.validation import MAX_ROW_ID, NUL_FREE_PATTERN, NUL_RULE, InvalidInput, check_name, rule_text
from utils.models import METRIC_TYPE_PATTERN, MLMetric

# Metric types the ML subsystem writes about itself.  The one place they are
# listed: training, scans and ingestion all consult it.
MODEL_LOAD_TIME = "model_load_time"
INTERNAL_METRIC_TYPES: frozenset[str] = frozenset({MODEL_LOAD_TIME})

# The minibar metric types of the contract (any other valid name is accepted too).
STOK_SEVIYE = "stok_seviye"
TUKETIM_MIKTAR = "tuketim_miktar"
DOLUM_SURE = "dolum_sure"

# The fields of an observation: the CSV header's columns, and the allowed
# fields an "unknown field" rule lists.
CSV_COLUMNS = ("metric_type", "entity_id", "metric_value", "timestamp", "extra_data")
# Rows per INSERT statement: large enough to be fast, small enough to keep the
# statement (and its parameters) modest in memory.
INSERT_CHUNK = 5000
# PostgreSQL INTEGER: an entity id beyond it would fail at insert, not at validation.
_MAX_ENTITY_ID = MAX_ROW_ID


# extra_data is any JSON object whose keys and strings, at any depth, hold no NUL.
# The recursive type is what the OpenAPI document declares (so a client, or a
# fuzzer generating "valid" bodies, knows the rule); the check itself is
# _check_extra_data, which names one rule instead of every branch of a union.
NulFreeText = Annotated[str, StringConstraints(pattern=NUL_FREE_PATTERN)]
ExtraValue = TypeAliasType(
    "ExtraValue",
    Union[NulFreeText, int, float, bool, None, list["ExtraValue"], dict[NulFreeText, "ExtraValue"]],  # type: ignore[misc]
)


def _check_extra_data(value: Any) -> Optional[dict[str, Any]]:
    """``extra_data``: None or a JSON object without NaN/Infinity and without NUL anywhere."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError("must be a JSON object (a dictionary), or null")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"must be JSON-serialisable without NaN/Infinity ({exc})") from None
    # PostgreSQL's jsonb cannot hold U+0000 (and a legacy json column makes
    # every later ->> of the row fail for the whole query).
    if _has_nul(value):
        raise ValueError(f"{NUL_RULE} in any key or string")
    return value


ExtraData = Annotated[Optional[dict[str, Any]],
                      PlainValidator(_check_extra_data, json_schema_input_type=Optional[dict[NulFreeText, ExtraValue]])]


class ObservationValidationError(InvalidInput):
    """Some items were invalid; nothing was written.

    ``errors`` is a list of dicts: ``{"index", "field", "rule"}`` for
    :func:`ingest_observations`, ``{"line", "column", "rule"}`` for
    :func:`~utils.ml.pipeline.csv_import.import_csv`; ``field`` and ``rule``
    are the first one's.
    """

    def __init__(self, errors: list[dict[str, Any]], message: Optional[str] = None) -> None:
        first = errors[0] if errors else {}
        if message is None:
            where = (f"line {first['line']}, column {first.get('column')}" if "line" in first
                     else f"item {first.get('index')}, field {first.get('field')}")
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            message = f"{where}: {first.get('rule')}{more}"
        super().__init__(str(first.get("field") or first.get("column") or "items"), str(first.get("rule")),
                         errors=errors, message=message)


class ObservationIn(BaseModel):
    """One observation as the hotel app sends it.

    ``timestamp`` is ISO 8601; a value without a time zone is taken as UTC.
    """

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    metric_type: str = Field(pattern=METRIC_TYPE_PATTERN, description="e.g. stok_seviye, tuketim_miktar, dolum_sure")
    entity_id: Optional[int] = Field(default=None, ge=0, le=_MAX_ENTITY_ID,
                                     description="product, room or attendant id")
    metric_value: float = Field(allow_inf_nan=False)
    timestamp: datetime
    extra_data: ExtraData = None

    @field_validator("metric_type")
    @classmethod
    def _not_internal(cls, value: str) -> str:
        if value in INTERNAL_METRIC_TYPES:
            raise ValueError(f"{value!r} is reserved for the ML subsystem's own figures")
        return value

    @field_validator("entity_id", mode="before")
    @classmethod
    def _whole_number(cls, value: Any) -> Any:
        # Refuse 1.5 and True rather than silently truncating or coercing them;
        # 7.0 is a whole number (JSON Schema agrees), so it becomes 7.
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError("must be a whole number")
        if isinstance(value, float):
            return int(value)
        return value

    @field_validator("metric_value", mode="before")
    @classmethod
    def _number_not_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("must be a number, not a boolean")
        return value

    @field_validator("timestamp")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        try:
            return value.astimezone(timezone.utc)
        except OverflowError:  # year 1 with a positive offset runs off the calendar
            raise ValueError("must be a date-time between years 1 and 9999 in UTC") from None

    def to_row(self) -> dict[str, Any]:
        return self.model_dump()


def _has_nul(value: Any) -> bool:
    """True when a key or string anywhere inside ``value`` (parsed JSON) contains U+0000."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(key) or _has_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_has_nul(item) for item in value)
    return False


def check_observed_metric_type(metric_type: Any, never: str) -> str:
    """``metric_type`` if it names observations: a valid name, not an internal figure.

    Raises :class:`~utils.ml.validation.InvalidInput` naming the field and the
    rule; ``never`` completes "an internal figure, never ..." (trained on, scanned).
    """
    check_name("metric_type", metric_type)
    if metric_type in INTERNAL_METRIC_TYPES:
        raise InvalidInput("metric_type", f"{metric_type!r} is an internal figure, never {never}")
    return metric_type


def _rule(error: Mapping[str, Any]) -> str:
    """The rule a pydantic error broke, in words (shared with :mod:`.csv_import`)."""
    return rule_text(error, unknown=f"unknown field (allowed: {', '.join(CSV_COLUMNS)})")


def _field(error: Mapping[str, Any]) -> str:
    """Where a pydantic error is, dotted (``extra_data.key``); ``item`` for the whole item."""
    loc = error.get("loc") or ()
    return ".".join(str(part) for part in loc) or "item"


def validate_observations(items: Sequence[Any], *, max_items: int = 10000) -> list[ObservationIn]:
    """Validate every item; raise :class:`ObservationValidationError` listing all problems."""
    if not isinstance(items, (list, tuple)):
        raise ObservationValidationError([{"index": None, "field": "items", "rule": "must be a list of observations"}])
    if len(items) == 0:
        raise ObservationValidationError([{"index": None, "field": "items", "rule": "must not be empty"}])
    if len(items) > max_items:
        raise ObservationValidationError(
            [{"index": None, "field": "items", "rule": f"at most {max_items} observations per request (got {len(items)})"}]
        )
    valid: list[ObservationIn] = []
    errors: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            errors.append({"index": index, "field": "item", "rule": "must be an object"})
            continue
        try:
            valid.append(ObservationIn.model_validate(dict(item)))
        except ValidationError as exc:
            errors.extend({"index": index, "field": _field(e), "rule": _rule(e)} for e in exc.errors())
    if errors:
        raise ObservationValidationError(errors)
    return valid


def bulk_insert(rows: Iterable[Mapping[str, Any]], *, chunk: int = INSERT_CHUNK, commit: bool = True) -> int:
    """Insert already-valid observation rows with Core ``INSERT`` statements, in chunks.

    One transaction for everything (committed at the end unless ``commit`` is
    false): a failure part-way leaves nothing behind.  Returns the row count.
    """
    table = MLMetric.__table__
    session = db.session
    count = 0
    batch: list[Mapping[str, Any]] = []
    try:
        for row in rows:
            batch.append(row)
            if len(batch) >= chunk:
                session.execute(table.insert(), batch)
                count += len(batch)
                batch = []
        if batch:
            session.execute(table.insert(), batch)
            count += len(batch)
        if commit:
            session.commit()
    except BaseException:
        session.rollback()
        raise
    return count


def ingest_observations(items: list[dict[str, Any]], *, max_items: int = 10000) -> int:
    """Validate all ``items``, then write them in one transaction; return how many were written.

    Raises :class:`ObservationValidationError` (``errors``: index, field, rule)
    without writing anything if any item is invalid.
    """
    valid = validate_observations(items, max_items=max_items)
    return bulk_insert(obs.to_row() for obs in valid)
