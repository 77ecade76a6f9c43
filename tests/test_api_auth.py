"""Every /api/ml/ route refuses every kind of bad credential, on both databases.

The routes are taken from the API's own registry (the one that generates the
OpenAPI document), so a new route cannot escape these checks.
"""
from __future__ import annotations

import re

import pytest
from sqlalchemy import func, select

from utils.extensions import db
from utils.models import MLMetric
from utils.web.api import OPERATIONS
from utils.web.auth import NOT_CONFIGURED, bearer_failure, token_matches

TOKEN = "test-admin-token-0123456789"
ROUTES = [(op.method, re.sub(r"<[^>]+>", "1", op.rule), op) for op in OPERATIONS]
INGEST = {"observations": [{"metric_type": "stok_seviye", "metric_value": 3, "timestamp": "2025-01-01T00:00:00Z"}]}


def call(client, method: str, path: str, headers: dict[str, str] | None = None, json=None):
    return client.open(path, method=method, headers=headers or {}, json=json)


def refusals(client, headers: dict[str, str] | None) -> dict[str, tuple[int, dict, str | None]]:
    out = {}
    for method, path, _op in ROUTES:
        response = call(client, method, path, headers)
        assert response.is_json, f"{method} {path}: {response.content_type}"
        out[f"{method} {path}"] = (response.status_code, response.get_json(), response.headers.get("WWW-Authenticate"))
    return out


# The whole API by name: a route that disappears, or one registered outside OPERATIONS (and so
# outside the checks below and the OpenAPI document), fails here.
EXPECTED_ROUTES = {
    ("GET", "/api/ml/openapi.json"),
    ("POST", "/api/ml/metrics"), ("POST", "/api/ml/detect"), ("POST", "/api/ml/scan"),
    ("POST", "/api/ml/train"), ("POST", "/api/ml/cleanup"),
    ("GET", "/api/ml/models"), ("GET", "/api/ml/models/<model_id>"), ("GET", "/api/ml/models/compare"),
    ("POST", "/api/ml/models/<model_id>/activate"), ("GET", "/api/ml/models/<model_id>/activations"),
    ("GET", "/api/ml/alerts"), ("POST", "/api/ml/alerts/<alert_id>/read"),
    ("POST", "/api/ml/alerts/<alert_id>/false-positive"),
    # incidents
    ("GET", "/api/ml/incidents"), ("GET", "/api/ml/incidents/<incident_id>"),
    ("POST", "/api/ml/incidents/<incident_id>/false-positive"),
    # promotion: gate decisions, pins, drift
    ("GET", "/api/ml/gate-decisions"), ("GET", "/api/ml/pins"), ("POST", "/api/ml/pins/unpin"),
    ("GET", "/api/ml/drift"), ("POST", "/api/ml/drift-check"),
}


def test_routes_cover_the_whole_api(app):
    registered = {(m, r.rule) for r in app.url_map.iter_rules() if r.rule.startswith("/api/ml")
                  for m in r.methods - {"HEAD", "OPTIONS"}}
    assert registered == {(op.method, op.rule) for op in OPERATIONS}
    assert registered == EXPECTED_ROUTES


@pytest.mark.parametrize("headers, reason", [
    (None, "missing Authorization header"),
    ({"Authorization": ""}, "missing Authorization header"),
    ({"Authorization": f"Basic {TOKEN}"}, "Authorization scheme must be Bearer (got 'Basic')"),
    ({"Authorization": TOKEN}, "Authorization scheme must be Bearer"),
    ({"Authorization": "Bearer"}, "no token after 'Bearer'"),
    ({"Authorization": "Bearer   "}, "no token after 'Bearer'"),
    ({"Authorization": "Bearer wrong-token"}, "invalid bearer token"),
    ({"Authorization": f"Bearer {TOKEN}x"}, "invalid bearer token"),
    ({"Authorization": f"Bearer {TOKEN[:-1]}"}, "invalid bearer token"),
    ({"Authorization": "Bearer t\u00f6ken-\u00e7"}, "invalid bearer token"),  # non-ASCII: no TypeError, no 500
], ids=["none", "empty", "basic", "no-scheme", "bearer-only", "bearer-blank", "wrong", "longer", "shorter",
        "non-ascii"])
def test_every_route_refuses_bad_credentials_with_401_and_a_reason(client, headers, reason):
    for route, (status, body, challenge) in refusals(client, headers).items():
        assert status == 401, (route, body)
        assert reason in body["error"], (route, body)
        assert challenge == 'Bearer realm="ml"', route
        assert TOKEN not in body["error"]  # the reason never echoes a token


def test_scheme_is_case_insensitive_and_token_is_exact(client):
    for scheme in ("Bearer", "bearer", "BEARER"):
        response = client.get("/api/ml/models", headers={"Authorization": f"{scheme} {TOKEN}"})
        assert response.status_code == 200, response.get_json()
    response = client.get("/api/ml/models", headers={"Authorization": f"Bearer {TOKEN.upper()}"})
    assert response.status_code == 401


def test_every_route_accepts_the_token(client, auth_headers):
    for route, (status, body, _challenge) in refusals(client, auth_headers).items():
        assert status not in (401, 403, 503), (route, body)


def test_refused_requests_change_nothing(app, client):
    response = client.post("/api/ml/metrics", json=INGEST, headers={"Authorization": "Bearer nope"})
    assert response.status_code == 401
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(MLMetric)) == 0


def test_auth_is_checked_before_validation(client):
    response = client.post("/api/ml/metrics", data="{not json", content_type="text/plain")
    assert response.status_code == 401
    response = client.get("/api/ml/models/not-a-number")
    assert response.status_code == 401


def test_every_route_refuses_with_503_when_no_token_is_configured(app, client):
    app.config["ML_ADMIN_TOKEN"] = None
    for headers in (None, {"Authorization": f"Bearer {TOKEN}"}, {"Authorization": "Bearer "}):
        for route, (status, body, _challenge) in refusals(client, headers).items():
            assert status == 503, (route, body)
            assert body["error"] == NOT_CONFIGURED
            assert "ML_ADMIN_TOKEN is not configured" in body["error"]


def test_an_empty_configured_token_counts_as_unset(app, client):
    app.config["ML_ADMIN_TOKEN"] = ""
    response = client.get("/api/ml/models", headers={"Authorization": "Bearer "})
    assert response.status_code == 503
    assert "not configured" in response.get_json()["error"]


def test_ml_disabled_answers_503_on_every_ml_route_and_writes_nothing(app, client, auth_headers):
    app.config["ML_ENABLED"] = False
    for method, path, op in ROUTES:
        response = call(client, method, path, auth_headers, json=INGEST if path.endswith("/metrics") else None)
        body = response.get_json()
        if op.needs_ml:
            assert response.status_code == 503, (method, path, body)
            assert body["error"] == "the ML subsystem is disabled (ML_ENABLED=false)"
        else:  # the OpenAPI document describes the API; it still answers
            assert response.status_code == 200, (method, path, body)
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(MLMetric)) == 0
    # Disabled still means authenticated first: no token, no information.
    assert client.get("/api/ml/models").status_code == 401


def test_bearer_failure_contract():
    assert bearer_failure(f"Bearer {TOKEN}", TOKEN) is None
    assert bearer_failure(f"  bearer   {TOKEN}  ", TOKEN) is None
    assert bearer_failure(f"Bearer {TOKEN}", None).status == 503
    assert bearer_failure(None, TOKEN).status == 401
    long_scheme = bearer_failure("X" * 100 + " abc", TOKEN)
    assert long_scheme.status == 401 and len(long_scheme.reason) < 100
    assert token_matches(TOKEN, TOKEN)
    assert not token_matches(TOKEN, None)
    assert not token_matches(None, TOKEN)
    assert not token_matches("", "")
    assert token_matches("t\u00f6ken", "t\u00f6ken")
    assert not token_matches("t\udcff", "t\u00f6ken")  # lone surrogates (from undecodable env bytes) do not crash
