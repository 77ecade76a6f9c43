"""Models of the model routes (``/models``, ``/models/<id>``): a version's metadata, storage and history.

:class:`Activation` (one audited change of the active version) is here because
a model's detail lists its activations; the promotion routes' own bodies are
in :mod:`.promotion`.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, Optional

from pydantic import Field

from utils.web.api.base import MetricType, ModelType, QueryModel, ResponseModel


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
