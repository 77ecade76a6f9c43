"""The app on S3 (``ML_STORE_URL``) against a real S3 server (nanio on loopback): no mocks, no shared volume.

Each "host" is its own empty ``ML_MODELS_DIR``; the only things hosts share
are the database and the bucket, as on two servers.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests import dbutil
from tests.ml_helpers import booby_pickle, make_model, scores
from tests.pipeline_helpers import small_hotel
from tests.procutil import ROOT, base_env, start, stop_group, wait_until
from tests.s3_helpers import aws, bucket, no_ambient_aws, server  # noqa: F401  (fixtures)
from tests.s3_helpers import cache_files, model_objects, s3_app, top_level_models
from utils.extensions import db
from utils.ml.anomaly_detector import AnomalyDetector
from utils.ml.model_manager import ModelManager, ModelManagerError, get_model_manager
from utils.ml.model_trainer import train_models
from utils.ml.store.s3 import S3ModelStore
from utils.models import MLModel

METRIC = "stok_seviye"


@pytest.fixture
def s3app(database_url, models_dir, aws, bucket):
    app = s3_app(database_url, models_dir, f"s3://{bucket}/models")
    yield app
    dbutil.dispose(app)


def other_host(app, tmp_path, name: str) -> ModelManager:
    """A manager as another host has it: same database and bucket, its own empty models directory."""
    with app.app_context():
        return ModelManager(db, models_dir=str(tmp_path / name))


def test_the_manager_saves_to_the_bucket_and_another_host_loads_it_with_an_empty_cache(
        s3app, server, bucket, models_dir, tmp_path):
    model = make_model(3)
    with s3app.app_context():
        manager = get_model_manager()
        assert isinstance(manager.store, S3ModelStore)
        path = manager.save_model_to_file(model, "isolation_forest", "stok_seviye", accuracy=0.9)
        row = db.session.query(MLModel).one()
        assert path == f"s3://{bucket}/models/{row.model_path}"
        stored = model_objects(server, bucket)
        assert list(stored) == [f"models/{row.model_path}"]
        assert top_level_models(models_dir) == set()  # the directory is only the cache now

        host_b = other_host(s3app, tmp_path, "host-b")
        assert cache_files(tmp_path / "host-b") == []
        outcome = host_b.load_active("isolation_forest", "stok_seviye")
        assert outcome.ok and outcome.source == "file", outcome
        assert np.allclose(scores(outcome.model), scores(model))
        # Downloaded once, verified, cached on host B's own disk.
        cached = cache_files(tmp_path / "host-b")
        assert [p.read_bytes() for p in cached] == list(stored.values())

        # The contract's listing and info name the object.
        info = manager.get_model_info("isolation_forest", "stok_seviye")
        assert info["path"] == path and info["is_active"]
        assert [m["path"] for m in manager.list_available_models()] == [path]


def test_detection_on_another_host_uses_the_s3_model_and_says_isolation_forest_file(s3app, tmp_path):
    with s3app.app_context():
        small_hotel()
        trained = {r["metric_type"]: r for r in train_models(METRIC, actor="test")}[METRIC]
        host_b = other_host(s3app, tmp_path, "host-b")
        obs = [{"entity_id": i % 10, "metric_value": float(v)} for i, v in enumerate(range(50))]
        result = AnomalyDetector(db, host_b).detect_anomalies_with_fallback(METRIC, obs)
        assert result.method == "isolation_forest_file" and result.source == "file"
        assert result.model_id == trained["model_id"] and result.fallback_reasons == []


def test_a_tampered_object_is_refused_as_checksum_mismatch_and_never_unpickled(s3app, server, bucket, tmp_path):
    marker = tmp_path / "UNPICKLED"
    with s3app.app_context():
        small_hotel()
        train_models(METRIC, actor="test")
        row = db.session.query(MLModel).filter_by(is_active=True, metric_type=METRIC).one()
        # Someone with write access to the bucket replaces the object with a booby-trapped pickle.
        server.client().put_object(Bucket=bucket, Key=f"models/{row.model_path}", Body=booby_pickle(marker))

        host_b = other_host(s3app, tmp_path, "host-b")
        outcome = host_b.load_active("isolation_forest", METRIC)
        assert (outcome.model, outcome.reason) == (None, "checksum_mismatch"), outcome
        assert "does not match its expected SHA-256" in outcome.detail
        assert cache_files(tmp_path / "host-b") == []  # refused bytes are not cached either

        obs = [{"entity_id": 1, "metric_value": float(v)} for v in range(30)]
        result = AnomalyDetector(db, host_b).detect_anomalies_with_fallback(METRIC, obs)
        assert result.method == "z_score"
        assert result.fallback_reasons[0].startswith("isolation_forest_file: checksum_mismatch")
        # The activation path verifies the same way and refuses it.
        with pytest.raises(ModelManagerError, match="cannot be activated: .*does not match"):
            host_b.activate_model(row.id, actor="test")
    assert not marker.exists(), "the tampered object was unpickled"


def test_the_model_detail_names_the_bucket_and_key_and_never_a_credential(s3app, server, bucket):
    client = s3app.test_client()
    with s3app.app_context():
        get_model_manager().save_model(make_model(1), "isolation_forest", "stok_seviye")
        row = db.session.query(MLModel).one()
    response = client.get(f"/api/ml/models/{row.id}", headers={"Authorization": "Bearer test-admin-token-0123456789"})
    assert response.status_code == 200, response.get_json()
    store = response.get_json()["storage_location"]["store"]
    assert store == {
        "backend": "s3", "bucket": bucket, "prefix": "models", "key": row.model_path,
        "object_key": f"models/{row.model_path}", "url": f"s3://{bucket}/models/{row.model_path}",
        "endpoint": server.endpoint, "region": "us-east-1", "cache_dir": store["cache_dir"], "models_dir": None,
    }
    assert response.get_data(as_text=True).count(server.secret_key) == 0
    assert response.get_data(as_text=True).count(server.access_key) == 0


def test_ready_probes_the_bucket_once_per_interval_and_names_the_failed_check(
        database_url, models_dir, server, aws, bucket, monkeypatch):
    app = s3_app(database_url, models_dir, f"s3://{bucket}/models")
    missing = s3_app(database_url, models_dir, "s3://no-such-bucket-here/models")
    denied = s3_app(database_url, models_dir, f"s3://{bucket}/models")
    try:
        first = app.test_client().get("/ready")
        assert first.status_code == 200, first.get_json()
        check = first.get_json()["checks"]["model_store"]
        assert check["ok"] and check["url"] == f"s3://{bucket}/models"
        # The next probes within the interval reuse that answer: no PUT+DELETE per request.
        again = [app.test_client().get("/ready").get_json()["checks"]["model_store"] for _ in range(3)]
        assert all(c["ok"] and c["ms"] == check["ms"] and c["age_s"] >= check["age_s"] for c in again)

        for bad, words in ((missing, "no-such-bucket-here' does not exist"),):
            body = bad.test_client().get("/ready")
            assert body.status_code == 503
            assert body.get_json()["failed"] == ["model_store"]
            assert words in body.get_json()["checks"]["model_store"]["error"]
        # Credentials are read when the store is first opened: this app's secret was the wrong one.
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        body = denied.test_client().get("/ready")
        assert body.status_code == 503 and body.get_json()["failed"] == ["model_store"]
        error = body.get_json()["checks"]["model_store"]["error"]
        assert "SignatureDoesNotMatch" in error and "AWS_SECRET_ACCESS_KEY" in error
        assert "not-the-secret" not in body.get_data(as_text=True)
    finally:
        for each in (app, missing, denied):
            dbutil.dispose(each)


# --------------------------------------------------------------- two processes
WATCHER = """
import json, sys, time
from app import create_app
from utils.extensions import db
from utils.ml.model_manager import get_model_manager
app = create_app()
log = open(sys.argv[1], "a")
with app.app_context():
    manager = get_model_manager()
    seen = "start"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        outcome = manager.load_active("isolation_forest", "stok_seviye")
        state = (outcome.model_id if outcome.ok else None, outcome.source)
        if state[0] != seen:
            seen = state[0]
            log.write(json.dumps({"t": time.time(), "model_id": seen, "source": outcome.source,
                                  "reason": outcome.reason}) + "\\n")
            log.flush()
        db.session.remove()  # as a request ends
        time.sleep(0.05)
"""


def _seen(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


# PostgreSQL only: hosts share a database server; an SQLite file cannot be shared between hosts.
@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_model_trained_by_one_process_is_used_by_another_within_one_cache_ttl(
        backend, database_url, models_dir, server, bucket, tmp_path):
    """Two real processes, each with its own empty ML_MODELS_DIR: the bucket and the database are all they share."""
    ttl = 3.0
    app = s3_app(database_url, models_dir, f"s3://{bucket}/models")
    with app.app_context():
        small_hotel()
    dbutil.dispose(app)
    common = dict(DATABASE_URL=database_url, ML_STORE_URL=f"s3://{bucket}/models", ML_ADMIN_TOKEN="t" * 24,
                  ML_CACHE_TTL_SECONDS=str(ttl), ML_N_ESTIMATORS="20", ML_LOG_LEVEL="warning",
                  FLASK_APP="app:app", PYTHONPATH=str(ROOT), **server.env())
    trainer_dir, watcher_dir = tmp_path / "host-a", tmp_path / "host-b"
    watch_log = tmp_path / "watcher.jsonl"
    watcher = start([sys.executable, "-c", WATCHER, str(watch_log)],
                    base_env(tmp_path, ML_MODELS_DIR=str(watcher_dir), **common), tmp_path / "watcher.log")
    try:
        wait_until(lambda: _seen(watch_log), 60, "the watcher's first load", [watcher], [tmp_path / "watcher.log"])
        assert _seen(watch_log)[0]["reason"] == "no_active_model"
        model_ids = []
        for version in (1, 2):
            # Another setting each time (the same data and settings make no new version), activated
            # whatever the promotion gate thinks of it.
            train = start([str(Path(sys.executable).parent / "flask"), "ml", "train", "--metric-type", METRIC,
                           "--promote", "always"],
                          base_env(tmp_path, ML_MODELS_DIR=str(trainer_dir), **dict(common, ML_N_ESTIMATORS=str(
                              19 + version))), tmp_path / "train.log")
            assert train.wait(timeout=120) == 0, (tmp_path / "train.log").read_text()
            done = time.time()
            engine_app = dbutil.make_app(database_url, tmp_path / "unused")
            with engine_app.app_context():
                model_ids.append(db.session.query(MLModel.id).filter_by(is_active=True, metric_type=METRIC).scalar())
            dbutil.dispose(engine_app)
            event = wait_until(lambda: next((e for e in _seen(watch_log) if e["model_id"] == model_ids[-1]), None),
                               ttl + 10, f"the watcher to use version {version}", [watcher],
                               [tmp_path / "watcher.log"])
            # Seen within one cache TTL (plus the watcher's 50 ms poll), read from S3 into its own cache.
            assert event["t"] - done <= ttl + 0.5, (event, done)
            assert event["source"] == "file"
        assert model_ids[0] != model_ids[1]
        # Two hosts, two caches: each holds the model in its own directory; nothing shared but the bucket.
        assert top_level_models(trainer_dir) == top_level_models(watcher_dir) == set()
        assert {p.name for p in cache_files(watcher_dir)} >= {p.name for p in cache_files(trainer_dir)}
    finally:
        stop_group(watcher)
