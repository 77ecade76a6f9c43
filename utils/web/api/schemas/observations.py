"""Models of ``/observations`` (ingest a batch) and ``/detect`` (score values or observations)."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Optional, Union

from pydantic import Discriminator, Field, RootModel, Tag

from utils.ml.pipeline.observations import ObservationIn
from utils.web.api.base import BodyModel, EntityId, Method, MetricType, ResponseModel, UtcDatetime

MAX_BATCH = 10_000


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
