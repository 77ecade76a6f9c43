"""/metrics and the JSON logs of a real 2-worker gunicorn, after real activity.

One gunicorn (``gunicorn -c gunicorn.conf.py app:app``, the production
config: multiprocess metrics, scheduler leader election in every worker) on
a fresh, migrated PostgreSQL database that starts as a *legacy* database with
a BLOB model.  Before it starts, the CLI migrates that model and writes demo
observations; then, over HTTP: three trainings, a scan, bursts of detections
until both workers have loaded models, a cleanup that fails for real (a
doomed model file replaced by a directory cannot be unlinked) and one that
succeeds.

PostgreSQL only: it is the production database, and the scheduler leader
election under gunicorn is what ``ml_scheduler_leader`` reports (SQLite's
lease path is covered by the single-process tests and tests/test_leader.py).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.multiprocess import MultiProcessCollector

from tests import dbutil
from tests.ml_helpers import build_legacy_database, legacy_rows
from tests.promutil import Samples, matching, parse, value
from tests.procutil import VENV_BIN, base_env, free_port, start, stop_group, wait_until

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "gunicorn-metrics-token-0123456789"
METRIC_TYPES = ("stok_seviye", "tuketim_miktar", "dolum_sure")
UNTRAINED = "minibar_new"
# Series that legitimately change between two scrapes a moment apart.
TIME_VARYING = ("ml_active_model_age_seconds", "ml_store_filesystem_used_ratio")


@dataclass
class Served:
    base: str
    proc: subprocess.Popen
    log: Path
    cli_log: str
    prom_dir: Path
    models_dir: Path
    detect_sources: dict[str, int] = field(default_factory=dict)
    job_statuses: list[tuple[str, int]] = field(default_factory=list)

    def workers(self) -> list[int]:
        """The master's live child processes (the gunicorn workers)."""
        try:
            return [int(pid) for pid in Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()]
        except FileNotFoundError:
            return []

    def post(self, path: str, body: Any = None, timeout: float = 120) -> requests.Response:
        return requests.post(f"{self.base}{path}", json=body if body is not None else {}, timeout=timeout,
                             headers={"Authorization": f"Bearer {TOKEN}", "Connection": "close"})

    def scrape(self) -> tuple[str, str]:
        """(answering process, body) of one scrape on a new connection."""
        response = requests.get(f"{self.base}/metrics", timeout=30, headers={"Connection": "close"})
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return response.headers["X-Metrics-Process"], response.text

    def events(self) -> list[dict[str, Any]]:
        """Every JSON log line the workers wrote (gunicorn's own lines are not JSON)."""
        return json_lines(self.log.read_text(errors="replace"))


def json_lines(text: str) -> list[dict[str, Any]]:
    records = []
    for line in text.splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))  # a line starting with { must be whole, valid JSON
    return records


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run([str(VENV_BIN / "flask"), "--app", "app", "ml", *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def per_worker_counts(prom_dir: Path, sample_name: str, **labels: str) -> dict[int, float]:
    """``sample_name`` summed per worker, read from each worker's own mmap file."""
    counts: dict[int, float] = {}
    for path in prom_dir.glob("histogram_*.db"):
        pid = int(path.stem.split("_")[1])
        total = 0.0
        for metric in MultiProcessCollector.merge([str(path)], accumulate=True):
            for sample in metric.samples:
                if sample.name == sample_name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        counts[pid] = total
    return counts


def detect_burst(served: Served, metric_type: str, size: int = 8) -> None:
    def one(_: int) -> str:
        response = served.post("/api/ml/detect", {"metric_type": metric_type, "values": [3, 4, 5, 4, 90]})
        assert response.status_code == 200, response.text
        return response.json()["source"]

    with ThreadPoolExecutor(max_workers=size) as pool:
        for source in pool.map(one, range(size)):
            served.detect_sources[source] = served.detect_sources.get(source, 0) + 1


@pytest.fixture(scope="module")
def served(pg_available, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gunicorn_metrics")
    models_dir, prom_dir, log = tmp / "ml_models", tmp / "prom", tmp / "gunicorn.log"
    models_dir.mkdir()
    name = dbutil.create_pg_database(prefix="mlgm")
    url = dbutil.pg_url(name)
    build_legacy_database(url, models_dir, legacy_rows([("stok_seviye", True)]))
    env = base_env(tmp, DATABASE_URL=url, ML_MODELS_DIR=str(models_dir), ML_ADMIN_TOKEN=TOKEN, SECRET_KEY="s3cret",
                   ML_LOG_FORMAT="json", ML_KEEP_VERSIONS="2", ML_MIN_TRAIN_SAMPLES="20")
    cli = run_cli(["migrate"], env)
    cli_log = cli.stderr
    # 30 days: every metric type has enough rows per entity past the detector's 10-row warm-up.
    run_cli(["demo-data", "--rooms", "12", "--products", "10", "--attendants", "4", "--days", "30"], env)

    port = free_port()
    server_env = dict(env, GUNICORN_BIND=f"127.0.0.1:{port}", GUNICORN_WORKERS="2", GUNICORN_THREADS="2",
                      PROMETHEUS_MULTIPROC_DIR=str(prom_dir), ML_SCHEDULER_ENABLED="true",
                      ML_SCHEDULER_HEARTBEAT_SECONDS="0.5", ML_SCAN_INTERVAL_SECONDS="86400",
                      ML_TRAIN_INTERVAL_SECONDS="86400", ML_CLEANUP_INTERVAL_SECONDS="86400")
    proc = start([str(VENV_BIN / "gunicorn"), "-c", "gunicorn.conf.py", "app:app"], server_env, log)
    served = Served(f"http://127.0.0.1:{port}", proc, log, cli_log, prom_dir, models_dir)
    try:
        wait_until(lambda: len(served.workers()) == 2 and _ready(served.base), 60, "gunicorn ready", [proc], [log])
        for round_ in range(3):
            if round_:
                # A new observation of each type: the same data would make no new version.
                stamp = (datetime.now(timezone.utc) - timedelta(seconds=5)).isoformat()
                added = served.post("/api/ml/metrics", {"observations": [
                    {"metric_type": name, "entity_id": 1, "metric_value": 5.0 + round_, "timestamp": stamp}
                    for name in ("stok_seviye", "tuketim_miktar", "dolum_sure")]})
                assert added.status_code == 201, added.text
            response = served.post("/api/ml/train")
            served.job_statuses.append(("train_models", response.status_code))
            assert response.status_code == 200, response.text
        # New readings far above anything products 1-2 ever had: the causal detector judges new data.
        soon = datetime.now(timezone.utc) + timedelta(hours=1)
        wild = [{"metric_type": "stok_seviye", "entity_id": e, "metric_value": 1.0e7,
                 "timestamp": (soon + timedelta(minutes=e)).isoformat()} for e in (1, 2)]
        assert served.post("/api/ml/metrics", {"observations": wild}).status_code == 201
        response = served.post("/api/ml/scan")
        served.job_statuses.append(("anomaly_scan", response.status_code))
        assert response.status_code == 200 and response.json()["result"]["alerts"] > 0, response.text

        # Load models in both workers: concurrent bursts until each worker's own file counts loads.
        for _ in range(25):
            detect_burst(served, "stok_seviye")
            counts = per_worker_counts(prom_dir, "ml_model_load_seconds_count")
            if len([pid for pid in served.workers() if counts.get(pid, 0) > 0]) == 2:
                break
        detect_burst(served, UNTRAINED, size=4)

        # A cleanup that fails for real, then one that succeeds.
        doomed = _oldest_version_file(served, "tuketim_miktar")
        doomed.unlink()
        doomed.mkdir()
        (doomed / "blocker").write_text("a directory cannot be unlinked like a file")
        response = served.post("/api/ml/cleanup")
        served.job_statuses.append(("cleanup_models", response.status_code))
        assert response.status_code == 500 and "cleanup finished with 1 error" in response.text, response.text
        shutil.rmtree(doomed)
        response = served.post("/api/ml/cleanup")
        served.job_statuses.append(("cleanup_models", response.status_code))
        assert response.status_code == 200, response.text
        yield served
    finally:
        stop_group(proc)
        dbutil.drop_pg_database(name)


def _ready(base: str) -> bool:
    try:
        return requests.get(f"{base}/ready", timeout=10).status_code == 200
    except requests.RequestException:  # not listening yet, or still importing the app
        return False


def _oldest_version_file(served: Served, metric_type: str) -> Path:
    response = requests.get(f"{served.base}/api/ml/models", params={"metric_type": metric_type}, timeout=30,
                            headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.text
    models = sorted(response.json()["models"], key=lambda m: m["id"])
    return Path(models[0]["path"])


def scrape_each_worker(served: Served, attempts: int = 60) -> dict[str, Samples]:
    """One parsed scrape answered by each of the two workers (new connections until both answered)."""
    by_process: dict[str, Samples] = {}
    for _ in range(attempts):
        process, body = served.scrape()
        by_process[process] = parse(body)[1]
        if len(by_process) == 2:
            return by_process
    pytest.fail(f"only {sorted(by_process)} answered /metrics in {attempts} scrapes")


# -------------------------------------------------------------------- tests
def test_every_series_is_present_after_real_activity(served):
    _, body = served.scrape()
    types, samples = parse(body)
    assert types["ml_model_load_seconds"] == "histogram"
    assert value(samples, "ml_model_load_seconds_count", source="file") >= 1
    assert value(samples, "ml_model_load_seconds_count", source="cache") >= 1
    assert value(samples, "ml_model_load_seconds_count", source="database") == 0
    # A metric type the service knows no model of is labelled "other" (bounded label values, issue 12).
    assert not matching(samples, "ml_model_fallbacks_total", metric_type=UNTRAINED)
    fallbacks = matching(samples, "ml_model_fallbacks_total", metric_type="other", reason="no_active_model")
    assert sum(fallbacks.values()) >= 2 * served.detect_sources.get("none", 0) > 0
    for job, status, runs in (("train_models", "success", 3), ("anomaly_scan", "success", 1),
                              ("cleanup_models", "failed", 1), ("cleanup_models", "success", 1)):
        assert value(samples, "ml_job_runs_total", job=job, status=status) == runs, (job, status)
        assert value(samples, "ml_job_duration_seconds_count", job=job, status=status) == runs, (job, status)
    alerts = matching(samples, "ml_alerts_raised_total")
    assert sum(alerts.values()) > 0 and all(dict(labels)["metric_type"] in METRIC_TYPES for labels in alerts)
    files = [p for p in served.models_dir.iterdir() if p.name.endswith(".pkl") and p.is_file()]
    assert value(samples, "ml_model_files") == len(files)
    assert value(samples, "ml_model_files_bytes") == sum(p.stat().st_size for p in files)
    for metric_type in METRIC_TYPES:
        age = value(samples, "ml_active_model_age_seconds", model_type="isolation_forest", metric_type=metric_type)
        assert age is not None and 0 <= age < 600, metric_type
        # ML_KEEP_VERSIONS=2 of ours, plus for stok_seviye the minibar app's own (adopted) row:
        # cleanup deletes only versions this service saved.
        kept = 3 if metric_type == "stok_seviye" else 2
        assert value(samples, "ml_model_versions", model_type="isolation_forest", metric_type=metric_type) == kept
    for job in ("train_models", "anomaly_scan", "cleanup_models"):
        assert time.time() - 600 < value(samples, "ml_job_last_success_timestamp_seconds", job=job) <= time.time()
    leaders = matching(samples, "ml_scheduler_leader")
    assert sorted(leaders.values()).count(1.0) == 1, leaders
    assert value(samples, "ml_scheduler_leaders") == 1  # what the database says: one lock holder
    assert value(samples, "ml_job_last_duration_seconds", job="cleanup_models", status="success") >= 0
    assert value(samples, "ml_metrics_database_up") == 1.0


def test_both_workers_report_the_same_values(served):
    scrapes = scrape_each_worker(served)
    (first, a), (second, b) = scrapes.items()
    assert first != second
    stable_a = {k: v for k, v in a.items() if k[0] not in TIME_VARYING}
    stable_b = {k: v for k, v in b.items() if k[0] not in TIME_VARYING}
    assert stable_a == stable_b
    assert {k for k in a if k[0] in TIME_VARYING} == {k for k in b if k[0] in TIME_VARYING}


def test_totals_are_the_sum_of_every_workers_own_file(served):
    per_worker = per_worker_counts(served.prom_dir, "ml_model_load_seconds_count")
    workers = served.workers()
    assert all(per_worker.get(pid, 0) > 0 for pid in workers), (per_worker, workers)
    _, body = served.scrape()
    _, samples = parse(body)
    total = sum(matching(samples, "ml_model_load_seconds_count").values())
    assert total == sum(per_worker.values())
    detected = served.detect_sources.get("file", 0) + served.detect_sources.get("cache", 0)
    assert total >= detected > 0  # scans and trainings load models too


def test_promtool_accepts_the_output_when_installed(served, tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        # scripts/ensure_test_tools.sh installs it for `make test`; in CI its absence is a failure.
        message = "promtool (Debian package prometheus) is not installed; the parser checks ran above"
        if dbutil.IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    _, body = served.scrape()
    result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


def test_structured_logs_carry_the_fields_operators_filter_on(served):
    events: dict[str, list[dict[str, Any]]] = {}
    for record in served.events() + json_lines(served.cli_log):
        assert {"ts", "level", "logger", "msg", "pid"} <= record.keys(), record
        if "event" in record:
            events.setdefault(record["event"], []).append(record)
    required = {
        "model_saved": ("model_id", "model_type", "metric_type", "key", "size_bytes", "ms"),
        "model_loaded": ("model_id", "model_type", "metric_type", "source", "ms"),
        "model_fallback": ("metric_type", "model_type", "from_method", "reason"),
        "cleanup_done": ("deleted_count", "freed_space_mb", "ms"),
        "model_migrated": ("model_id", "model_type", "metric_type", "key", "size_bytes"),
        "job_started": ("job", "run_id", "trigger", "status"),
        "job_finished": ("job", "run_id", "trigger", "status", "duration_s"),
        "job_failed": ("job", "run_id", "trigger", "status", "duration_s", "error"),
        "scheduler_leadership": ("leader", "host", "pid"),
    }
    for event, fields in required.items():
        assert event in events, f"no {event} line in the logs"
        for record in events[event]:
            missing = [f for f in fields if f not in record]
            assert not missing, f"{event} lacks {missing}: {record}"
    assert {r["level"] for r in events["model_fallback"]} == {"WARNING"}
    assert {r["level"] for r in events["job_failed"]} == {"ERROR"}
    assert [r["job"] for r in events["job_failed"]] == ["cleanup_models"]
    assert sum(r["job"] == "train_models" for r in events["job_finished"]) == 3
    assert {r["source"] for r in events["model_loaded"]} >= {"file"}
    assert {r["metric_type"] for r in events["model_saved"]} == set(METRIC_TYPES)
    assert len({r["pid"] for r in served.events() if r.get("event") == "model_loaded"}) == 2  # both workers


def test_a_killed_leader_disappears_and_totals_survive(served):
    _, body = served.scrape()
    _, before = parse(body)
    leaders = {dict(labels)["process"]: v for labels, v in matching(before, "ml_scheduler_leader").items()}
    leader = next(process for process, v in leaders.items() if v == 1.0)
    leader_pid = int(leader.rsplit(":", 1)[1])
    assert leader_pid in served.workers()
    os.kill(leader_pid, signal.SIGKILL)

    def new_leader() -> bool:
        if leader_pid in served.workers() or len(served.workers()) != 2:
            return False
        _, samples = parse(served.scrape()[1])
        now = {dict(labels)["process"]: v for labels, v in matching(samples, "ml_scheduler_leader").items()}
        return leader not in now and list(now.values()).count(1.0) == 1

    wait_until(new_leader, 30, "a new scheduler leader after SIGKILL", [served.proc], [served.log])
    _, after = parse(served.scrape()[1])
    # The dead worker's counts stay in the totals (its files remain); only its live gauge went.
    for name in ("ml_model_load_seconds_count", "ml_job_runs_total", "ml_model_fallbacks_total"):
        assert sum(matching(after, name).values()) == sum(matching(before, name).values()), name
