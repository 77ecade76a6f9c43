"""Incidents for the API, the CLI and the dashboard: list, get (with its alerts), mark false positive.

Plain functions over ``ml_incidents`` in an application context; bad
arguments raise :class:`IncidentValidationError` naming the field and the
rule, an unknown id :class:`IncidentNotFoundError`.

Marking an incident a false positive marks every alert of it false positive
(and read), in one transaction: the next training reads those observations
as *normal* labels, exactly as alerts marked one by one.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

from sqlalchemy import func, select, update

from utils.extensions import db
from utils.ml import events
from utils.ml.incidents.models import SEVERITIES, MLIncident
from utils.ml.pipeline.alerts import AlertPage, alert_to_dict
from utils.ml.validation import MAX_ROW_ID, InvalidInput, check_whole_number
from utils.models import MLAlert
from utils.time import as_utc, utcnow

DEFAULT_PER_PAGE = 50
MAX_PER_PAGE = 500
MAX_PAGE = 100_000
MAX_ALERTS_SHOWN = 500  # an incident's alerts returned with it (its count says how many there are)


class IncidentValidationError(InvalidInput):
    """A bad argument: ``field`` and ``rule`` say which and why."""


class IncidentNotFoundError(LookupError):
    """No incident has this id."""

    def __init__(self, incident_id: int) -> None:
        super().__init__(f"incident {incident_id} does not exist")
        self.incident_id = incident_id


# One page of incidents: the same shape as a page of alerts (items, total, page, per_page, pages).
IncidentPage = AlertPage


def incident_to_dict(incident: MLIncident) -> dict[str, Any]:
    """Every column of ``incident``, timestamps as aware UTC datetimes."""
    return {
        "id": incident.id, "metric_type": incident.metric_type, "entity_id": incident.entity_id,
        "started_at": as_utc(incident.started_at), "ended_at": as_utc(incident.ended_at),
        "alert_count": incident.alert_count, "severity": incident.severity,
        "peak_score": incident.peak_score, "peak_value": incident.peak_value,
        "peak_observation_id": incident.peak_observation_id, "method": incident.method, "model_id": incident.model_id,
        "is_false_positive": bool(incident.is_false_positive),
        "false_positive_at": as_utc(incident.false_positive_at),
        "created_at": as_utc(incident.created_at), "updated_at": as_utc(incident.updated_at),
    }


def list_incidents(*, metric_type: Optional[str] = None, entity_id: Optional[int] = None,
                   severity: Optional[str] = None, is_false_positive: Optional[bool] = None,
                   since: Optional[datetime] = None, until: Optional[datetime] = None,
                   page: int = 1, per_page: int = DEFAULT_PER_PAGE) -> IncidentPage:
    """Incidents matching the filters, latest start first; ``since``/``until`` bound ``started_at``."""
    page = check_whole_number("page", page, 1, MAX_PAGE, error=IncidentValidationError)
    per_page = check_whole_number("per_page", per_page, 1, MAX_PER_PAGE, error=IncidentValidationError)
    if severity is not None and severity not in SEVERITIES:
        raise IncidentValidationError("severity", f"must be one of {list(SEVERITIES)} (got {severity!r})")
    since, until = as_utc(since), as_utc(until)
    if since is not None and until is not None and until < since:
        raise IncidentValidationError("until", "must not be before since")
    conditions = []
    for column, value in ((MLIncident.metric_type, metric_type), (MLIncident.entity_id, entity_id),
                          (MLIncident.severity, severity)):
        if value is not None:
            conditions.append(column == value)
    if is_false_positive is not None:
        conditions.append(MLIncident.is_false_positive.is_(is_false_positive))
    if since is not None:
        conditions.append(MLIncident.started_at >= since)
    if until is not None:
        conditions.append(MLIncident.started_at <= until)
    session = db.session
    total = session.execute(select(func.count()).select_from(MLIncident).where(*conditions)).scalar_one()
    rows = session.execute(select(MLIncident).where(*conditions)
                           .order_by(MLIncident.started_at.desc(), MLIncident.id.desc())
                           .limit(per_page).offset((page - 1) * per_page)).scalars().all()
    items = [incident_to_dict(row) for row in rows]
    session.rollback()  # end the read transaction
    return IncidentPage(items, int(total), page, per_page)


def _get(incident_id: Any) -> MLIncident:
    if isinstance(incident_id, bool) or not isinstance(incident_id, int):
        raise IncidentValidationError("incident_id", f"must be a whole number (got {incident_id!r})")
    incident = db.session.get(MLIncident, incident_id) if 1 <= incident_id <= MAX_ROW_ID else None
    if incident is None:
        raise IncidentNotFoundError(incident_id)
    return incident


def get_incident(incident_id: int) -> dict[str, Any]:
    """One incident with its alerts (oldest first, at most ``MAX_ALERTS_SHOWN``)."""
    data = incident_to_dict(_get(incident_id))
    alerts = db.session.execute(select(MLAlert).where(MLAlert.incident_id == incident_id)
                                .order_by(MLAlert.id).limit(MAX_ALERTS_SHOWN)).scalars().all()
    data["alerts"] = [alert_to_dict(a) for a in alerts]
    db.session.rollback()
    return data


def mark_false_positive(incident_id: int) -> dict[str, Any]:
    """Mark an incident and all its alerts false positive (idempotent); return the incident."""
    incident = _get(incident_id)
    now = utcnow()
    changed = db.session.execute(
        update(MLAlert).where(MLAlert.incident_id == incident_id, MLAlert.is_false_positive.is_(False))
        .values(is_false_positive=True, false_positive_at=now, is_read=True,
                read_at=func.coalesce(MLAlert.read_at, now))
        .execution_options(synchronize_session=False)
    ).rowcount
    first = not incident.is_false_positive
    incident.is_false_positive = True
    incident.false_positive_at = incident.false_positive_at or now
    incident.updated_at = now
    db.session.commit()
    if first or changed:
        events.emit("incident_marked_false_positive", f"Incident {incident_id} marked false positive "
                    f"({changed} alerts labelled)", incident_id=incident_id, metric_type=incident.metric_type,
                    alerts=changed)
    return incident_to_dict(incident)
