"""Alert routes and ``utils.ml.pipeline.alerts``: filters, pagination, read and false-positive marks, both databases."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from utils.extensions import db
from utils.ml.pipeline import alerts
from utils.models import MLAlert

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)
# (metric_type, method, hours after T0, is_read, is_false_positive)
SPECS = [
    ("stok_seviye", "isolation_forest_file", 0, False, False),
    ("stok_seviye", "isolation_forest_file", 1, True, False),
    ("stok_seviye", "z_score", 2, False, False),
    ("tuketim_miktar", "isolation_forest_db", 3, True, True),
    ("tuketim_miktar", "z_score", 4, False, False),
    ("dolum_sure", "isolation_forest_file", 5, False, False),
    ("dolum_sure", "z_score", 6, True, False),
]


@pytest.fixture
def seeded(app) -> list[int]:
    """Seven alerts, one hour apart; returns their ids in SPECS order."""
    with app.app_context():
        rows = [
            MLAlert(metric_type=metric, method=method, detected_at=T0 + timedelta(hours=hours), is_read=read,
                    read_at=T0 + timedelta(hours=hours, minutes=5) if read else None,
                    is_false_positive=fp, false_positive_at=T0 + timedelta(hours=hours, minutes=6) if fp else None,
                    entity_id=100 + i, metric_value=float(i), anomaly_score=0.6 + i / 100,
                    severity="high" if i % 2 else "low", model_id=None if method == "z_score" else 7,
                    message=f"alert {i}")
            for i, (metric, method, hours, read, fp) in enumerate(SPECS)
        ]
        db.session.add_all(rows)
        db.session.commit()
        ids = [row.id for row in rows]
        db.session.remove()
    return ids


def listed(client, headers, query: str = "") -> dict:
    response = client.get(f"/api/ml/alerts{query}", headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_list_newest_first_with_every_column(client, auth_headers, seeded):
    body = listed(client, auth_headers)
    assert (body["total"], body["page"], body["per_page"], body["pages"]) == (7, 1, 50, 1)
    assert [a["id"] for a in body["alerts"]] == seeded[::-1]
    first = body["alerts"][-1]
    assert first["detected_at"] in ("2025-06-01T12:00:00Z", "2025-06-01T12:00:00+00:00")
    assert first["metric_type"] == "stok_seviye" and first["method"] == "isolation_forest_file"
    assert first["entity_id"] == 100 and first["model_id"] == 7 and first["message"] == "alert 0"
    assert set(first) >= {"anomaly_score", "severity", "is_read", "read_at", "is_false_positive",
                          "false_positive_at", "observation_id", "expected_value", "deviation_percent"}


@pytest.mark.parametrize("query, expected", [
    ("?metric_type=stok_seviye", [2, 1, 0]),
    ("?method=z_score", [6, 4, 2]),
    ("?is_read=true", [6, 3, 1]),
    ("?is_read=false", [5, 4, 2, 0]),
    ("?is_false_positive=true", [3]),
    ("?is_false_positive=false&metric_type=tuketim_miktar", [4]),
    ("?since=2025-06-01T15:00:00Z", [6, 5, 4, 3]),  # inclusive
    ("?until=2025-06-01T13:00:00%2B00:00", [1, 0]),  # inclusive, explicit offset
    ("?since=2025-06-01T14:00:00&until=2025-06-01T16:00:00", [4, 3, 2]),  # naive = UTC
    ("?since=2025-06-01T16:00:00%2B02:00", [6, 5, 4, 3, 2]),  # 14:00 UTC
    ("?since=2025-06-01", [6, 5, 4, 3, 2, 1, 0]),  # a date is midnight UTC
    ("?since=2025-06-01T12:00:00Z&until=2025-06-01T12:00:00Z", [0]),
    ("?method=isolation_forest_db&is_read=false", []),
    ("?metric_type=unknown_metric", []),
])
def test_list_filters(client, auth_headers, seeded, query, expected):
    body = listed(client, auth_headers, query)
    assert [a["id"] for a in body["alerts"]] == [seeded[i] for i in expected]
    assert body["total"] == len(expected)


def test_pagination(client, auth_headers, seeded):
    pages = [listed(client, auth_headers, f"?per_page=3&page={page}") for page in (1, 2, 3, 4)]
    assert [len(p["alerts"]) for p in pages] == [3, 3, 1, 0]
    assert all((p["total"], p["pages"], p["per_page"]) == (7, 3, 3) for p in pages)
    assert [a["id"] for p in pages for a in p["alerts"]] == seeded[::-1]
    assert listed(client, auth_headers, "?per_page=500")["pages"] == 1
    assert listed(client, auth_headers, "?page=100000")["alerts"] == []


def test_empty_table(client, auth_headers):
    assert listed(client, auth_headers) == {"alerts": [], "page": 1, "per_page": 50, "total": 0, "pages": 0}


@pytest.mark.parametrize("query, field, rule", [
    ("?page=0", "page", "greater than or equal to 1"),
    ("?page=-3", "page", "greater than or equal to 1"),
    ("?page=100001", "page", "less than or equal to 100000"),
    ("?page=99999999999999999999999", "page", "less than or equal to 100000"),
    ("?page=abc", "page", "valid integer"),
    ("?page=1.5", "page", "valid integer"),
    ("?per_page=0", "per_page", "greater than or equal to 1"),
    ("?per_page=501", "per_page", "less than or equal to 500"),
    ("?method=random_forest", "method", "'isolation_forest_file', 'isolation_forest_db' or 'z_score'"),
    ("?is_read=perhaps", "is_read", "valid boolean"),
    ("?is_false_positive=", "is_false_positive", "valid boolean"),
    ("?metric_type=Bad-Type", "metric_type", "must match ^[a-z][a-z0-9_]{0,49}$"),
    ("?since=yesterday", "since", "valid datetime"),
    ("?since=2025-13-01T00:00:00Z", "since", "valid datetime"),
    ("?until=0001-01-01T00:00:00%2B05:00", "until", "between years 1 and 9999"),
    ("?since=2025-06-02T00:00:00Z&until=2025-06-01T00:00:00Z", "until", "must not be before since"),
    ("?sort=asc", "sort", "unknown parameter"),
    ("?page=1&page=2", "page", "at most once"),
    ("?metric_type=%00", "metric_type", "must match"),
])
def test_list_refuses_bad_parameters(client, auth_headers, seeded, query, field, rule):
    response = client.get(f"/api/ml/alerts{query}", headers=auth_headers)
    assert response.status_code == 400, response.get_json()
    body = response.get_json()
    assert [e["field"] for e in body["errors"]] == [field]
    assert rule in body["errors"][0]["rule"]
    assert body["error"].startswith(f"invalid query: {field}: ")


def test_mark_read_is_idempotent_and_keeps_the_first_time(app, client, auth_headers, seeded):
    unread = seeded[0]
    response = client.post(f"/api/ml/alerts/{unread}/read", headers=auth_headers)
    assert response.status_code == 200
    body = response.get_json()
    assert body["id"] == unread and body["is_read"] is True and body["is_false_positive"] is False
    first_read_at = body["read_at"]
    assert first_read_at is not None
    again = client.post(f"/api/ml/alerts/{unread}/read", headers=auth_headers).get_json()
    assert again["read_at"] == first_read_at
    with app.app_context():
        row = db.session.get(MLAlert, unread)
        assert row.is_read is True and row.read_at is not None and row.is_false_positive is False
        db.session.remove()
    # An already-read alert keeps its original read_at.
    read_before = client.post(f"/api/ml/alerts/{seeded[1]}/read", headers=auth_headers).get_json()
    assert read_before["read_at"] in ("2025-06-01T13:05:00Z", "2025-06-01T13:05:00+00:00")


def test_mark_false_positive_marks_read_too(app, client, auth_headers, seeded):
    target = seeded[2]
    response = client.post(f"/api/ml/alerts/{target}/false-positive", headers=auth_headers)
    assert response.status_code == 200
    body = response.get_json()
    assert body["is_false_positive"] is True and body["is_read"] is True
    assert body["false_positive_at"] is not None and body["read_at"] is not None
    assert client.post(f"/api/ml/alerts/{target}/false-positive", headers=auth_headers).get_json() == body
    assert [a["id"] for a in listed(client, auth_headers, "?is_false_positive=true")["alerts"]] == [seeded[3], target]
    with app.app_context():
        assert db.session.get(MLAlert, target).is_false_positive is True
        # The others are untouched.
        assert db.session.scalars(select(MLAlert.id).where(MLAlert.is_false_positive.is_(True)).order_by(MLAlert.id)).all() == sorted(
            [target, seeded[3]])
        db.session.remove()


def test_mark_refuses_unknown_or_bad_ids(app, client, auth_headers, seeded):
    for action in ("read", "false-positive"):
        for raw, status in (("999999", 404), ("2147483647", 404), ("2147483648", 400), ("0", 400), ("-5", 400),
                            ("x", 400), ("1e3", 400)):
            response = client.post(f"/api/ml/alerts/{raw}/{action}", headers=auth_headers)
            assert response.status_code == status, (action, raw)
            body = response.get_json()
            if status == 404:
                assert body == {"error": f"alert {raw} does not exist"}
            else:
                assert body["errors"][0]["field"] == "alert_id"
    with app.app_context():  # nothing changed
        assert db.session.scalars(select(MLAlert.id).where(MLAlert.is_read.is_(True)).order_by(MLAlert.id)).all() \
            == [seeded[1], seeded[3], seeded[6]]
        db.session.remove()


def test_alert_routes_take_post_only(client, auth_headers, seeded):
    response = client.get(f"/api/ml/alerts/{seeded[0]}/read", headers=auth_headers)
    assert response.status_code == 405
    assert response.is_json and "error" in response.get_json()


# ----------------------------------------------------------- plain functions
def test_functions_validate_their_arguments(app_ctx):
    for kwargs, field in (({"page": 0}, "page"), ({"per_page": 501}, "per_page"), ({"page": True}, "page"),
                          ({"per_page": "5"}, "per_page"), ({"filters": {"method": "knn"}}, "method"),
                          ({"filters": {"colour": "red"}}, "colour"),
                          ({"filters": {"since": T0, "until": T0 - timedelta(seconds=1)}}, "until")):
        with pytest.raises(alerts.AlertValidationError) as info:
            alerts.list_alerts(**kwargs)
        assert info.value.field == field
    with pytest.raises(alerts.AlertNotFoundError):
        alerts.mark_read(2**40)
    with pytest.raises(alerts.AlertValidationError):
        alerts.mark_false_positive("1")


def test_functions_accept_mappings_and_aware_or_naive_times(app_ctx, seeded):
    page = alerts.list_alerts({"metric_type": "dolum_sure"}, page=1, per_page=1)
    assert (page.total, page.pages, [a["id"] for a in page.items]) == (2, 2, [seeded[6]])
    istanbul = timezone(timedelta(hours=3))
    aware = alerts.list_alerts(alerts.AlertFilters(since=(T0 + timedelta(hours=5)).astimezone(istanbul)))
    naive = alerts.list_alerts(alerts.AlertFilters(since=(T0 + timedelta(hours=5)).replace(tzinfo=None)))
    assert [a["id"] for a in aware.items] == [a["id"] for a in naive.items] == [seeded[6], seeded[5]]
    assert alerts.get_alert(seeded[0])["detected_at"] == T0
