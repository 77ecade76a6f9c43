"""The dashboard, server side, through the Flask test client on both databases.

Sign-in with the admin token, CSRF on every form, and activation/rollback
that changes the database only when both checks pass.  The browser test
(tests/test_dashboard_browser.py) drives the same pages in Chromium.
"""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from tests.dashboard_helpers import TOKEN, csrf_from, sign_in
from tests.ml_helpers import make_model
from utils.extensions import db
from utils.ml.model_manager import get_model_manager
from utils.models import JobRun, MLAlert, MLMetric, ModelActivation, MLModel
from utils.time import utcnow
from utils.web.dashboard import svg_charts
from utils.web.dashboard.data import humanize_age


def save_versions(app, metric_type: str = "stok_seviye", count: int = 2) -> list[int]:
    with app.app_context():
        manager = get_model_manager()
        ids = [manager.save_model(make_model(seed=i), "isolation_forest", metric_type,
                                  accuracy=0.9 if i else None, precision=0.8 if i else None,
                                  recall=0.7 if i else None).id
               for i in range(count)]
        db.session.remove()
    return ids


def active_id(app, metric_type: str = "stok_seviye") -> int:
    with app.app_context():
        value = db.session.execute(
            select(MLModel.id).where(MLModel.metric_type == metric_type, MLModel.is_active.is_(True))
        ).scalar_one()
        db.session.remove()
        return value


def activation_count(app) -> int:
    with app.app_context():
        count = len(db.session.execute(select(ModelActivation.id)).all())
        db.session.remove()
        return count


# ------------------------------------------------------------------ sign-in
def test_dashboard_requires_sign_in(client):
    response = client.get("/ml/dashboard")
    assert response.status_code == 302
    assert response.location.startswith("/ml/dashboard/login")


def test_sign_in_with_the_admin_token_shows_the_dashboard(client):
    sign_in(client)
    page = client.get("/ml/dashboard")
    assert page.status_code == 200
    assert "Active model per metric type" in page.get_data(as_text=True)


def test_wrong_token_is_rejected_and_grants_nothing(client):
    csrf = csrf_from(client.get("/ml/dashboard/login"))
    response = client.post("/ml/dashboard/login", data={"csrf_token": csrf, "token": TOKEN + "x"})
    assert response.status_code == 401
    assert "Wrong admin token" in response.get_data(as_text=True)
    assert client.get("/ml/dashboard").status_code == 302


def test_sign_in_without_csrf_is_refused(client):
    client.get("/ml/dashboard/login")
    response = client.post("/ml/dashboard/login", data={"token": TOKEN})
    assert response.status_code == 403
    assert client.get("/ml/dashboard").status_code == 302


def test_sign_in_is_disabled_without_a_configured_token(app):
    app.config["ML_ADMIN_TOKEN"] = None
    client = app.test_client()
    response = client.get("/ml/dashboard/login")
    assert response.status_code == 503
    assert "ML_ADMIN_TOKEN is not configured" in response.get_data(as_text=True)
    assert client.get("/ml/dashboard").status_code == 302


def test_rotating_the_token_signs_everybody_out(app, client):
    sign_in(client)
    app.config["ML_ADMIN_TOKEN"] = "a-new-token"
    assert client.get("/ml/dashboard").status_code == 302


def test_logout_needs_csrf_and_ends_the_session(client):
    csrf = sign_in(client)
    assert client.post("/ml/dashboard/logout", data={}).status_code == 403
    assert client.get("/ml/dashboard").status_code == 200
    assert client.post("/ml/dashboard/logout", data={"csrf_token": csrf}).status_code == 302
    assert client.get("/ml/dashboard").status_code == 302


def test_session_cookie_is_httponly_and_samesite(client):
    client.get("/ml/dashboard/login")
    cookie = client.get_cookie("session")
    assert cookie is not None and cookie.http_only and cookie.same_site == "Lax"


def test_next_parameter_never_redirects_off_the_dashboard(client):
    csrf = csrf_from(client.get("/ml/dashboard/login"))
    response = client.post("/ml/dashboard/login",
                           data={"csrf_token": csrf, "token": TOKEN, "next": "//evil.example/x"})
    assert response.status_code == 302 and response.location == "/ml/dashboard"


# --------------------------------------------------------- activate/rollback
def test_rollback_activates_the_previous_version_and_audits_it(app, client):
    old, new = save_versions(app)
    assert active_id(app) == new
    csrf = sign_in(client)
    page = client.get("/ml/dashboard").get_data(as_text=True)
    assert f'action="/ml/dashboard/models/{old}/activate"' in page and "Roll back" in page

    response = client.post(f"/ml/dashboard/models/{old}/activate",
                           data={"csrf_token": csrf, "reason": "bad precision"})
    assert response.status_code == 302
    assert active_id(app) == old
    with app.app_context():
        audit = db.session.execute(select(ModelActivation).order_by(ModelActivation.id.desc())).scalars().first()
        assert (audit.actor, audit.reason, audit.from_model_id, audit.to_model_id) == \
            ("dashboard", "bad precision", new, old)
        db.session.remove()
    follow = client.get("/ml/dashboard").get_data(as_text=True)
    assert f"Model {old} is now the active isolation_forest/stok_seviye (was {new})" in follow


@pytest.mark.parametrize("csrf", [None, "", "wrong-token-of-the-right-length-000000000000"])
def test_activation_without_the_right_csrf_changes_nothing(app, client, csrf):
    old, new = save_versions(app)
    sign_in(client)
    before = activation_count(app)
    data = {} if csrf is None else {"csrf_token": csrf}
    response = client.post(f"/ml/dashboard/models/{old}/activate", data=data)
    assert response.status_code == 403
    assert "CSRF" in response.get_data(as_text=True)
    assert active_id(app) == new
    assert activation_count(app) == before


def test_csrf_token_of_another_session_is_refused(app):
    old, new = save_versions(app)
    alice, mallory = app.test_client(), app.test_client()
    sign_in(alice)
    foreign = sign_in(mallory)
    response = alice.post(f"/ml/dashboard/models/{old}/activate", data={"csrf_token": foreign})
    assert response.status_code == 403
    assert active_id(app) == new


def test_activation_without_sign_in_is_refused(app, client):
    old, new = save_versions(app)
    csrf = csrf_from(client.get("/ml/dashboard/login"))  # a valid CSRF token, but no sign-in
    response = client.post(f"/ml/dashboard/models/{old}/activate", data={"csrf_token": csrf})
    assert response.status_code == 401
    assert active_id(app) == new


def test_activating_an_unknown_model_is_404_and_changes_nothing(app, client):
    _, new = save_versions(app)
    csrf = sign_in(client)
    before = activation_count(app)
    response = client.post("/ml/dashboard/models/999999/activate", data={"csrf_token": csrf})
    assert response.status_code == 404
    assert "model 999999 does not exist" in response.get_data(as_text=True)
    assert active_id(app) == new and activation_count(app) == before


def test_a_version_whose_file_is_corrupt_is_not_activated(app, client, models_dir):
    old, new = save_versions(app)
    with app.app_context():
        key = db.session.get(MLModel, old).model_path
        db.session.remove()
    path = models_dir / key
    path.write_bytes(path.read_bytes()[:100])  # a real truncated file
    csrf = sign_in(client)
    response = client.post(f"/ml/dashboard/models/{old}/activate", data={"csrf_token": csrf})
    assert response.status_code == 409
    assert "checksum" in response.get_data(as_text=True)
    assert active_id(app) == new


def test_an_overlong_reason_is_refused(app, client):
    old, new = save_versions(app)
    csrf = sign_in(client)
    response = client.post(f"/ml/dashboard/models/{old}/activate", data={"csrf_token": csrf, "reason": "x" * 201})
    assert response.status_code == 400 and "reason" in response.get_data(as_text=True)
    assert active_id(app) == new


# ------------------------------------------------------------------ content
def test_page_shows_models_metrics_charts_store_and_jobs(app, client):
    save_versions(app, "stok_seviye", 2)
    save_versions(app, "tuketim_miktar", 1)  # seed 0: no labels, so no metrics
    now = utcnow()
    with app.app_context():
        for days, metric_type in ((0, "stok_seviye"), (1, "stok_seviye"), (1, "dolum_sure")):
            db.session.add(MLAlert(metric_type=metric_type, metric_value=1.0, severity="high", method="z_score",
                                   detected_at=now - timedelta(days=days)))
        for minutes, source, method in ((0, "cache", "isolation_forest_file"), (30, "file", "isolation_forest_file"),
                                        (60, "none", "z_score")):
            db.session.add(MLMetric(metric_type="model_load_time", metric_value=2.5 + minutes,
                                    timestamp=now - timedelta(minutes=minutes),
                                    extra_data={"source": source, "method": method,
                                                "fallback_reasons": [] if method != "z_score" else ["x"]}))
        db.session.add(JobRun(job_name="anomaly_scan", scheduled_for=now, started_at=now - timedelta(seconds=3),
                              finished_at=now, status="success", host="h1", pid=11))
        db.session.add(JobRun(job_name="train_models", scheduled_for=now, started_at=now, status="failed",
                              finished_at=now, host="h1", pid=12, error="ValueError: no data"))
        db.session.commit()
        db.session.remove()
    sign_in(client)
    page = client.get("/ml/dashboard").get_data(as_text=True)
    assert page.count('<svg class="chart"') == 3
    assert "—, no labels" in page  # tuketim_miktar has NULL precision/recall
    assert "0.900" in page and "0.800" in page and "0.700" in page
    assert "1 of 3" in page  # the fallback caption counts the z_score row
    assert "anomaly_scan" in page and "train_models" in page and "ValueError: no data" in page
    assert "2 model files" not in page and "3 model files" in page
    assert "dolum_sure" in page  # the alert chart's legend


def test_empty_database_renders_placeholders(client):
    sign_in(client)
    page = client.get("/ml/dashboard").get_data(as_text=True)
    assert "No models yet" in page and "No alerts in the last 14 days" in page
    assert "No job has run yet" in page


def test_stylesheet_is_served_by_the_app(client):
    response = client.get("/static/dashboard.css")
    assert response.status_code == 200 and b".card" in response.data


# ------------------------------------------------------------ pure helpers
def test_svg_bars_stack_and_escape_labels():
    markup = svg_charts.stacked_bars(["01-01", "01-02"], [svg_charts.Series("<a>", [1, 2]),
                                                          svg_charts.Series("b", [3, None])], "t")
    assert markup.count("<rect class=\"bar\"") == 3 and "&lt;a&gt;" in markup and "<a>" not in markup


def test_svg_lines_break_at_gaps_and_empty_input_says_so():
    markup = svg_charts.lines(["a", "b", "c", "d"], [svg_charts.Series("s", [1, 2, None, 4])], "t")
    assert markup.count("<polyline") == 1 and markup.count("<circle") == 3
    assert "No data yet" in svg_charts.lines([], [], "t")


@pytest.mark.parametrize("seconds,text", [(5, "5s"), (125, "2m"), (3600, "1h"), (5400, "1h 30m"),
                                          (86400 * 2 + 3600, "2d 1h")])
def test_humanize_age(seconds, text):
    assert humanize_age(seconds) == text
