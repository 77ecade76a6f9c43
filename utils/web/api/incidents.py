"""Incident routes: list (filtered, paginated), get with its alerts, mark false positive (labels its alerts)."""
from __future__ import annotations

from datetime import datetime
from typing import Literal, Optional

from pydantic import Field

from utils.ml.incidents import service
from utils.web.api import schemas as s
from utils.web.api.base import EntityId, MetricType, QueryDatetime, ResponseModel
from utils.web.api.framework import ApiError, operation

INCIDENT_ID = {"incident_id": s.RowId}


class IncidentQuery(s.DateRangeQuery):
    metric_type: Optional[MetricType] = None
    entity_id: Optional[EntityId] = None
    severity: Optional[Literal["low", "medium", "high", "critical"]] = None
    is_false_positive: Optional[bool] = None
    since: Optional[QueryDatetime] = Field(default=None, description="started at or after (ISO 8601)")
    until: Optional[QueryDatetime] = Field(default=None, description="started at or before; not before since")
    page: int = Field(default=1, ge=1, le=service.MAX_PAGE)
    per_page: int = Field(default=service.DEFAULT_PER_PAGE, ge=1, le=service.MAX_PER_PAGE)


class Incident(ResponseModel):
    """Consecutive alerts of one entity: each within ML_INCIDENT_GAP_HOURS of the previous one."""

    id: int
    metric_type: str
    entity_id: Optional[int]
    started_at: datetime = Field(description="time of its first anomalous observation")
    ended_at: datetime = Field(description="time of its last anomalous observation so far")
    alert_count: int
    severity: str = Field(description="the worst of its alerts: low, medium, high or critical")
    peak_score: Optional[float]
    peak_value: Optional[float]
    peak_observation_id: Optional[int]
    method: Optional[str]
    model_id: Optional[int]
    is_false_positive: bool
    false_positive_at: Optional[datetime]
    created_at: datetime
    updated_at: datetime


class IncidentDetail(Incident):
    alerts: list[s.Alert] = Field(description=f"its alerts, oldest first (at most {service.MAX_ALERTS_SHOWN})")


class IncidentPageOut(ResponseModel):
    incidents: list[Incident]
    page: int
    per_page: int
    total: int
    pages: int


@operation("GET", "/incidents", response=IncidentPageOut, query=IncidentQuery, tag="incidents",
           summary="List incidents, latest first, filtered and paginated")
def list_incidents(query: IncidentQuery) -> IncidentPageOut:
    """Filters: metric_type, entity_id, severity, is_false_positive, since/until (started_at, inclusive)."""
    page = service.list_incidents(metric_type=query.metric_type, entity_id=query.entity_id, severity=query.severity,
                                  is_false_positive=query.is_false_positive, since=query.since, until=query.until,
                                  page=query.page, per_page=query.per_page)
    return IncidentPageOut(incidents=page.items, page=page.page, per_page=page.per_page, total=page.total,
                           pages=page.pages)


@operation("GET", "/incidents/<incident_id>", response=IncidentDetail, path=INCIDENT_ID, tag="incidents",
           summary="One incident with its alerts")
def get_incident(incident_id: int) -> IncidentDetail:
    try:
        return IncidentDetail.model_validate(service.get_incident(incident_id))
    except service.IncidentNotFoundError as exc:
        raise ApiError(404, str(exc)) from None


@operation("POST", "/incidents/<incident_id>/false-positive", response=Incident, path=INCIDENT_ID,
           tag="incidents", summary="Mark an incident a false positive, and every alert of it (and read)")
def mark_incident_false_positive(incident_id: int) -> Incident:
    """Idempotent.  The alerts' observations become normal labels for the next training."""
    try:
        return Incident.model_validate(service.mark_false_positive(incident_id))
    except service.IncidentNotFoundError as exc:
        raise ApiError(404, str(exc)) from None
