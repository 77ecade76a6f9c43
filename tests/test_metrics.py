"""``GET /metrics`` in one process (no PROMETHEUS_MULTIPROC_DIR), on both databases.

Real saves, loads, activations, detections and job runs feed the event
series; the state series must match the database rows and the files on
disk.  The event metrics are process-wide (as in production), so tests
compare values before and after.  The multi-worker case is
tests/test_metrics_gunicorn.py.
"""
from __future__ import annotations

import time

import requests

from tests import dbutil
from tests.ml_helpers import make_model
from tests.promutil import matching, parse, value
from tests.procutil import VENV_BIN, base_env, free_port, start, stop_group, wait_until
from utils.extensions import db
from utils.ml.anomaly_detector import AnomalyDetector
from utils.ml.jobs import run_job_now
from utils.web.monitoring import multiprocess_enabled
from utils.ml.model_manager import get_model_manager


def scrape(client):
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain; version=0.0.4")
    return parse(response.get_data(as_text=True))


def test_single_process_uses_the_in_memory_registry(client):
    """Also: no Authorization header is needed (scrapers send none)."""
    assert not multiprocess_enabled()
    types, samples = scrape(client)
    # Every series family is declared, even before any activity.
    for name, kind in {
        "ml_model_load_seconds": "histogram", "ml_model_load_failures": "counter",
        "ml_model_fallbacks": "counter", "ml_job_duration_seconds": "histogram", "ml_job_runs": "counter",
        "ml_alerts_raised": "counter", "ml_scheduler_leader": "gauge", "ml_model_files": "gauge",
        "ml_model_files_bytes": "gauge", "ml_active_model_age_seconds": "gauge",
        "ml_job_last_success_timestamp_seconds": "gauge", "ml_metrics_database_up": "gauge",
        "ml_job_last_duration_seconds": "gauge", "ml_scheduler_leaders": "gauge",
    }.items():
        assert types.get(name) == kind, name
    for source in ("cache", "file", "database"):
        assert value(samples, "ml_model_load_seconds_count", source=source) is not None
    assert value(samples, "ml_metrics_database_up") == 1.0
    assert not [key for key in samples if key[0].endswith("_created")]


def test_state_series_match_the_database_and_the_disk(app, client, models_dir):
    with app.app_context():
        manager = get_model_manager()
        ids = [manager.save_model(make_model(seed=i), "isolation_forest", "stok_seviye").id for i in range(3)]
        other = manager.save_model(make_model(seed=9), "isolation_forest", "dolum_sure").id
        db.session.remove()
    _, samples = scrape(client)
    files = [p for p in models_dir.iterdir() if p.name.endswith(".pkl")]
    assert value(samples, "ml_model_files") == len(files) == 4
    assert value(samples, "ml_model_files_bytes") == sum(p.stat().st_size for p in files)
    assert value(samples, "ml_active_model_id", model_type="isolation_forest", metric_type="stok_seviye") == ids[-1]
    assert value(samples, "ml_active_model_id", model_type="isolation_forest", metric_type="dolum_sure") == other
    assert value(samples, "ml_model_versions", model_type="isolation_forest", metric_type="stok_seviye") == 3
    age = value(samples, "ml_active_model_age_seconds", model_type="isolation_forest", metric_type="stok_seviye")
    assert 0 <= age < 60
    assert 0 < value(samples, "ml_store_filesystem_used_ratio") <= 1


def test_event_series_count_real_saves_loads_and_rollbacks(app, client):
    _, before = scrape(client)
    with app.app_context():
        manager = get_model_manager()
        first = manager.save_model(make_model(seed=1), "isolation_forest", "tuketim_miktar").id
        manager.save_model(make_model(seed=2), "isolation_forest", "tuketim_miktar")
        manager.clear_cache()
        assert manager.load_active("isolation_forest", "tuketim_miktar").source == "file"
        assert manager.load_active("isolation_forest", "tuketim_miktar").source == "cache"
        manager.activate_model(first, actor="test", reason="rollback")
        db.session.remove()
    _, after = scrape(client)

    def delta(name, **labels):
        return (value(after, name, **labels) or 0) - (value(before, name, **labels) or 0)

    assert delta("ml_model_load_seconds_count", source="file") == 1
    assert delta("ml_model_load_seconds_count", source="cache") == 1
    assert delta("ml_model_load_seconds_sum", source="file") > 0
    assert delta("ml_models_saved_total", model_type="isolation_forest", metric_type="tuketim_miktar") == 2
    assert delta("ml_model_activations_total", model_type="isolation_forest", metric_type="tuketim_miktar") == 1
    assert value(after, "ml_active_model_id", model_type="isolation_forest", metric_type="tuketim_miktar") == first


def test_fallbacks_and_load_failures_are_counted_by_reason(app, client):
    _, before = scrape(client)
    with app.app_context():
        # No model at all for this metric type: the file and BLOB stages fall back to the Z-score.
        result = AnomalyDetector(db).detect_anomalies_with_fallback("dolum_sure", [10.0, 11.0, 12.0, 95.0],
                                                                    reference=[10, 11, 12, 10, 11, 12, 11])
        db.session.remove()
    assert result.method == "z_score"
    _, after = scrape(client)
    fallbacks_before = matching(before, "ml_model_fallbacks_total", metric_type="dolum_sure", reason="no_active_model")
    fallbacks_after = matching(after, "ml_model_fallbacks_total", metric_type="dolum_sure", reason="no_active_model")
    assert sum(fallbacks_after.values()) - sum(fallbacks_before.values()) == 2  # file, then database
    failures = (value(after, "ml_model_load_failures_total", reason="no_active_model") or 0) - \
        (value(before, "ml_model_load_failures_total", reason="no_active_model") or 0)
    assert failures == 2


def test_a_real_job_run_sets_duration_and_last_success(app, client):
    _, before = scrape(client)
    started = time.time()
    with app.app_context():
        outcome = run_job_now("cleanup_models", actor="test", trigger="api")
        db.session.remove()
    assert outcome["status"] == "success"
    _, after = scrape(client)
    runs = (value(after, "ml_job_runs_total", job="cleanup_models", status="success") or 0) - \
        (value(before, "ml_job_runs_total", job="cleanup_models", status="success") or 0)
    assert runs == 1
    assert value(after, "ml_job_duration_seconds_count", job="cleanup_models", status="success") >= 1
    last = value(after, "ml_job_last_success_timestamp_seconds", job="cleanup_models")
    assert started - 1 <= last <= time.time() + 1


def test_scrape_survives_an_unreachable_database(backend, tmp_path, models_dir, request):
    if backend == "postgresql":
        request.getfixturevalue("pg_available")
        url = dbutil.pg_url("mlt_missing_database_for_metrics")  # never created
    else:
        url = dbutil.sqlite_url(tmp_path / "no" / "such" / "dir" / "db.sqlite3")
    app = dbutil.make_app(url, models_dir)
    try:
        _, samples = scrape(app.test_client())
    finally:
        dbutil.dispose(app)
    assert value(samples, "ml_metrics_database_up") == 0.0
    assert value(samples, "ml_model_files") == 0  # the store still answers



def test_scheduler_process_serves_its_own_metrics(app, client, database_url, models_dir, tmp_path):
    """``flask ml scheduler`` has no web server: with ML_METRICS_PORT it serves /metrics itself.

    Its leadership and its scheduled scans show there; the web app (the test
    client here), reading the same database, sees that one leader exists and
    when the scans last succeeded.
    """
    port = free_port()
    env = base_env(tmp_path, DATABASE_URL=database_url, ML_MODELS_DIR=str(models_dir),
                      ML_METRICS_PORT=str(port), ML_METRICS_ADDR="127.0.0.1", ML_LOG_FORMAT="json",
                      ML_SCHEDULER_HEARTBEAT_SECONDS="0.5", ML_SCAN_INTERVAL_SECONDS="1",
                      ML_TRAIN_INTERVAL_SECONDS="86400", ML_CLEANUP_INTERVAL_SECONDS="86400")
    log = tmp_path / "scheduler.log"
    proc = start([str(VENV_BIN / "flask"), "--app", "app", "ml", "scheduler"], env, log)
    own: dict = {}

    def scheduler_scanned() -> bool:
        try:
            body = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        except requests.RequestException:
            return False
        own.update(parse(body)[1])
        return (value(own, "ml_job_runs_total", job="anomaly_scan", status="success") or 0) >= 1

    try:
        wait_until(scheduler_scanned, 60, "a scheduled scan in the scheduler process", [proc], [log])
        _, web = scrape(client)  # while the scheduler runs
    finally:
        stop_group(proc)
    leaders = matching(own, "ml_scheduler_leader")
    assert list(leaders.values()) == [1.0] and dict(next(iter(leaders)))["process"].endswith(f":{proc.pid}")
    assert value(own, "ml_job_duration_seconds_count", job="anomaly_scan", status="success") >= 1
    assert value(own, "ml_metrics_database_up") == 1.0
    assert value(web, "ml_scheduler_leaders") == 1.0
    assert value(web, "ml_job_last_success_timestamp_seconds", job="anomaly_scan") > time.time() - 120
    assert value(web, "ml_job_last_duration_seconds", job="anomaly_scan", status="success") >= 0
