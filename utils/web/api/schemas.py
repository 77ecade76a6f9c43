"""Pydantic models of the JSON API: they validate requests, shape responses,
and generate the OpenAPI document (``utils.web.api.openapi``), so what the
document promises is exactly what the code enforces.

Request bodies are *strict* (a JSON string is not a number, ``true`` is not
``1``) and refuse unknown fields; non-finite numbers are refused everywhere.
Query models are lax only where a query string must be: "true" is a boolean
and "2" a number.  Response models ignore keys they do not declare, so a new
key in ``ModelManager.describe`` cannot break a response.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (
    AfterValidator,
    BeforeValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    RootModel,
    StringConstraints,
    Tag,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from utils.ml.pipeline.alerts import DEFAULT_PER_PAGE, MAX_PAGE, MAX_PER_PAGE, METHODS
from utils.ml.pipeline.observations import INTERNAL_METRIC_TYPES, ObservationIn
from utils.ml.validation import MAX_ROW_ID
from utils.models import METRIC_TYPE_PATTERN, MODEL_TYPE_PATTERN

MAX_BATCH = 10_000
# Printable text only: these strings end up in the audit table.
_PRINTABLE = r"^[^\x00-\x1f\x7f]*$"


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


# ------------------------------------------------------------------- models
class ModelQuery(QueryModel):
    model_type: Optional[ModelType] = None
    metric_type: Optional[MetricType] = None
    active: Optional[bool] = Field(default=None, description="true: only active versions; false: only inactive")


class ModelSummary(ResponseModel):
    """A model version's metadata (never its bytes)."""

    id: int
    model_type: str
    metric_type: str
    is_active: bool
    storage: Literal["file", "database"]
    path: Optional[str] = Field(description="absolute location of the file, null for a legacy BLOB row")
    storage_key: Optional[str] = Field(description="key of the file inside the models directory")
    size_bytes: Optional[int]
    size_kb: Optional[float]
    checksum_sha256: Optional[str]
    parameters: dict[str, Any]
    training_date: datetime
    created_at: datetime
    accuracy: Optional[float]
    precision: Optional[float]
    recall: Optional[float]
    sklearn_version: Optional[str]
    numpy_version: Optional[str]
    python_version: Optional[str]


class ModelList(ResponseModel):
    models: list[ModelSummary]
    count: int


class ModelMetrics(ResponseModel):
    """Quality figures; null when no labelled data existed (never invented)."""

    accuracy: Optional[float]
    precision: Optional[float]
    recall: Optional[float]


class StorageLocation(ResponseModel):
    backend: Literal["file", "database"]
    models_dir: Optional[str]
    key: Optional[str]
    path: Optional[str]
    file_exists: Optional[bool] = Field(description="null for a legacy row without a file")
    file_size_bytes: Optional[int]
    has_blob: bool = Field(description="the legacy BLOB is still kept (the fallback)")


class LibraryVersions(ResponseModel):
    sklearn: Optional[str]
    numpy: Optional[str]
    python: Optional[str]


class ModelVersion(ResponseModel):
    """One kept version of the same (model_type, metric_type)."""

    id: int
    is_active: bool
    created_at: datetime
    training_date: datetime
    accuracy: Optional[float]
    size_bytes: Optional[int]
    storage: Literal["file", "database"]


class Activation(ResponseModel):
    """One audited change of the active version."""

    id: int
    model_type: str
    metric_type: str
    from_model_id: Optional[int]
    to_model_id: int
    actor: str
    reason: Optional[str]
    activated_at: datetime


class ModelDetail(ModelSummary):
    metrics: ModelMetrics
    storage_location: StorageLocation
    library_versions: LibraryVersions
    versions: list[ModelVersion] = Field(description="every kept version of this model and metric type, newest first")
    activations: list[Activation] = Field(description="the latest activations of this model and metric type")


class ActivationList(ResponseModel):
    activations: list[Activation]
    count: int


Reason = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=_PRINTABLE)]
Actor = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")]


class ActivateRequest(BodyModel):
    """Optional body of an activation (promotion or rollback)."""

    reason: Optional[Reason] = Field(default=None, description="why, for the audit trail")
    actor: Optional[Actor] = Field(default=None, description="who, for the audit trail (recorded as api:<actor>)")


class ActivationResult(ResponseModel):
    model_id: int
    model_type: str
    metric_type: str
    from_model_id: Optional[int]
    actor: str
    reason: Optional[str]
    changed: bool = Field(description="false when the model was already the active version (nothing audited)")


# --------------------------------------------------------------------- jobs
def _not_internal(value: str) -> str:
    if value in INTERNAL_METRIC_TYPES:
        raise PydanticCustomError("internal_metric_type", "{value!r} is the ML subsystem's own figure, never trained "
                                  "on or scanned", {"value": value})
    return value


# The "not" keeps the document exact: a reserved name is invalid by the schema too.
JobMetricType = Annotated[MetricType, AfterValidator(_not_internal),
                          Field(json_schema_extra={"not": {"enum": sorted(INTERNAL_METRIC_TYPES)}})]


class JobRequest(BodyModel):
    """Optional body of ``/scan`` and ``/train``: who, and optionally one metric type."""

    actor: Optional[Actor] = Field(default=None, description="who started it (recorded as api:<actor>)")
    metric_type: Optional[JobMetricType] = Field(default=None, description="only this metric type (default: all)")

    def params(self) -> dict[str, Any]:
        return {"metric_type": self.metric_type} if self.metric_type else {}


KeepVersions = json_int(1, 1000)


class CleanupRequest(BodyModel):
    """Optional body of ``/cleanup``."""

    actor: Optional[Actor] = Field(default=None, description="who started it (recorded as api:<actor>)")
    keep_versions: Optional[KeepVersions] = Field(default=None,
                                                  description="versions kept per type (default: ML_KEEP_VERSIONS)")

    def params(self) -> dict[str, Any]:
        return {"keep_versions": self.keep_versions} if self.keep_versions else {}


class JobResult(ResponseModel):
    """A finished run (its row in ml_job_runs has the same id)."""

    job: str
    actor: str
    run_id: int
    trigger: str = Field(description="api for runs started here (cli, api or schedule in ml_job_runs)")
    status: str = Field(description="success (a failed run answers 500 with the reason)")
    scheduled_for: datetime
    duration_s: float
    result: Any = Field(description="what the job reported (counts, model ids...)")


# ------------------------------------------------------------------- ingest
class IngestRequest(BodyModel):
    """A batch of observations, written all-or-nothing."""

    observations: list[ObservationIn] = Field(min_length=1, max_length=MAX_BATCH,
                                              description=f"1 to {MAX_BATCH} observations")


class IngestResult(ResponseModel):
    inserted: int


# ------------------------------------------------------------------- detect
FiniteNumber = Annotated[float, Field(allow_inf_nan=False)]


class DetectObservation(BodyModel):
    entity_id: Optional[EntityId] = None
    metric_value: FiniteNumber
    timestamp: Optional[UtcDatetime] = None


class DetectValues(BodyModel):
    """Score bare numbers."""

    metric_type: MetricType
    values: list[FiniteNumber] = Field(min_length=1, max_length=MAX_BATCH)


class DetectObservations(BodyModel):
    """Score observations; each result repeats its entity and timestamp."""

    metric_type: MetricType
    observations: list[DetectObservation] = Field(min_length=1, max_length=MAX_BATCH)


def _detect_variant(value: Any) -> str:
    return "observations" if isinstance(value, dict) and "observations" in value else "values"


DETECT_TAGS = ("values", "observations")


class DetectRequest(RootModel[Annotated[
    Union[Annotated[DetectValues, Tag("values")], Annotated[DetectObservations, Tag("observations")]],
    Discriminator(_detect_variant),
]]):
    """Either ``values`` or ``observations``, never both."""


class DetectItem(ResponseModel):
    index: int
    value: float
    is_anomaly: bool
    score: Optional[float] = Field(description="higher is more anomalous (Isolation Forest: -score_samples; "
                                               "Z-score: |z|); null if not representable")
    severity: Optional[str] = Field(description="low, medium, high or critical for anomalies, else null")
    expected_value: Optional[float] = None
    entity_id: Optional[int] = None
    timestamp: Optional[datetime] = None


class DetectResult(ResponseModel):
    metric_type: str
    method: Method = Field(description="which detector answered")
    model_id: Optional[int] = Field(description="the model that answered; null for z_score")
    source: str = Field(description="where the model came from: cache, file, database or none (z_score)")
    fallback_reasons: list[str] = Field(description="why better methods were skipped, in order")
    load_ms: Optional[float]
    threshold: Optional[float]
    anomaly_count: int
    results: list[DetectItem]


# ------------------------------------------------------------------- alerts
class AlertQuery(QueryModel):
    metric_type: Optional[MetricType] = None
    method: Optional[Method] = None
    is_read: Optional[bool] = None
    is_false_positive: Optional[bool] = None
    since: Optional[QueryDatetime] = Field(default=None, description="detected at or after (ISO 8601)")
    until: Optional[QueryDatetime] = Field(default=None, description="detected at or before; not before since")
    page: int = Field(default=1, ge=1, le=MAX_PAGE)
    per_page: int = Field(default=DEFAULT_PER_PAGE, ge=1, le=MAX_PER_PAGE)

    @field_validator("until")
    @classmethod
    def _not_before_since(cls, value: Optional[datetime], info: ValidationInfo) -> Optional[datetime]:
        since = info.data.get("since")
        if value is not None and since is not None and value < since:
            raise PydanticCustomError("date_order", "must not be before since")
        return value


class Alert(ResponseModel):
    id: int
    alert_type: str
    metric_type: str
    entity_id: Optional[int]
    metric_value: float
    expected_value: Optional[float]
    deviation_percent: Optional[float]
    anomaly_score: Optional[float]
    severity: str
    message: Optional[str]
    method: Optional[str]
    model_id: Optional[int]
    observation_id: Optional[int]
    detected_at: datetime
    is_read: bool
    read_at: Optional[datetime]
    is_false_positive: bool
    false_positive_at: Optional[datetime]


class AlertPageOut(ResponseModel):
    alerts: list[Alert]
    page: int
    per_page: int
    total: int
    pages: int
