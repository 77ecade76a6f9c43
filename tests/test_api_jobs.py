"""POST /train, /scan, /cleanup: the scheduler's own jobs, run on demand, on both databases.

End to end through the API: ingest observations, train, scan, list the
alerts, score on demand with the new model.  The busy check uses the real
cross-process job lock (a PostgreSQL advisory lock on its own connection, a
lease row on SQLite), held here exactly as another process would hold it.
"""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
from sqlalchemy import select

from tests.ml_helpers import make_model
from utils.extensions import db
from utils.ml.jobs import job_lock
from utils.ml.model_manager import get_model_manager
from utils.models import JobRun, MLModel
from utils.time import utcnow

METRIC = "tuketim_miktar"


def observations(count: int = 240, outliers: tuple[int, ...] = (50, 150, 230), first: int = 0) -> list[dict]:
    """Consumption of 12 rooms over 20 days (from reading ``first``); a few wild values."""
    rng = np.random.default_rng(7)
    start = utcnow() - timedelta(days=20)
    items = []
    for i in range(first, first + count):
        value = float(rng.poisson(4)) if i not in outliers else 400.0 + i % 7
        items.append({"metric_type": METRIC, "entity_id": 101 + i % 12, "metric_value": value,
                      "timestamp": (start + timedelta(hours=2 * i)).isoformat()})
    return items


def job_rows(app, name: str) -> list[JobRun]:
    with app.app_context():
        rows = db.session.scalars(select(JobRun).where(JobRun.job_name == name).order_by(JobRun.id)).all()
        db.session.expunge_all()
        db.session.remove()
    return rows


def test_ingest_train_scan_alerts_and_detect_end_to_end(app, client, auth_headers):
    response = client.post("/api/ml/metrics", headers=auth_headers, json={"observations": observations(outliers=())})
    assert response.status_code == 201, response.get_json()

    response = client.post("/api/ml/train", headers=auth_headers, json={"metric_type": METRIC, "actor": "ops"})
    assert response.status_code == 200, response.get_json()
    trained = response.get_json()
    assert (trained["job"], trained["status"], trained["trigger"], trained["actor"]) == (
        "train_models", "success", "api", "api:ops")
    (summary,) = trained["result"]
    assert summary["status"] == "trained" and summary["samples"] == 240
    model_id = summary["model_id"]
    run = job_rows(app, "train_models")[-1]
    assert (run.id, run.status, run.details["actor"], run.details["trigger"]) == (
        trained["run_id"], "success", "api:ops", "api")

    # After training, three wild readings (the detector judges new data against each room's own past).
    wild = observations(3, outliers=(240, 241, 242), first=240)
    assert client.post("/api/ml/metrics", headers=auth_headers, json={"observations": wild}).status_code == 201
    response = client.post("/api/ml/scan", headers=auth_headers)
    assert response.status_code == 200, response.get_json()
    scanned = response.get_json()
    assert scanned["actor"] == "api" and scanned["result"]["scanned"] == 243
    raised = scanned["result"]["alerts"]
    assert raised >= 3

    alerts = client.get(f"/api/ml/alerts?metric_type={METRIC}&per_page=500", headers=auth_headers).get_json()
    assert alerts["total"] == raised
    assert {a["method"] for a in alerts["alerts"]} == {"isolation_forest_file"}
    assert {a["model_id"] for a in alerts["alerts"]} == {model_id}
    assert {400.0 + i % 7 for i in (240, 241, 242)} <= {a["metric_value"] for a in alerts["alerts"]}

    # A second scan finds nothing new: the same observation never alerts twice.
    again = client.post("/api/ml/scan", headers=auth_headers, json={"metric_type": METRIC}).get_json()
    assert again["result"]["scanned"] == 0 and again["result"]["alerts"] == 0

    detected = client.post("/api/ml/detect", headers=auth_headers,
                           json={"metric_type": METRIC, "observations": [
                               {"entity_id": 101, "metric_value": 4}, {"entity_id": 102, "metric_value": 90}]})
    assert detected.status_code == 200, detected.get_json()
    body = detected.get_json()
    assert (body["method"], body["model_id"], body["fallback_reasons"]) == ("isolation_forest_file", model_id, [])
    assert [r["is_anomaly"] for r in body["results"]] == [False, True]


def test_cleanup_keeps_the_newest_versions(app, client, auth_headers, models_dir):
    with app.app_context():
        manager = get_model_manager()
        ids = [manager.save_model(make_model(i), "isolation_forest", "stok_seviye").id for i in range(5)]
        db.session.remove()
    response = client.post("/api/ml/cleanup", headers=auth_headers, json={"keep_versions": 2, "actor": "ops"})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["job"] == "cleanup_models" and body["result"]["deleted_count"] == 3
    with app.app_context():
        assert db.session.scalars(select(MLModel.id).order_by(MLModel.id)).all() == ids[3:]
        db.session.remove()
    assert len(list(Path(models_dir).glob("*.pkl"))) == 2
    # The default keeps ML_KEEP_VERSIONS (3): nothing more to delete.
    assert client.post("/api/ml/cleanup", headers=auth_headers).get_json()["result"]["deleted_count"] == 0


def test_a_job_running_elsewhere_is_refused_with_409(app, client, auth_headers):
    for name, path in (("cleanup_models", "/api/ml/cleanup"), ("anomaly_scan", "/api/ml/scan"),
                       ("train_models", "/api/ml/train")):
        with app.app_context():
            lock = job_lock(name, app)  # its own connection / lease row: as another process holds it
            assert lock.try_acquire()
            try:
                before = len(job_rows(app, name))
                response = client.post(path, headers=auth_headers)
                assert response.status_code == 409, response.get_json()
                assert f"job {name} is already running" in response.get_json()["error"]
                assert len(job_rows(app, name)) == before  # refused runs are not recorded as runs
            finally:
                lock.release()
        assert client.post(path, headers=auth_headers).status_code == 200


def test_a_failing_job_is_a_json_500_recorded_as_failed(app, client, auth_headers, models_dir):
    with app.app_context():
        manager = get_model_manager()
        rows = [manager.save_model(make_model(i), "isolation_forest", "stok_seviye") for i in range(3)]
        oldest = Path(manager.store.locate(rows[0].model_path))
        db.session.remove()
    # A real fault: the oldest version's file is a directory now, so cleanup cannot delete it.
    oldest.unlink()
    oldest.mkdir()
    response = client.post("/api/ml/cleanup", headers=auth_headers, json={"keep_versions": 1})
    assert response.status_code == 500
    assert response.is_json
    assert response.get_json()["error"].startswith("job cleanup_models failed: JobError: cleanup finished with 1 error")
    run = job_rows(app, "cleanup_models")[-1]
    assert run.status == "failed" and "JobError" in run.error


def test_job_body_rules(app, client, auth_headers):
    cases = [
        ("/api/ml/train", {"metric_type": "model_load_time"}, "metric_type", "the ML subsystem's own figure"),
        ("/api/ml/scan", {"metric_type": "Bad"}, "metric_type", "must match"),
        ("/api/ml/scan", {"metric_type": None, "extra": 1}, "extra", "unknown field"),
        ("/api/ml/cleanup", {"keep_versions": 0}, "keep_versions", "greater than or equal to 1"),
        ("/api/ml/cleanup", {"keep_versions": 1001}, "keep_versions", "less than or equal to 1000"),
        ("/api/ml/cleanup", {"keep_versions": "3"}, "keep_versions", "valid integer"),
        ("/api/ml/cleanup", {"keep_versions": 2.5}, "keep_versions", "valid integer"),
        ("/api/ml/cleanup", {"metric_type": "stok_seviye"}, "metric_type", "unknown field"),
        ("/api/ml/train", {"actor": "has space"}, "actor", "must match"),
    ]
    for path, body, field, rule in cases:
        response = client.post(path, headers=auth_headers, json=body)
        assert response.status_code == 400, (path, body, response.get_json())
        error = response.get_json()["errors"][0]
        assert (error["field"], rule in error["rule"]) == (field, True), (path, body, error)
    for name in ("train_models", "anomaly_scan", "cleanup_models"):
        assert job_rows(app, name) == []  # nothing ran
