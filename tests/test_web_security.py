"""Web security through the Flask test client, on both databases (issue 12).

Headers on the dashboard and the API, ``next=`` with CR/LF and other
open-redirect shapes, path ids that only look like ids, sign-out that
revokes a copied cookie, the rate limit's counter table (limit, window,
pruning, IPv6 per /64) and bounded Prometheus labels under 3,000 invented
metric types.  The multi-worker behaviour is tests/test_web_security_gunicorn.py.
"""
from __future__ import annotations

import re
import time

import pytest
from sqlalchemy import select

from tests.dashboard_helpers import TOKEN, csrf_from, sign_in
from tests.ml_helpers import make_model
from tests.promutil import matching, parse
from utils.extensions import db
from utils.ml.model_manager import get_model_manager
from utils.settings import default_of
from utils.web.security import ratelimit
from utils.web.security.models import AuthFailureCount, RevokedSession


@pytest.fixture
def limited(app):
    """The app with the shipped rate limit (tests/dbutil.py lifts it for the other tests)."""
    for key in ("ML_AUTH_MAX_FAILURES", "ML_AUTH_WINDOW_SECONDS", "ML_AUTH_LOCKOUT_SECONDS"):
        app.config[key] = default_of(key)
    return app


# ------------------------------------------------------------------ headers
def test_dashboard_pages_carry_the_security_headers(client):
    for response in (client.get("/ml/dashboard/login"), client.get("/ml/dashboard")):
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert response.headers["Cache-Control"] == "no-store"
        csp = response.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
    sign_in(client)
    page = client.get("/ml/dashboard")
    html = page.get_data(as_text=True)
    csp = page.headers["Content-Security-Policy"]
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
    # No script without this response's nonce: there is no script at all, and no inline style or handler.
    nonces = re.findall(r"'nonce-([^']+)'", csp)
    for tag in re.findall(r"<script\b[^>]*>", html):
        assert nonces and f'nonce="{nonces[0]}"' in tag, tag
    assert "script-src 'none'" in csp or nonces
    assert not re.search(r"\son[a-z]+=", html) and " style=" not in html and "javascript:" not in html


def test_api_responses_carry_the_security_headers(client, auth_headers):
    for response in (client.get("/api/ml/models", headers=auth_headers), client.get("/api/ml/models")):
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["Content-Security-Policy"].startswith("default-src 'none'")


# ------------------------------------------------------------------- next=
@pytest.mark.parametrize("target", [
    "/ml/dashboard\r\nSet-Cookie: evil=1", "/ml/dashboard\r", "/ml/dashboard\n", "/ml/dashboard\x00",
    "//evil.example/x", "/ml/dashboard//evil.example", "/\\evil.example", "https://evil.example/ml/dashboard",
    "/ml/dashboard/\\evil", "javascript:alert(1)", "/ml/dashboardevil", " /ml/dashboard", "/ml/dashboard/\u00e9",
])
def test_next_never_gives_500_nor_leaves_the_dashboard(client, target):
    csrf = csrf_from(client.get("/ml/dashboard/login"))
    response = client.post("/ml/dashboard/login", data={"csrf_token": csrf, "token": TOKEN, "next": target})
    assert response.status_code == 302 and response.location == "/ml/dashboard", response.location
    # Signed in, the sign-in page redirects to next= too.
    again = client.get("/ml/dashboard/login", query_string={"next": target})
    assert again.status_code == 302 and again.location == "/ml/dashboard"


def test_next_keeps_a_plain_dashboard_path(client):
    csrf = csrf_from(client.get("/ml/dashboard/login"))
    response = client.post("/ml/dashboard/login",
                           data={"csrf_token": csrf, "token": TOKEN, "next": "/ml/dashboard/?x=1"})
    assert response.location == "/ml/dashboard/?x=1"


# ------------------------------------------------------------- SECRET_KEY
def test_an_anonymous_cookie_does_not_verify_under_the_token(monkeypatch, database_url, models_dir):
    """Issue 12: with SECRET_KEY unset the cookie of GET /ml/dashboard/login was signed with the token,
    an offline oracle for token guesses.  Now the key is never the token."""
    from flask import Flask
    from flask.sessions import SecureCookieSessionInterface
    from itsdangerous import BadSignature

    from app import create_app

    monkeypatch.setenv("ML_ADMIN_TOKEN", TOKEN)
    monkeypatch.delenv("SECRET_KEY", raising=False)
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": database_url, "ML_MODELS_DIR": str(models_dir)})
    assert app.secret_key and app.secret_key != TOKEN
    client = app.test_client()
    client.get("/ml/dashboard/login")
    cookie = client.get_cookie("session").value
    guesser = Flask("guesser")
    guesser.secret_key = TOKEN
    with pytest.raises(BadSignature):
        SecureCookieSessionInterface().get_signing_serializer(guesser).loads(cookie)
    with app.app_context():
        db.engine.dispose()


# ---------------------------------------------------------------- path ids
def test_path_ids_must_be_plain_digits(app, client, auth_headers):
    with app.app_context():
        model_id = get_model_manager().save_model(make_model(seed=1), "isolation_forest", "stok_seviye").id
        db.session.remove()
    assert client.get(f"/api/ml/models/{model_id}", headers=auth_headers).status_code == 200
    for raw in (f"%20{model_id}", f"{model_id}.0", f"+{model_id}", f"{model_id}%20", f"{model_id}_0"):
        response = client.get(f"/api/ml/models/{raw}", headers=auth_headers)
        assert response.status_code == 404, (raw, response.get_json())
        assert "plain digits" in response.get_json()["error"]
    response = client.post(f"/api/ml/models/{model_id}.0/activate", headers=auth_headers, json={"reason": "x"})
    assert response.status_code == 404


# ------------------------------------------------------------------ sign-out
def test_sign_out_revokes_a_copied_cookie(app, client):
    csrf = sign_in(client)
    copy = app.test_client()
    copy.set_cookie("session", client.get_cookie("session").value)
    assert copy.get("/ml/dashboard").status_code == 200
    assert client.post("/ml/dashboard/logout", data={"csrf_token": csrf}).status_code == 302
    response = copy.get("/ml/dashboard")
    assert response.status_code == 302 and response.location.startswith("/ml/dashboard/login")
    assert copy.post("/ml/dashboard/models/1/activate", data={"csrf_token": csrf}).status_code == 401
    with app.app_context():
        row = db.session.execute(select(RevokedSession)).scalar_one()
        lifetime = app.permanent_session_lifetime.total_seconds()
        assert time.time() + lifetime - 60 < row.expires_at <= time.time() + lifetime
        db.session.remove()
    # Signing in again gives a new session that works.
    sign_in(client)
    assert client.get("/ml/dashboard").status_code == 200


# ---------------------------------------------------------------- rate limit
def test_the_shipped_limit_locks_the_api_and_the_sign_in_of_one_address(limited, client):
    limit = limited.config["ML_AUTH_MAX_FAILURES"]
    wrong = {"Authorization": "Bearer " + "w" * 30}
    statuses = [client.get("/api/ml/models", headers=wrong).status_code for _ in range(limit + 5)]
    assert statuses == [401] * limit + [429] * 5
    right = client.get("/api/ml/models", headers={"Authorization": f"Bearer {TOKEN}"})
    assert right.status_code == 429
    assert 0 < int(right.headers["Retry-After"]) <= limited.config["ML_AUTH_LOCKOUT_SECONDS"]
    csrf = csrf_from(client.get("/ml/dashboard/login"))
    page = client.post("/ml/dashboard/login", data={"csrf_token": csrf, "token": TOKEN})
    assert page.status_code == 429 and "Retry-After" in page.headers
    # Another address (REMOTE_ADDR) is not locked.
    other = client.get("/api/ml/models", headers={"Authorization": f"Bearer {TOKEN}"},
                       environ_base={"REMOTE_ADDR": "192.0.2.7"})
    assert other.status_code == 200


def test_missing_headers_do_not_count_and_a_window_expires(limited, client):
    limited.config.update(ML_AUTH_MAX_FAILURES=3, ML_AUTH_WINDOW_SECONDS=1.0)
    for _ in range(10):
        assert client.get("/api/ml/models").status_code == 401  # no token compared: not a guess
    wrong = {"Authorization": "Bearer " + "w" * 30}
    assert [client.get("/api/ml/models", headers=wrong).status_code for _ in range(2)] == [401, 401]
    time.sleep(1.1)  # the window is over: the count starts again
    assert [client.get("/api/ml/models", headers=wrong).status_code for _ in range(3)] == [401, 401, 401]
    assert client.get("/api/ml/models", headers=wrong).status_code == 429


def test_counter_rows_are_pruned_and_ipv6_counts_per_64(limited, client):
    limited.config.update(ML_AUTH_WINDOW_SECONDS=1.0, ML_AUTH_LOCKOUT_SECONDS=1.0)
    wrong = {"Authorization": "Bearer " + "w" * 30}
    for host in range(1, 6):
        addr = f"2001:db8:0:1::{host}"  # one /64: one counter
        client.get("/api/ml/models", headers=wrong, environ_base={"REMOTE_ADDR": addr})
    with limited.app_context():
        rows = db.session.execute(select(AuthFailureCount)).scalars().all()
        assert [(r.client, r.failures) for r in rows] == [("2001:db8:0:1::/64", 5)]
        db.session.remove()
    assert ratelimit.client_key("::ffff:198.51.100.4") == "198.51.100.4"
    time.sleep(1.1)
    ratelimit._pruned["at"] = 0.0  # the next failure prunes (at most once a minute otherwise)
    client.get("/api/ml/models", headers=wrong, environ_base={"REMOTE_ADDR": "198.51.100.9"})
    with limited.app_context():
        assert [r.client for r in db.session.execute(select(AuthFailureCount)).scalars()] == ["198.51.100.9"]
        db.session.remove()


# ---------------------------------------------------------- metric labels
def test_3000_invented_metric_types_leave_the_scrape_small(app, client, auth_headers):
    with app.app_context():  # a type the service has a model for keeps its own name
        get_model_manager().save_model(make_model(seed=3), "isolation_forest", "zz_custom_type")
        db.session.remove()
    before = client.get("/metrics").get_data(as_text=True)
    for i in range(3000):
        response = client.post("/api/ml/detect", headers=auth_headers,
                               json={"metric_type": f"invented_{i:04d}", "values": [1, 2, 3, 50]})
        assert response.status_code == 200, response.get_json()
    client.post("/api/ml/detect", headers=auth_headers, json={"metric_type": "zz_custom_type", "values": [1, 2]})
    after = client.get("/metrics").get_data(as_text=True)
    _, samples = parse(after)
    fallbacks = matching(samples, "ml_model_fallbacks_total")
    assert not [labels for labels in fallbacks if dict(labels)["metric_type"].startswith("invented_")]
    assert sum(v for labels, v in fallbacks.items() if dict(labels)["metric_type"] == "other") >= 3000
    assert "invented_" not in after
    assert len(fallbacks) < 40, sorted(fallbacks)
    assert len(after) - len(before) < 5000, (len(before), len(after))


def test_sign_in_state_and_nonce_belong_to_one_request_even_inside_a_longer_app_context(app):
    # A CLI command or a test may push one app context around several requests:
    # ``g`` then outlives each request, so neither the signed-in check nor the CSP
    # nonce may be kept there (a cached "signed out" locked the user out; a nonce
    # must never repeat).
    with app.app_context():
        client = app.test_client()
        first = client.get("/ml/dashboard/login")
        token = csrf_from(first)
        assert client.post("/ml/dashboard/login", data={"csrf_token": token, "token": TOKEN}).status_code == 302
        page = client.get("/ml/dashboard")
        assert page.status_code == 200
        nonces = [re.findall(r"'nonce-([^']+)'", r.headers["Content-Security-Policy"])
                  for r in (first, page, client.get("/ml/dashboard"))]
        flat = [n for found in nonces for n in found]
        assert len(flat) == len(set(flat))
