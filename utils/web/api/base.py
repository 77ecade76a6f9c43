"""The building blocks of the API's pydantic models: field types, base models, the error body.

Request bodies are *strict* (a JSON string is not a number, ``true`` is not
``1``) and refuse unknown fields; non-finite numbers are refused everywhere.
Query models are lax only where a query string must be: "true" is a boolean
and "2" a number.  Response models ignore keys they do not declare, so a new
key in ``ModelManager.describe`` cannot break a response.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Annotated, Any, Literal, Optional

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints
from pydantic_core import PydanticCustomError

from utils.ml.pipeline.alerts import METHODS
from utils.ml.validation import MAX_ROW_ID
from utils.models import METRIC_TYPE_PATTERN, MODEL_TYPE_PATTERN


def _integral_float(value: Any) -> Any:
    """JSON Schema counts 7.0 as an integer; strict pydantic would not.  7.5 stays a float (and is refused)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def json_int(minimum: int, maximum: int, description: str = "") -> Any:
    """An integer in a JSON body: a JSON integer, or a number without a fraction (never a string or a boolean).

    The bounds sit under the validator so that the JSON Schema carries them as minimum/maximum.
    """
    return Annotated[int, Field(ge=minimum, le=maximum, description=description or None),
                     BeforeValidator(_integral_float)]


MetricType = Annotated[str, StringConstraints(pattern=METRIC_TYPE_PATTERN),
                       Field(description=f"metric type, {METRIC_TYPE_PATTERN}", examples=["stok_seviye"])]
ModelType = Annotated[str, StringConstraints(pattern=MODEL_TYPE_PATTERN),
                      Field(description=f"model type, {MODEL_TYPE_PATTERN}", examples=["isolation_forest"])]
RowId = Annotated[int, Field(ge=1, le=MAX_ROW_ID, description="a row id (32-bit, from 1)")]
EntityId = json_int(0, MAX_ROW_ID, "product, room or attendant id")
Method = Literal["isolation_forest_file", "isolation_forest_db", "z_score"]
if set(Method.__args__) != set(METHODS):  # type: ignore[attr-defined]  # one list of methods, not two
    raise ImportError("schemas.Method is out of step with utils.ml.pipeline.alerts.METHODS")


def _utc(value: datetime) -> datetime:
    """Aware UTC; naive input is taken as UTC.  Out-of-range offsets are a rule, not a crash."""
    try:
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    except OverflowError:
        raise PydanticCustomError("datetime_range", "must be a date-time between years 1 and 9999 in UTC") from None


UtcDatetime = Annotated[datetime, AfterValidator(_utc)]


def _not_a_number(value: Any) -> Any:
    # From a query string pydantic would read "1700000000" as a Unix time; the
    # document promises an ISO 8601 date-time, so hold it to that.
    if isinstance(value, str) and re.fullmatch(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*", value):
        raise PydanticCustomError("datetime_format", "must be an ISO 8601 date-time such as 2025-06-01T12:00:00Z")
    return value


QueryDatetime = Annotated[datetime, BeforeValidator(_not_a_number), AfterValidator(_utc)]

# The audit trail's who and why (activations, jobs).  Printable text only: these strings end up in the audit table.
_PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
Reason = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=_PRINTABLE)]
Actor = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")]


class BodyModel(BaseModel):
    """A JSON request body: strict types, no unknown fields, finite numbers."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class QueryModel(BaseModel):
    """Query-string parameters: coerced from text, no unknown names."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ResponseModel(BaseModel):
    """A response body; undeclared keys are dropped, not rejected."""

    model_config = ConfigDict(extra="ignore")


# ------------------------------------------------------------------- errors
class FieldError(ResponseModel):
    """One broken rule: ``index`` (batch item, when relevant), ``field`` and ``rule``."""

    index: Optional[int] = None
    field: str
    rule: str


class ErrorResponse(ResponseModel):
    """Every error: a one-line ``error``; validation errors also list each broken rule."""

    error: str
    errors: Optional[list[FieldError]] = None
    error_count: Optional[int] = Field(default=None, description="all broken rules, when errors is truncated")
