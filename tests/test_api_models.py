"""Model routes: listing, detail, audit trail, activation and rollback, on both databases.

Real pickled models in a real models directory; a second app instance (its
own ModelManager and cache, the same database and directory) stands in for
another gunicorn worker when checking that an activation is seen everywhere.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tests import dbutil
from tests.ml_helpers import make_model
from utils.extensions import db
from utils.ml.model_manager import get_model_manager
from utils.models import MLModel, ModelActivation

METRIC = "stok_seviye"
SUMMARY_KEYS = {
    "id", "model_type", "metric_type", "is_active", "storage", "path", "storage_key", "size_bytes", "size_kb",
    "checksum_sha256", "parameters", "training_date", "created_at", "accuracy", "precision", "recall",
    "sklearn_version", "numpy_version", "python_version", "legacy", "legacy_path", "input_signature", "input",
    "compatible",
}


def save_versions(app, metric_type: str = METRIC, count: int = 3, model_type: str = "isolation_forest") -> list[int]:
    """Save ``count`` real versions (the last one ends up active)."""
    with app.app_context():
        manager = get_model_manager()
        ids = [manager.save_model(make_model(seed=i), model_type, metric_type, accuracy=0.5 + i / 10,
                                  parameters={"seed": i}).id for i in range(count)]
        db.session.remove()
    return ids


def active_id(app, metric_type: str = METRIC) -> int:
    with app.app_context():
        value = db.session.scalar(select(MLModel.id).where(MLModel.metric_type == metric_type,
                                                           MLModel.is_active.is_(True)))
        db.session.remove()
        return value


def audit_rows(app) -> list[ModelActivation]:
    with app.app_context():
        rows = db.session.scalars(select(ModelActivation).order_by(ModelActivation.id)).all()
        db.session.expunge_all()
        db.session.remove()
        return rows


# ---------------------------------------------------------------- listing
def test_list_is_empty_at_first(client, auth_headers):
    response = client.get("/api/ml/models", headers=auth_headers)
    assert response.status_code == 200
    assert response.get_json() == {"models": [], "count": 0}


def test_list_returns_metadata_newest_first_and_never_bytes(app, client, auth_headers):
    ids = save_versions(app, count=3)
    other = save_versions(app, metric_type="tuketim_miktar", count=1)
    body = client.get("/api/ml/models", headers=auth_headers).get_json()
    assert body["count"] == 4
    assert [m["id"] for m in body["models"]] == other + ids[::-1]
    for model in body["models"]:
        assert set(model) == SUMMARY_KEYS  # no model_data, no bytes of any kind
        assert model["storage"] == "file"
        assert (model["legacy"], model["compatible"], model["input_signature"]["kind"]) == (False, True, "raw_value")
        assert len(model["checksum_sha256"]) == 64
        assert model["training_date"].endswith("Z") or model["training_date"].endswith("+00:00")
    assert [m["is_active"] for m in body["models"]] == [True, True, False, False]


@pytest.mark.parametrize("query, expected", [
    ("metric_type=stok_seviye", {"s0", "s1", "s2"}),
    ("metric_type=tuketim_miktar", {"t0"}),
    ("active=true", {"s2", "t0", "o0"}),
    ("active=false", {"s0", "s1"}),
    ("active=0", {"s0", "s1"}),
    ("model_type=isolation_forest&metric_type=stok_seviye&active=true", {"s2"}),
    ("model_type=other_model", {"o0"}),
    ("metric_type=dolum_sure", {"o0"}),
    ("metric_type=nothing_here", set()),
])
def test_list_filters(app, client, auth_headers, query, expected):
    names = {}
    for prefix, metric, count, model_type in (("s", METRIC, 3, "isolation_forest"),
                                              ("t", "tuketim_miktar", 1, "isolation_forest"),
                                              ("o", "dolum_sure", 1, "other_model")):
        for i, model_id in enumerate(save_versions(app, metric, count, model_type)):
            names[model_id] = f"{prefix}{i}"
    response = client.get(f"/api/ml/models?{query}", headers=auth_headers)
    assert response.status_code == 200, response.get_json()
    assert {names[m["id"]] for m in response.get_json()["models"]} == expected


@pytest.mark.parametrize("query, field, rule", [
    ("metric_type=Stok", "metric_type", "must match ^[a-z][a-z0-9_]{0,49}$"),
    ("metric_type=", "metric_type", "must match"),
    ("metric_type=st%C3%B6k", "metric_type", "must match"),  # unicode
    ("metric_type=" + "a" * 51, "metric_type", "must match"),
    ("model_type=x;drop", "model_type", "must match"),
    ("active=maybe", "active", "valid boolean"),
    ("colour=red", "colour", "unknown parameter"),
    ("active=true&active=false", "active", "must be given at most once"),
])
def test_list_refuses_bad_filters(client, auth_headers, query, field, rule):
    response = client.get(f"/api/ml/models?{query}", headers=auth_headers)
    assert response.status_code == 400
    body = response.get_json()
    assert body["errors"][0]["field"] == field
    assert rule in body["errors"][0]["rule"]
    assert field in body["error"]


# ---------------------------------------------------------------- detail
def test_detail_has_checksum_size_storage_versions_metrics_and_audit(app, client, auth_headers, models_dir):
    ids = save_versions(app, count=3)
    response = client.get(f"/api/ml/models/{ids[1]}", headers=auth_headers)
    assert response.status_code == 200
    body = response.get_json()
    path = Path(body["path"])
    data = path.read_bytes()
    assert path.parent == Path(models_dir)
    assert body["checksum_sha256"] == hashlib.sha256(data).hexdigest()
    assert body["size_bytes"] == len(data) == body["storage_location"]["file_size_bytes"]
    assert body["storage_location"] == {
        "backend": "file", "models_dir": str(models_dir), "key": path.name, "path": str(path),
        "file_exists": True, "file_size_bytes": len(data), "has_blob": False,
        "store": {"backend": "local", "key": path.name, "models_dir": str(models_dir), "bucket": None, "prefix": None,
                  "object_key": None, "url": None, "endpoint": None, "region": None, "cache_dir": None},
    }
    assert body["metrics"] == {"accuracy": pytest.approx(0.6), "precision": None, "recall": None}
    assert body["parameters"] == {"seed": 1}
    assert body["library_versions"]["sklearn"] == body["sklearn_version"]
    assert [v["id"] for v in body["versions"]] == ids[::-1]
    assert [v["is_active"] for v in body["versions"]] == [True, False, False]
    # Each save activated the new version: three audit rows, newest first.
    assert [(a["from_model_id"], a["to_model_id"]) for a in body["activations"]] == [
        (ids[1], ids[2]), (ids[0], ids[1]), (None, ids[0])]
    assert "model_data" not in body


def test_detail_reports_a_missing_file(app, client, auth_headers, models_dir):
    (model_id,) = save_versions(app, count=1)
    Path(client.get(f"/api/ml/models/{model_id}", headers=auth_headers).get_json()["path"]).unlink()
    body = client.get(f"/api/ml/models/{model_id}", headers=auth_headers).get_json()
    assert body["storage_location"]["file_exists"] is False
    assert body["storage_location"]["file_size_bytes"] is None


@pytest.mark.parametrize("raw, status, rule", [
    ("999", 404, "model 999 does not exist"),
    ("2147483647", 404, "does not exist"),
    ("2147483648", 400, "less than or equal to 2147483647"),
    ("99999999999999999999999999", 400, "less than or equal to 2147483647"),
    ("0", 400, "greater than or equal to 1"),
    ("-1", 400, "greater than or equal to 1"),
    ("abc", 400, "valid integer"),
    ("1.5", 400, "valid integer"),
    ("%C3%A9", 400, "valid integer"),
])
def test_detail_and_activations_refuse_bad_or_unknown_ids(client, auth_headers, raw, status, rule):
    for suffix in ("", "/activations"):
        response = client.get(f"/api/ml/models/{raw}{suffix}", headers=auth_headers)
        assert response.status_code == status, response.get_data(as_text=True)
        assert rule in response.get_json()["error"]
        if status == 400:
            assert response.get_json()["errors"][0]["field"] == "model_id"
    response = client.post(f"/api/ml/models/{raw}/activate", headers=auth_headers)
    assert response.status_code == status


def test_activations_listing(app, client, auth_headers):
    ids = save_versions(app, count=2)
    save_versions(app, metric_type="tuketim_miktar", count=1)  # another type: not listed
    body = client.get(f"/api/ml/models/{ids[0]}/activations", headers=auth_headers).get_json()
    assert body["count"] == 2
    assert [(a["from_model_id"], a["to_model_id"], a["actor"]) for a in body["activations"]] == [
        (ids[0], ids[1], "trainer"), (None, ids[0], "trainer")]


# ---------------------------------------------------------------- activation
def test_rollback_is_atomic_audited_and_seen_by_another_instance(app, client, auth_headers, database_url,
                                                                  models_dir):
    ids = save_versions(app, count=3)
    # A second app instance = another worker process: its own manager and cache.
    other = dbutil.make_app(database_url, models_dir)
    try:
        with other.app_context():
            first = get_model_manager(other).load_active("isolation_forest", METRIC)
            assert (first.model_id, first.source) == (ids[2], "file")
            assert get_model_manager(other).load_active("isolation_forest", METRIC).source == "cache"
            db.session.remove()

        response = client.post(f"/api/ml/models/{ids[1]}/activate", headers=auth_headers,
                               json={"reason": "rollback: v3 alerts too often", "actor": "alice"})
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        pinned = body.pop("pinned")
        assert body == {
            "model_id": ids[1], "model_type": "isolation_forest", "metric_type": METRIC,
            "from_model_id": ids[2], "actor": "api:alice", "reason": "rollback: v3 alerts too often",
            "changed": True,
        }
        # A manual rollback sticks: the version is pinned, with who and why.
        assert (pinned["model_id"], pinned["actor"], pinned["reason"]) == (
            ids[1], "api:alice", "rollback: v3 alerts too often")
        assert active_id(app) == ids[1]
        last = audit_rows(app)[-1]
        assert (last.from_model_id, last.to_model_id, last.actor, last.reason) == (
            ids[2], ids[1], "api:alice", "rollback: v3 alerts too often")
        assert last.activated_at is not None

        with other.app_context():
            # At once (no TTL wait): the marker file told the other instance's cache.
            seen = get_model_manager(other).load_active("isolation_forest", METRIC)
            assert (seen.model_id, seen.source) == (ids[1], "file")
            db.session.remove()

        # Roll forward again, without a body: actor "api", default reason.
        response = client.post(f"/api/ml/models/{ids[2]}/activate", headers=auth_headers)
        assert response.status_code == 200
        assert response.get_json()["from_model_id"] == ids[1]
        assert audit_rows(app)[-1].actor == "api"
        with other.app_context():
            assert get_model_manager(other).load_active("isolation_forest", METRIC).model_id == ids[2]
            db.session.remove()
        listed = client.get("/api/ml/models?active=true", headers=auth_headers).get_json()["models"]
        assert [m["id"] for m in listed] == [ids[2]]
    finally:
        dbutil.dispose(other)


def test_activating_the_active_version_changes_nothing(app, client, auth_headers):
    ids = save_versions(app, count=2)
    before = len(audit_rows(app))
    response = client.post(f"/api/ml/models/{ids[1]}/activate", headers=auth_headers, json={})
    assert response.status_code == 200
    assert response.get_json()["changed"] is False
    assert len(audit_rows(app)) == before
    assert active_id(app) == ids[1]


def test_a_version_whose_file_fails_verification_is_refused_with_409(app, client, auth_headers):
    ids = save_versions(app, count=2)
    path = Path(client.get(f"/api/ml/models/{ids[0]}", headers=auth_headers).get_json()["path"])
    before = len(audit_rows(app))

    path.write_bytes(path.read_bytes()[:-10])  # truncated: the checksum no longer matches
    response = client.post(f"/api/ml/models/{ids[0]}/activate", headers=auth_headers)
    assert response.status_code == 409
    assert "does not match its recorded checksum" in response.get_json()["error"]
    assert active_id(app) == ids[1] and len(audit_rows(app)) == before

    path.unlink()
    response = client.post(f"/api/ml/models/{ids[0]}/activate", headers=auth_headers)
    assert response.status_code == 409
    assert "missing" in response.get_json()["error"]
    assert active_id(app) == ids[1] and len(audit_rows(app)) == before


def test_unknown_model_is_404_and_changes_nothing(app, client, auth_headers):
    ids = save_versions(app, count=1)
    response = client.post("/api/ml/models/4242/activate", headers=auth_headers, json={"reason": "x"})
    assert response.status_code == 404
    assert response.get_json() == {"error": "model 4242 does not exist"}
    assert active_id(app) == ids[0]


ACTIVATION_BODY_RULES = [
    ({"reason": "x" * 201}, "reason", "at most 200 characters"),
    ({"reason": ""}, "reason", "at least 1 character"),
    ({"reason": "line\nbreak"}, "reason", "must match"),
    ({"reason": "nul\u0000byte"}, "reason", "must match"),
    ({"reason": 5}, "reason", "valid string"),
    ({"actor": "bob smith"}, "actor", "must match"),
    ({"actor": "x" * 65}, "actor", "at most 64 characters"),
    ({"reason": "ok", "force": True}, "force", "unknown field"),
    ([], "body", "should be an object"),
    ("text", "body", "should be an object"),
]


def test_activation_body_rules(app, client, auth_headers):
    ids = save_versions(app, count=2)
    before = len(audit_rows(app))
    for body, field, rule in ACTIVATION_BODY_RULES:
        response = client.post(f"/api/ml/models/{ids[0]}/activate", headers=auth_headers, json=body)
        assert response.status_code == 400, (body, response.get_json())
        error = response.get_json()
        assert error["errors"][0]["field"] == field, body
        assert rule in error["errors"][0]["rule"], body
    assert active_id(app) == ids[1] and len(audit_rows(app)) == before


def test_activation_body_transport_errors(app, client, auth_headers):
    ids = save_versions(app, count=2)
    url = f"/api/ml/models/{ids[0]}/activate"
    response = client.post(url, headers=auth_headers, data='{"reason": "x"', content_type="application/json")
    assert response.status_code == 400 and response.get_json()["error"].startswith("malformed JSON")
    response = client.post(url, headers=auth_headers, data="reason=x", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415
    assert "application/json" in response.get_json()["error"]
    response = client.post(url, headers=auth_headers, data=b"\xff\xfe\x00", content_type="application/json")
    assert response.status_code == 400
    assert active_id(app) == ids[1]


def test_legacy_blob_version_can_be_activated(app, client, auth_headers):
    import pickle

    ids = save_versions(app, count=1)
    with app.app_context():
        legacy = MLModel(model_type="isolation_forest", metric_type=METRIC, model_data=pickle.dumps(make_model(9)),
                         parameters={}, is_active=False)
        db.session.add(legacy)
        db.session.commit()
        legacy_id = legacy.id
        db.session.remove()
    detail = client.get(f"/api/ml/models/{legacy_id}", headers=auth_headers).get_json()
    assert detail["storage"] == "database" and detail["storage_location"]["has_blob"] is True
    assert detail["storage_location"]["file_exists"] is None and detail["path"] is None
    response = client.post(f"/api/ml/models/{legacy_id}/activate", headers=auth_headers)
    assert response.status_code == 200 and response.get_json()["from_model_id"] == ids[0]
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(MLModel).where(MLModel.is_active.is_(True))) == 1
        db.session.remove()
