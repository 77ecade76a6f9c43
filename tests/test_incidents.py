"""Incidents end to end, on PostgreSQL and SQLite: scans group alerts, the API, feedback, notifications,
the dashboard and /metrics.

The data: hourly readings around 20 for two rooms, no model (the per-entity
Z-score of the chain's last step decides, deterministic), with readings of
200 placed where the grouping rule has something to decide.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from tests import dbutil
from tests.dashboard_helpers import sign_in
from utils.extensions import db
from utils.ml.incidents import service
from utils.ml.incidents.models import MLIncident
from utils.ml.notify.models import Notification
from utils.ml.pipeline.observations import ingest_observations
from utils.ml.pipeline.scan import run_scan
from utils.models import MLAlert

METRIC = "oda_sicaklik"
# Ten days ago at midnight: inside the training window (scans step over older readings).
T0 = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=10)
SPIKES = {1: (40, 41, 90), 2: (40,)}  # hour indices: 40 and 41 join, 90 is 49 h later: a new incident


def readings(entity: int, hours: range, spikes: tuple[int, ...] = ()) -> list[dict]:
    return [{"metric_type": METRIC, "entity_id": entity, "timestamp": (T0 + timedelta(hours=h)).isoformat(),
             "metric_value": 200.0 if h in spikes else 20.0 + (h * 7 % 5) * 0.3} for h in hours]


@pytest.fixture
def notify_app(database_url, models_dir):
    """The test app with a webhook channel and incidents notified from ``high`` up."""
    app = dbutil.make_app(database_url, models_dir, ML_NOTIFY_WEBHOOK_URL="https://hooks.example/ml",
                          ML_NOTIFY_WEBHOOK_SECRET="0123456789abcdef", ML_NOTIFY_MIN_SEVERITY="high")
    yield app
    dbutil.dispose(app)


@pytest.fixture
def scanned(notify_app):
    with notify_app.app_context():
        ingest_observations(readings(1, range(100), SPIKES[1]) + readings(2, range(100), SPIKES[2]))
        summary = run_scan(METRIC)["metric_types"][METRIC]
        yield summary


def incidents() -> list[MLIncident]:
    rows = db.session.execute(select(MLIncident).order_by(MLIncident.entity_id, MLIncident.started_at)).scalars()
    return list(rows)


def test_consecutive_anomalies_of_one_entity_form_one_incident(scanned):
    assert scanned["method"] == "z_score" and scanned["alerts"] == 4 and scanned["incidents_opened"] == 3
    found = incidents()
    assert [(i.entity_id, i.alert_count) for i in found] == [(1, 2), (1, 1), (2, 1)]
    first = found[0]
    assert (first.started_at.replace(tzinfo=timezone.utc), first.ended_at.replace(tzinfo=timezone.utc)) == \
        (T0 + timedelta(hours=40), T0 + timedelta(hours=41))
    assert first.severity == "critical" and first.peak_value == 200.0 and first.metric_type == METRIC
    assert first.peak_observation_id in {a.observation_id for a in db.session.execute(select(MLAlert)).scalars()}
    # Every alert of the scan points at its incident; the contract's one row per observation holds.
    alerts = db.session.execute(select(MLAlert).order_by(MLAlert.id)).scalars().all()
    assert len(alerts) == 4 and len({a.observation_id for a in alerts}) == 4
    by_incident = {}
    for alert in alerts:
        by_incident.setdefault(alert.incident_id, []).append(alert.entity_id)
    assert {k: v for k, v in by_incident.items()} == {found[0].id: [1, 1], found[1].id: [1], found[2].id: [2]}


def test_a_later_scan_extends_the_open_incident_and_notifies_each_incident_once(scanned):
    keys = set(db.session.execute(select(Notification.idempotency_key)).scalars())
    assert keys == {f"incident:{i.id}" for i in incidents()}  # critical >= high: all three
    # Five hours after entity 1's last spike, in a new scan: the same incident grows.
    ingest_observations(readings(1, range(100, 101)) + readings(1, range(95, 96), (95,)))
    summary = run_scan(METRIC)["metric_types"][METRIC]
    assert summary["alerts"] == 1 and summary["incidents_opened"] == 0
    last = incidents()[1]
    assert last.alert_count == 2 and last.ended_at.replace(tzinfo=timezone.utc) == T0 + timedelta(hours=95)
    assert db.session.execute(select(Notification.idempotency_key)).scalars().all().count(f"incident:{last.id}") == 1


def test_incidents_below_the_notification_severity_are_not_notified(notify_app):
    with notify_app.app_context():
        ingest_observations(readings(3, range(60), (30,)))
        # 25 against readings of 20-21.2 (MAD 0.3): z about 10, twice the limit of 5: medium.
        ingest_observations([{"metric_type": METRIC, "entity_id": 3, "metric_value": 25.0,
                              "timestamp": (T0 + timedelta(hours=60)).isoformat()}])
        run_scan(METRIC)
        graded = {i.id: i.severity for i in incidents()}
        notified = set(db.session.execute(select(Notification.idempotency_key)).scalars())
        assert sorted(graded.values()) == ["critical", "medium"]
        assert notified == {f"incident:{k}" for k, v in graded.items() if v == "critical"}


def test_the_api_lists_gets_and_takes_false_positive_feedback(scanned, notify_app):
    client = notify_app.test_client()
    headers = {"Authorization": "Bearer test-admin-token-0123456789"}
    listed = client.get(f"/api/ml/incidents?metric_type={METRIC}&entity_id=1", headers=headers)
    assert listed.status_code == 200, listed.get_json()
    body = listed.get_json()
    assert body["total"] == 2 and [i["alert_count"] for i in body["incidents"]] == [1, 2]  # latest first
    incident_id = body["incidents"][1]["id"]

    detail = client.get(f"/api/ml/incidents/{incident_id}", headers=headers).get_json()
    assert [a["incident_id"] for a in detail["alerts"]] == [incident_id] * 2
    assert all(not a["is_false_positive"] for a in detail["alerts"])

    assert client.post(f"/api/ml/incidents/{incident_id}/false-positive").status_code == 401
    marked = client.post(f"/api/ml/incidents/{incident_id}/false-positive", headers=headers)
    assert marked.status_code == 200 and marked.get_json()["is_false_positive"] is True
    detail = client.get(f"/api/ml/incidents/{incident_id}", headers=headers).get_json()
    assert all(a["is_false_positive"] and a["is_read"] for a in detail["alerts"])
    # The other incidents' alerts are untouched.
    others = db.session.execute(select(MLAlert).where(MLAlert.incident_id != incident_id)).scalars().all()
    assert others and not any(a.is_false_positive for a in others)
    # Idempotent.
    assert client.post(f"/api/ml/incidents/{incident_id}/false-positive", headers=headers).status_code == 200

    assert client.get("/api/ml/incidents/999999", headers=headers).status_code == 404
    bad = client.get("/api/ml/incidents?severity=huge", headers=headers)
    assert bad.status_code == 400 and "severity" in bad.get_data(as_text=True)
    fp = client.get("/api/ml/incidents?is_false_positive=true", headers=headers).get_json()
    assert [i["id"] for i in fp["incidents"]] == [incident_id]


def test_service_validation_names_the_field(scanned):
    with pytest.raises(service.IncidentValidationError) as caught:
        service.list_incidents(per_page=0)
    assert caught.value.field == "per_page"
    with pytest.raises(service.IncidentValidationError) as caught:
        service.mark_false_positive("7")  # type: ignore[arg-type]
    assert caught.value.field == "incident_id"
    with pytest.raises(service.IncidentNotFoundError):
        service.get_incident(123456)


def test_dashboard_panel_and_metrics(scanned, notify_app):
    client = notify_app.test_client()
    csrf = sign_in(client)
    page = client.get("/ml/dashboard").get_data(as_text=True)
    assert 'id="incidents"' in page and "Latest incidents" in page and METRIC in page
    first = incidents()[0]
    response = client.post(f"/ml/dashboard/incidents/{first.id}/false-positive", data={"csrf_token": csrf})
    assert response.status_code == 302
    db.session.expire_all()
    assert db.session.get(MLIncident, first.id).is_false_positive
    # Without the form's token nothing changes.
    second = incidents()[1]
    assert client.post(f"/ml/dashboard/incidents/{second.id}/false-positive").status_code == 403

    text = client.get("/metrics").get_data(as_text=True)
    # Three critical incidents, one now a false positive; the data is from March: none is open.
    assert 'ml_incidents{severity="critical"} 2.0' in text and 'ml_incidents{severity="low"} 0.0' in text
    assert 'ml_incidents_open{severity="critical"} 0.0' in text


def test_the_incident_query_refuses_until_before_since(client, auth_headers):
    response = client.get("/api/ml/incidents?since=2026-06-02T00:00:00Z&until=2026-06-01T00:00:00Z",
                          headers=auth_headers)
    assert response.status_code == 400
    body = response.get_data(as_text=True)
    assert "until" in body and "must not be before since" in body
