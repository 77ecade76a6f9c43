"""Grouping new alerts into incidents, inside the scan's transaction.

Rule: an alert of entity ``e`` on metric type ``m`` joins ``e``'s latest
incident on ``m`` when its observation time lies within ``gap``
(``ML_INCIDENT_GAP_HOURS``) of that incident's span ``[started_at,
ended_at]``; otherwise it opens a new incident.  Observations without an
entity form one series of their own (``entity_id`` NULL).  The incident
keeps the first and last observation time, the number of alerts, the worst
severity and the peak (largest anomaly score).

Called by the scan in the same transaction that inserts the alerts, while it
holds the metric type's watermark row lock (:mod:`utils.ml.pipeline.scan`):
two scans of one metric type never group at the same time, so the lookup of
the latest incident and its update cannot race.  Incidents are only ever
extended by scans; the hotel app's own alerts have no incident.

Whenever an incident is opened, or its severity rises, at or above
``ML_NOTIFY_MIN_SEVERITY``, an ``incident`` notification is recorded in the
same transaction (:func:`utils.ml.notify.producers.incident_opened`, key
``incident:<id>``: at most one per incident, whatever the retries).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import or_, select, update

from utils.ml.incidents.models import SEVERITIES, MLIncident
from utils.models import MLAlert
from utils.time import as_utc, utcnow

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NewAlert:
    """What grouping needs of one inserted alert."""

    alert_id: int
    entity_id: Optional[int]
    observed_at: float  # epoch seconds
    severity: str
    score: float
    value: float


def _epoch(moment: datetime) -> float:
    return as_utc(moment).timestamp()


def _moment(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=timezone.utc)


def _latest(session: Any, metric_type: str, entities: set[Optional[int]], since: float) -> dict:
    """Each entity's latest incident on ``metric_type`` that ended at or after ``since``."""
    ids = sorted(e for e in entities if e is not None)
    who = []
    if ids:
        who.append(MLIncident.entity_id.in_(ids))
    if None in entities:
        who.append(MLIncident.entity_id.is_(None))
    rows = session.execute(
        select(MLIncident).where(MLIncident.metric_type == metric_type, or_(*who),
                                 MLIncident.ended_at >= _moment(since))
        .order_by(MLIncident.ended_at, MLIncident.id)
    ).scalars().all()
    return {row.entity_id: row for row in rows}  # the last one (by end) of each entity wins


def _worse(a: str, b: str) -> str:
    return a if SEVERITIES.index(a) >= SEVERITIES.index(b) else b


def group_alerts(session: Any, metric_type: str, alerts: list[NewAlert], *, gap_seconds: float,
                 method: Optional[str], model_id: Optional[int]) -> dict[str, int]:
    """Attach ``alerts`` to incidents (see the module docstring); the caller commits.

    Returns ``{"opened": n, "extended": n}``.
    """
    if not alerts:
        return {"opened": 0, "extended": 0}
    ordered = sorted(alerts, key=lambda a: (a.entity_id is None, a.entity_id or 0, a.observed_at, a.alert_id))
    latest = _latest(session, metric_type, {a.entity_id for a in alerts},
                     min(a.observed_at for a in alerts) - gap_seconds)
    before = {inc.id: inc.severity for inc in latest.values()}
    touched: dict[int, MLIncident] = {}
    assignment: list[tuple[int, MLIncident]] = []
    opened = 0
    now = utcnow()
    for alert in ordered:
        incident = latest.get(alert.entity_id)
        if incident is not None and (_epoch(incident.started_at) - gap_seconds <= alert.observed_at
                                     <= _epoch(incident.ended_at) + gap_seconds):
            incident.started_at = min(as_utc(incident.started_at), _moment(alert.observed_at))
            incident.ended_at = max(as_utc(incident.ended_at), _moment(alert.observed_at))
            incident.alert_count += 1
            incident.severity = _worse(incident.severity, alert.severity)
            if incident.peak_score is None or alert.score > incident.peak_score:
                incident.peak_score, incident.peak_value, incident.peak_alert_id = \
                    alert.score, alert.value, alert.alert_id
            incident.updated_at = now
        else:
            incident = MLIncident(
                metric_type=metric_type, entity_id=alert.entity_id, started_at=_moment(alert.observed_at),
                ended_at=_moment(alert.observed_at), alert_count=1, severity=alert.severity,
                peak_score=alert.score, peak_value=alert.value, peak_alert_id=alert.alert_id, method=method,
                model_id=model_id, is_false_positive=False, created_at=now, updated_at=now)
            session.add(incident)
            latest[alert.entity_id] = incident
            opened += 1
        assignment.append((alert.alert_id, incident))
    session.flush()  # incident ids
    session.execute(update(MLAlert), [{"id": alert_id, "incident_id": inc.id} for alert_id, inc in assignment])
    for _alert_id, incident in assignment:
        touched[incident.id] = incident
    for incident in touched.values():
        if incident.id not in before or before[incident.id] != incident.severity:
            _notify(session, incident)
    return {"opened": opened, "extended": len(assignment) - opened}


def _notify(session: Any, incident: MLIncident) -> None:
    """Record the incident's notification (the outbox drops it below ``ML_NOTIFY_MIN_SEVERITY``)."""
    from utils.ml.notify.producers import incident_opened

    incident_opened(incident, session=session)
