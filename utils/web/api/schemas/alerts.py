"""Models of the alert routes, and the date-range query base that the incident routes share."""
from __future__ import annotations

from datetime import datetime
from typing import Optional

from pydantic import Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from utils.ml.pipeline.alerts import DEFAULT_PER_PAGE, MAX_PAGE, MAX_PER_PAGE
from utils.web.api.base import Method, MetricType, QueryDatetime, QueryModel, ResponseModel


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
