"""Alert routes: list (filtered, paginated), mark read, mark false positive."""
from __future__ import annotations

from typing import Any, Callable

from utils.ml.pipeline import alerts as alert_store
from utils.web.api import schemas as s
from utils.web.api.framework import ApiError, operation


ALERT_ID = {"alert_id": s.RowId}


@operation("GET", "/alerts", response=s.AlertPageOut, query=s.AlertQuery, tag="alerts",
           summary="List alerts, newest first, filtered and paginated")
def list_alerts(query: s.AlertQuery) -> s.AlertPageOut:
    """Filters: metric_type, method, is_read, is_false_positive, since/until (detected_at, inclusive)."""
    filters = alert_store.AlertFilters(
        metric_type=query.metric_type, method=query.method, is_read=query.is_read,
        is_false_positive=query.is_false_positive, since=query.since, until=query.until,
    )
    page = alert_store.list_alerts(filters, page=query.page, per_page=query.per_page)
    return s.AlertPageOut(alerts=page.items, page=page.page, per_page=page.per_page, total=page.total,
                          pages=page.pages)


def _alert_action(action: Callable[[int], dict[str, Any]], alert_id: int) -> s.Alert:
    try:
        return s.Alert.model_validate(action(alert_id))
    except alert_store.AlertNotFoundError as exc:
        raise ApiError(404, str(exc)) from None


@operation("POST", "/alerts/<alert_id>/read", response=s.Alert, path=ALERT_ID, tag="alerts",
           summary="Mark an alert read")
def mark_alert_read(alert_id: int) -> s.Alert:
    """Idempotent: the first read_at is kept."""
    return _alert_action(alert_store.mark_read, alert_id)


@operation("POST", "/alerts/<alert_id>/false-positive", response=s.Alert, path=ALERT_ID, tag="alerts",
           summary="Mark an alert a false positive (and read)")
def mark_alert_false_positive(alert_id: int) -> s.Alert:
    """Idempotent."""
    return _alert_action(alert_store.mark_false_positive, alert_id)
