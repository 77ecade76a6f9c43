"""Grouping new alerts into incidents, inside the scan's transaction.

Rule: an alert of entity ``e`` on metric type ``m`` joins ``e``'s latest
incident on ``m`` when its observation time lies within ``gap``
(``ML_INCIDENT_GAP_HOURS``) of that incident's span ``[started_at,
ended_at]``; otherwise it opens a new incident.  Observations without an
entity form one series of their own (``entity_id`` NULL).  The incident
keeps the first and last observation time, the number of alerts, the worst
severity and the peak (largest anomaly score, its value and observation).
Set-based: one query for the entities' latest incidents, one multi-row
``INSERT ... RETURNING`` for the new ones, one executemany ``UPDATE`` for
the extended ones, whatever the number of alerts (a flood of 20,000 alerts
in a batch stays cheap).

Called by the scan, before it inserts the batch's alerts (which then carry
their ``incident_id``), in the same transaction, while it holds the metric
type's watermark row lock (:mod:`utils.ml.pipeline.scan`):
two scans of one metric type never group at the same time, so the lookup of
the latest incident and its update cannot race.  Incidents are only ever
extended by scans; the hotel app's own alerts have no incident.

Whenever an incident is opened, or its severity rises, at or above
``ML_NOTIFY_MIN_SEVERITY``, an ``incident`` notification is recorded in the
same transaction (:func:`utils.ml.notify.producers.incident_opened`, key
``incident:<id>``: at most one per incident, whatever the retries).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any, Optional

from sqlalchemy import bindparam, insert, or_, select, update

from utils.ml.incidents.models import SEVERITIES, MLIncident
from utils.time import as_utc, utcnow

TABLE = MLIncident.__table__
_COLUMNS = ("id", "entity_id", "started_at", "ended_at", "alert_count", "severity", "peak_score", "peak_value",
            "peak_observation_id")


@dataclass(frozen=True)
class NewAlert:
    """What grouping needs of one alert about to be inserted."""

    observation_id: int
    entity_id: Optional[int]
    observed_at: float  # epoch seconds
    severity: str
    score: float
    value: float


def _moment(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=timezone.utc)


def _latest(session: Any, metric_type: str, entities: set[Optional[int]], since: float) -> dict:
    """Each entity's latest incident on ``metric_type`` that ended at or after ``since`` (as plain dicts)."""
    ids = sorted(e for e in entities if e is not None)
    who = [TABLE.c.entity_id.in_(ids[i:i + 500]) for i in range(0, len(ids), 500)]
    if None in entities:
        who.append(TABLE.c.entity_id.is_(None))
    rows = session.execute(
        select(*(TABLE.c[name] for name in _COLUMNS))
        .where(TABLE.c.metric_type == metric_type, or_(*who), TABLE.c.ended_at >= _moment(since))
        .order_by(TABLE.c.ended_at, TABLE.c.id)
    ).all()
    latest = {}
    for row in rows:  # the last one (by end) of each entity wins
        item = dict(row._mapping)
        item["started"], item["ended"] = as_utc(item["started_at"]).timestamp(), as_utc(item["ended_at"]).timestamp()
        item["was"] = (item["alert_count"], item["severity"])
        latest[item["entity_id"]] = item
    return latest


def _worse(a: str, b: str) -> str:
    return a if SEVERITIES.index(a) >= SEVERITIES.index(b) else b


def group_alerts(session: Any, metric_type: str, alerts: list[NewAlert], *, gap_seconds: float,
                 method: Optional[str], model_id: Optional[int]) -> tuple[dict[int, int], dict[str, int]]:
    """Assign ``alerts`` to incidents (see the module docstring); the caller inserts the alerts and commits.

    Returns ``({observation_id: incident_id}, {"opened": n, "extended": n})``.
    """
    if not alerts:
        return {}, {"opened": 0, "extended": 0}
    ordered = sorted(alerts, key=lambda a: (a.entity_id is None, a.entity_id or 0, a.observed_at, a.observation_id))
    latest = _latest(session, metric_type, {a.entity_id for a in alerts},
                     min(a.observed_at for a in alerts) - gap_seconds)
    now = utcnow()
    created: list[dict] = []
    members: list[tuple[int, dict]] = []
    for alert in ordered:
        item = latest.get(alert.entity_id)
        if item is not None and item["started"] - gap_seconds <= alert.observed_at <= item["ended"] + gap_seconds:
            item["started"], item["ended"] = min(item["started"], alert.observed_at), max(item["ended"],
                                                                                         alert.observed_at)
            item["alert_count"] += 1
            item["severity"] = _worse(item["severity"], alert.severity)
            if item["peak_score"] is None or alert.score > item["peak_score"]:
                item["peak_score"], item["peak_value"], item["peak_observation_id"] = \
                    alert.score, alert.value, alert.observation_id
        else:
            item = {"id": None, "entity_id": alert.entity_id, "started": alert.observed_at,
                    "ended": alert.observed_at, "alert_count": 1, "severity": alert.severity,
                    "peak_score": alert.score, "peak_value": alert.value, "peak_observation_id": alert.observation_id}
            created.append(item)
            latest[alert.entity_id] = item
        members.append((alert.observation_id, item))
    if created:
        ids = session.execute(
            insert(TABLE).returning(TABLE.c.id, sort_by_parameter_order=True),
            [{"metric_type": metric_type, "entity_id": i["entity_id"], "started_at": _moment(i["started"]),
              "ended_at": _moment(i["ended"]), "alert_count": i["alert_count"], "severity": i["severity"],
              "peak_score": i["peak_score"], "peak_value": i["peak_value"],
              "peak_observation_id": i["peak_observation_id"], "method": method, "model_id": model_id,
              "is_false_positive": False, "created_at": now, "updated_at": now} for i in created]
        ).scalars().all()
        for item, new_id in zip(created, ids):
            item["id"] = new_id
    extended = [i for i in latest.values() if "was" in i and i["was"][0] != i["alert_count"]]
    if extended:
        session.execute(
            update(TABLE).where(TABLE.c.id == bindparam("b_id")).values(
                started_at=bindparam("b_started"), ended_at=bindparam("b_ended"), alert_count=bindparam("b_count"),
                severity=bindparam("b_severity"), peak_score=bindparam("b_score"), peak_value=bindparam("b_value"),
                peak_observation_id=bindparam("b_peak"), updated_at=now),
            [{"b_id": i["id"], "b_started": _moment(i["started"]), "b_ended": _moment(i["ended"]),
              "b_count": i["alert_count"], "b_severity": i["severity"], "b_score": i["peak_score"],
              "b_value": i["peak_value"], "b_peak": i["peak_observation_id"]} for i in extended])
    for item in created + [i for i in extended if i["was"][1] != i["severity"]]:
        _notify(session, metric_type, item)
    assignment = {observation_id: item["id"] for observation_id, item in members}
    return assignment, {"opened": len(created), "extended": len(members) - len(created)}


def _notify(session: Any, metric_type: str, item: dict) -> None:
    """Record the incident's notification (the outbox drops it below ``ML_NOTIFY_MIN_SEVERITY``)."""
    from utils.ml.notify.producers import incident_opened

    incident_opened(SimpleNamespace(id=item["id"], metric_type=metric_type, entity_id=item["entity_id"],
                                    severity=item["severity"], started_at=_moment(item["started"]),
                                    alert_count=item["alert_count"], peak_score=item["peak_score"],
                                    peak_value=item["peak_value"]), session=session)
