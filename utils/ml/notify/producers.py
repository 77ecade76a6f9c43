"""Who enqueues what: the key and payload conventions, and the ``job_failed`` listener.

The later phase calls these (each a thin wrapper over
:func:`utils.ml.notify.outbox.enqueue`, same ``session``/``now`` rules):

* ``notify_incident(incident_id, severity, payload, subject=..., session=db.session)``
  key ``incident:<id>``; recorded only at or above ``ML_NOTIFY_MIN_SEVERITY``;
* ``notify_gate_decision(model_type, metric_type, challenger_id, decision, payload, ...)``
  key ``gate_decision:<model_type>:<metric_type>:<challenger_id>``;
* ``notify_drift(metric_type, trigger_id, payload, ...)`` key ``drift:<metric_type>:<trigger_id>``
  (``trigger_id``: the id of whatever records the trigger, e.g. the retraining run);
* ``job_failed`` is produced here from the ``job_failed`` event of the job runner:
  key ``job_failed:<job>:<run_id>`` (``job_failed:<job>:<scheduled_for>`` when no run was recorded).
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Optional

from flask import current_app, has_app_context

from utils.ml.notify.errors import describe_first_line
from utils.ml.notify.logutil import emit_throttled
from utils.ml.notify.outbox import EXTENSION, Executor, enqueue


_JOB_FIELDS = ("job", "run_id", "trigger", "status", "scheduled_for", "duration_s", "error")


def notify_incident(incident_id: int, severity: str, payload: Mapping[str, Any], *, subject: Optional[str] = None,
                    session: Optional[Executor] = None) -> list[int]:
    """A new anomaly incident (``severity``: low, medium, high or critical)."""
    return enqueue("incident", f"incident:{incident_id}", payload, severity,
                   subject=subject or f"incident {incident_id} ({severity})", session=session)


def incident_opened(incident: Any, *, session: Optional[Executor] = None) -> list[int]:
    """An incident (``utils.ml.incidents.models.MLIncident``) opened or rose in severity: key ``incident:<id>``.

    A no-op without the notification extension (an app that did not init it).
    """
    if not has_app_context() or current_app.extensions.get(EXTENSION) is None:
        return []
    payload = {"incident_id": incident.id, "metric_type": incident.metric_type, "entity_id": incident.entity_id,
               "severity": incident.severity, "started_at": incident.started_at.isoformat(),
               "alert_count": incident.alert_count, "peak_score": incident.peak_score,
               "peak_value": incident.peak_value}
    who = f"entity {incident.entity_id}" if incident.entity_id is not None else "no entity"
    return notify_incident(incident.id, incident.severity, payload, session=session,
                           subject=f"{incident.severity} incident {incident.id}: {incident.metric_type} {who}")


def notify_gate_decision(model_type: str, metric_type: str, challenger_id: int, decision: str,
                         payload: Mapping[str, Any], *, subject: Optional[str] = None,
                         session: Optional[Executor] = None) -> list[int]:
    """A challenger promoted or rejected (``decision``: ``promoted`` or ``rejected``); severity ``info``."""
    key = f"gate_decision:{model_type}:{metric_type}:{challenger_id}"
    return enqueue("gate_decision", key, dict(payload, decision=decision), "info",
                   subject=subject or f"challenger {challenger_id} of {model_type}/{metric_type} {decision}",
                   session=session)


def notify_drift(metric_type: str, trigger_id: Any, payload: Mapping[str, Any], *, subject: Optional[str] = None,
                 session: Optional[Executor] = None) -> list[int]:
    """Drift above the threshold triggered a retraining; severity ``medium``."""
    return enqueue("drift", f"drift:{metric_type}:{trigger_id}", payload, "medium",
                   subject=subject or f"drift on {metric_type} triggered retraining", session=session)


def job_failed_key(fields: Mapping[str, Any]) -> str:
    job = fields.get("job", "unknown")
    run = fields.get("run_id")
    return f"job_failed:{job}:{run}" if run is not None else f"job_failed:{job}:{fields.get('scheduled_for')}"


def on_event(event: str, fields: dict[str, Any]) -> None:
    """The events listener: a ``job_failed`` event becomes a ``job_failed`` notification.

    Called for every event, so it returns at once for the others.  Enqueues
    on its own transaction (the job's session was rolled back before the
    event).  A failure (the database is what failed, often) is logged,
    rate-limited, and never reaches the job runner.
    """
    if event != "job_failed" or not has_app_context():
        return
    state = current_app.extensions.get(EXTENSION)
    if state is None:
        return
    try:
        payload = {name: fields[name] for name in _JOB_FIELDS if name in fields}
        enqueue("job_failed", job_failed_key(fields), payload, "high",
                subject=f"job {fields.get('job')} failed: {fields.get('error', '')}")
    except Exception as exc:  # noqa: BLE001 - reported, never raised into the job runner
        emit_throttled(state.throttle, ("enqueue_failed", exc.__class__.__name__), "notification_enqueue_failed",
                       f"could not record the job_failed notification: {describe_first_line(exc)}", logging.ERROR,
                       job=fields.get("job"), error=describe_first_line(exc))
