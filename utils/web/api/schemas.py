"""Pydantic models of the JSON API: they validate requests, shape responses,
and generate the OpenAPI document (``utils.web.api.openapi``), so what the
document promises is exactly what the code enforces.

The field types, base models (strict bodies, lax queries, tolerant
responses) and the error body are in :mod:`utils.web.api.base`; the
models here are one block per resource.
"""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (
    AfterValidator,
    Discriminator,
    Field,
    RootModel,
    StringConstraints,
    Tag,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from utils.ml.pipeline.alerts import DEFAULT_PER_PAGE, MAX_PAGE, MAX_PER_PAGE
from utils.ml.pipeline.observations import INTERNAL_METRIC_TYPES, ObservationIn
from utils.web.api.base import (  # noqa: F401  (RowId: the routes' path parameter, used from here)
    BodyModel,
    EntityId,
    Method,
    MetricType,
    ModelType,
    QueryDatetime,
    QueryModel,
    ResponseModel,
    RowId,
    UtcDatetime,
    json_int,
)

MAX_BATCH = 10_000
# Printable text only: these strings end up in the audit table.
_PRINTABLE = r"^[^\x00-\x1f\x7f]*$"


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
    legacy: bool = Field(description="not produced by this service: a row of the minibar app (BLOB or adopted file)")
    legacy_path: Optional[str] = Field(None, description="an adopted file: the absolute path the minibar app wrote")
    input_signature: Optional[dict[str, Any]] = Field(
        None, description="what the model takes: kind raw_value, pipeline, aggregate_features or unknown")
    input: str = Field(description="the input signature in words")
    compatible: bool = Field(description="false: detection cannot compute its input and falls back "
                                         "(incompatible_input) until the next training replaces it")


class ModelList(ResponseModel):
    models: list[ModelSummary]
    count: int


class ModelMetrics(ResponseModel):
    """Quality figures; null when no labelled data existed (never invented)."""

    accuracy: Optional[float]
    precision: Optional[float]
    recall: Optional[float]


class StoreLocation(ResponseModel):
    """The store holding a version's bytes: a local directory, or an S3 bucket (never credentials)."""

    backend: Literal["local", "s3"]
    key: Optional[str] = None
    models_dir: Optional[str] = Field(None, description="local: the models directory")
    bucket: Optional[str] = Field(None, description="s3: the bucket of ML_STORE_URL")
    prefix: Optional[str] = Field(None, description="s3: the key prefix of ML_STORE_URL")
    object_key: Optional[str] = Field(None, description="s3: the object's full key in the bucket")
    url: Optional[str] = Field(None, description="s3: s3://bucket/object_key")
    endpoint: Optional[str] = Field(None, description="s3: the endpoint URL (AWS_ENDPOINT_URL or AWS's)")
    region: Optional[str] = None
    cache_dir: Optional[str] = Field(None, description="s3: this host's local cache of the bucket")


class StorageLocation(ResponseModel):
    backend: Literal["file", "database"]
    models_dir: Optional[str]
    key: Optional[str]
    path: Optional[str]
    file_exists: Optional[bool] = Field(description="null for a legacy row without a file")
    file_size_bytes: Optional[int]
    has_blob: bool = Field(description="the legacy BLOB is still kept (the fallback)")
    store: Optional[StoreLocation] = Field(None, description="null for a legacy row without a file")


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
    pinned: Optional["Pin"] = Field(default=None, description="the pin this manual activation set: training stops "
                                                              "changing the type until it is removed")


class Pin(ResponseModel):
    model_type: str
    metric_type: str
    model_id: int
    actor: str
    reason: Optional[str]
    pinned_at: datetime


ActivationResult.model_rebuild()


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


class TrainRequest(JobRequest):
    """Optional body of ``/train``: who, one metric type, and what may become active."""

    promote: Literal["auto", "never", "always"] = Field(
        default="auto", description="auto: the promotion gate decides; never: keep as challenger; "
                                    "always: activate whatever the gate says (a pinned type never changes)")

    def params(self) -> dict[str, Any]:
        params = super().params()
        if self.promote != "auto":
            params["promote"] = self.promote
        return params


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
    threshold: Optional[float] = Field(default=None, description="this value's own threshold (per entity)")
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
class DateRangeQuery(QueryModel):
    """A query with ``since`` / ``until`` (declared by each subclass): ``until`` must not be before ``since``."""

    @field_validator("until", check_fields=False)  # the field is declared by each subclass
    @classmethod
    def _not_before_since(cls, value: Optional[datetime], info: ValidationInfo) -> Optional[datetime]:
        since = info.data.get("since")
        if value is not None and since is not None and value < since:
            raise PydanticCustomError("date_order", "must not be before since")
        return value


class AlertQuery(DateRangeQuery):
    metric_type: Optional[MetricType] = None
    method: Optional[Method] = None
    is_read: Optional[bool] = None
    is_false_positive: Optional[bool] = None
    since: Optional[QueryDatetime] = Field(default=None, description="detected at or after (ISO 8601)")
    until: Optional[QueryDatetime] = Field(default=None, description="detected at or before; not before since")
    page: int = Field(default=1, ge=1, le=MAX_PAGE)
    per_page: int = Field(default=DEFAULT_PER_PAGE, ge=1, le=MAX_PER_PAGE)


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
    incident_id: Optional[int] = None


class AlertPageOut(ResponseModel):
    alerts: list[Alert]
    page: int
    per_page: int
    total: int
    pages: int
