"""Pydantic models of the JSON API: they validate requests, shape responses,
and generate the OpenAPI document (``utils.web.api.openapi``), so what the
document promises is exactly what the code enforces.

One module per resource, named after its route module in ``utils.web.api``:
:mod:`.models`, :mod:`.promotion`, :mod:`.jobs`, :mod:`.observations`
(ingest and detect) and :mod:`.alerts` (with the date-range query base the
incidents share).  The field types, base models (strict bodies, lax queries,
tolerant responses) and the error body are in :mod:`utils.web.api.base`.

Every name is re-exported here: the routes read them as ``schemas.X``.
"""
from __future__ import annotations

from utils.web.api.base import (
    Actor,
    BodyModel,
    EntityId,
    Method,
    MetricType,
    ModelType,
    QueryDatetime,
    QueryModel,
    Reason,
    ResponseModel,
    RowId,
    UtcDatetime,
    json_int,
)
from utils.web.api.schemas.alerts import Alert, AlertPageOut, AlertQuery, DateRangeQuery
from utils.web.api.schemas.jobs import CleanupRequest, JobMetricType, JobRequest, JobResult, KeepVersions, TrainRequest
from utils.web.api.schemas.models import (
    Activation,
    LibraryVersions,
    ModelDetail,
    ModelList,
    ModelMetrics,
    ModelQuery,
    ModelSummary,
    ModelVersion,
    StorageLocation,
    StoreLocation,
)
from utils.web.api.schemas.observations import (
    DETECT_TAGS,
    MAX_BATCH,
    DetectItem,
    DetectObservation,
    DetectObservations,
    DetectRequest,
    DetectResult,
    DetectValues,
    FiniteNumber,
    IngestRequest,
    IngestResult,
)
from utils.web.api.schemas.promotion import ActivateRequest, ActivationList, ActivationResult, Pin

__all__ = [
    # field types and base models (utils.web.api.base)
    "Actor", "BodyModel", "EntityId", "Method", "MetricType", "ModelType", "QueryDatetime", "QueryModel", "Reason",
    "ResponseModel", "RowId", "UtcDatetime", "json_int",
    # models
    "Activation", "LibraryVersions", "ModelDetail", "ModelList", "ModelMetrics", "ModelQuery", "ModelSummary",
    "ModelVersion", "StorageLocation", "StoreLocation",
    # promotion
    "ActivateRequest", "ActivationList", "ActivationResult", "Pin",
    # jobs
    "CleanupRequest", "JobMetricType", "JobRequest", "JobResult", "KeepVersions", "TrainRequest",
    # observations: ingest and detect
    "DETECT_TAGS", "MAX_BATCH", "DetectItem", "DetectObservation", "DetectObservations", "DetectRequest",
    "DetectResult", "DetectValues", "FiniteNumber", "IngestRequest", "IngestResult",
    # alerts
    "Alert", "AlertPageOut", "AlertQuery", "DateRangeQuery",
]
