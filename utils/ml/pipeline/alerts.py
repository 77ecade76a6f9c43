"""Alerts raised by the scans: list them, mark them read or false positive.

Plain functions over ``ml_alerts`` for the API, the CLI and the dashboard.
They need an application context (they use ``db.session``) and validate their
own arguments, raising :class:`AlertValidationError` that names the field and
the rule; an unknown id raises :class:`AlertNotFoundError`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Mapping, Optional, Union

from sqlalchemy import func, select

from utils.extensions import db
from utils.ml import events
from utils.ml.validation import MAX_ROW_ID, InvalidInput, check_whole_number
from utils.models import METHOD_DB, METHOD_FILE, METHOD_ZSCORE, MLAlert
from utils.time import as_utc, utcnow

METHODS = (METHOD_FILE, METHOD_DB, METHOD_ZSCORE)
DEFAULT_PER_PAGE = 50
MAX_PER_PAGE = 500
# Past this page the OFFSET would be absurd; refusing keeps the query cheap.
MAX_PAGE = 100_000


class AlertValidationError(InvalidInput):
    """A bad argument: ``field`` and ``rule`` say which and why."""


class AlertNotFoundError(LookupError):
    """No alert has this id."""

    def __init__(self, alert_id: int) -> None:
        super().__init__(f"alert {alert_id} does not exist")
        self.alert_id = alert_id


@dataclass(frozen=True)
class AlertFilters:
    """Which alerts to list; ``None`` means "any".  ``since``/``until`` bound ``detected_at`` (inclusive)."""

    metric_type: Optional[str] = None
    method: Optional[str] = None
    is_read: Optional[bool] = None
    is_false_positive: Optional[bool] = None
    since: Optional[datetime] = None
    until: Optional[datetime] = None


@dataclass(frozen=True)
class AlertPage:
    """One page of alerts, newest first, and the total matching the filters."""

    items: list[dict[str, Any]]
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        return math.ceil(self.total / self.per_page) if self.total else 0


def alert_to_dict(alert: MLAlert) -> dict[str, Any]:
    """Every column of ``alert``, timestamps as aware UTC datetimes."""
    return {
        "id": alert.id,
        "alert_type": alert.alert_type,
        "metric_type": alert.metric_type,
        "entity_id": alert.entity_id,
        "metric_value": alert.metric_value,
        "expected_value": alert.expected_value,
        "deviation_percent": alert.deviation_percent,
        "anomaly_score": alert.anomaly_score,
        "severity": alert.severity,
        "message": alert.message,
        "method": alert.method,
        "model_id": alert.model_id,
        "observation_id": alert.observation_id,
        "detected_at": as_utc(alert.detected_at),
        "is_read": bool(alert.is_read),
        "read_at": as_utc(alert.read_at),
        "is_false_positive": bool(alert.is_false_positive),
        "false_positive_at": as_utc(alert.false_positive_at),
        "incident_id": alert.incident_id,
    }


def _coerce_filters(filters: Union[AlertFilters, Mapping[str, Any], None]) -> AlertFilters:
    if filters is None:
        return AlertFilters()
    if isinstance(filters, AlertFilters):
        return filters
    known = {f.name for f in fields(AlertFilters)}
    unknown = sorted(set(filters) - known)
    if unknown:
        raise AlertValidationError(unknown[0], f"unknown filter; expected one of {sorted(known)}")
    return AlertFilters(**{k: v for k, v in filters.items() if v is not None})


def _validated(filters: AlertFilters) -> AlertFilters:
    if filters.method is not None and filters.method not in METHODS:
        raise AlertValidationError("method", f"must be one of {list(METHODS)} (got {filters.method!r})")
    since, until = as_utc(filters.since), as_utc(filters.until)
    if since is not None and until is not None and until < since:
        raise AlertValidationError("until", "must not be before since")
    return AlertFilters(filters.metric_type, filters.method, filters.is_read, filters.is_false_positive,
                        since, until)


def list_alerts(filters: Union[AlertFilters, Mapping[str, Any], None] = None, page: int = 1,
                per_page: int = DEFAULT_PER_PAGE) -> AlertPage:
    """Alerts matching ``filters``, newest first, page ``page`` (from 1) of ``per_page`` (1..500)."""
    page = check_whole_number("page", page, 1, MAX_PAGE, error=AlertValidationError)
    per_page = check_whole_number("per_page", per_page, 1, MAX_PER_PAGE, error=AlertValidationError)
    wanted = _validated(_coerce_filters(filters))
    conditions = []
    if wanted.metric_type is not None:
        conditions.append(MLAlert.metric_type == wanted.metric_type)
    if wanted.method is not None:
        conditions.append(MLAlert.method == wanted.method)
    if wanted.is_read is not None:
        conditions.append(MLAlert.is_read.is_(wanted.is_read))
    if wanted.is_false_positive is not None:
        conditions.append(MLAlert.is_false_positive.is_(wanted.is_false_positive))
    if wanted.since is not None:
        conditions.append(MLAlert.detected_at >= wanted.since)
    if wanted.until is not None:
        conditions.append(MLAlert.detected_at <= wanted.until)
    session = db.session
    total = session.execute(select(func.count()).select_from(MLAlert).where(*conditions)).scalar_one()
    rows = session.execute(
        select(MLAlert).where(*conditions).order_by(MLAlert.detected_at.desc(), MLAlert.id.desc())
        .limit(per_page).offset((page - 1) * per_page)
    ).scalars().all()
    items = [alert_to_dict(row) for row in rows]
    session.rollback()  # end the read transaction: no idle-in-transaction connection
    return AlertPage(items=items, total=int(total), page=page, per_page=per_page)


def _get(alert_id: int) -> MLAlert:
    if isinstance(alert_id, bool) or not isinstance(alert_id, int):
        raise AlertValidationError("alert_id", f"must be a whole number (got {alert_id!r})")
    alert = db.session.get(MLAlert, alert_id) if 1 <= alert_id <= MAX_ROW_ID else None
    if alert is None:
        raise AlertNotFoundError(alert_id)
    return alert


def get_alert(alert_id: int) -> dict[str, Any]:
    """One alert by id."""
    return alert_to_dict(_get(alert_id))


def mark_read(alert_id: int) -> dict[str, Any]:
    """Mark an alert read (idempotent: the first ``read_at`` is kept); returns the alert."""
    alert = _get(alert_id)
    if not alert.is_read:
        alert.is_read = True
        alert.read_at = utcnow()
        db.session.commit()
        events.emit("alert_marked_read", f"Alert {alert_id} marked read", alert_id=alert_id,
                    metric_type=alert.metric_type)
    return alert_to_dict(alert)


def mark_false_positive(alert_id: int) -> dict[str, Any]:
    """Mark an alert a false positive (idempotent).

    Judging an alert means someone read it, so it is marked read too.
    """
    alert = _get(alert_id)
    if not alert.is_false_positive or not alert.is_read:
        now = utcnow()
        alert.is_false_positive = True
        alert.false_positive_at = alert.false_positive_at or now
        alert.is_read = True
        alert.read_at = alert.read_at or now
        db.session.commit()
        events.emit("alert_marked_false_positive", f"Alert {alert_id} marked false positive",
                    alert_id=alert_id, metric_type=alert.metric_type, method=alert.method)
    return alert_to_dict(alert)
