"""The quick start (``make run`` -> ``scripts/quickstart.sh``) from a fresh copy of the tree.

The copy has the project's files but no ``instance/`` and no model files; it
reuses this checkout's ``.venv`` (``make setup`` is what builds that, and
installing from scratch is verified by hand, see the README).  The script
must migrate an SQLite database under ``instance/``, generate the demo data,
train, scan, print the admin token it generated, and serve with gunicorn on
127.0.0.1 with the scheduler on.  SQLite only: that is what the quick start
uses.  A free port is passed through ``PORT``.
"""
from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import requests
from flask import Flask
from flask.sessions import SecureCookieSessionInterface

from tests.procutil import ROOT, copy_tree, free_port

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def fresh_tree(tmp_path) -> Path:
    return copy_tree(ROOT, tmp_path / "minibar")


def test_quickstart_serves_a_trained_system(fresh_tree):
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ML_", "DATABASE_URL", "GUNICORN_", "FLASK_", "PROMETHEUS_"))}
    env.update(PORT=str(port), GUNICORN_WORKERS="2")
    out_path = fresh_tree.parent / "quickstart.out"
    process = _start(fresh_tree, env, out_path)
    try:
        base = f"http://127.0.0.1:{port}"
        output = _wait_ready(process, base, out_path)
        assert requests.get(f"{base}/health", timeout=5).json() == {"status": "ok"}

        # The token it generated is saved under instance/ and printed, and it works.
        token = (fresh_tree / "instance" / "admin_token").read_text().strip()
        assert len(token) >= 32 and token in output
        assert (fresh_tree / "instance" / "admin_token").stat().st_mode & 0o077 == 0
        alerts = requests.get(f"{base}/api/ml/alerts", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert alerts.status_code == 200 and alerts.json()["total"] > 0

        # What it did, from the SQLite database it created under instance/.
        database = fresh_tree / "instance" / "ml.sqlite3"
        with sqlite3.connect(database) as conn:
            observations = conn.execute("SELECT count(*) FROM ml_metrics WHERE metric_type != 'model_load_time'") \
                .fetchone()[0]
            active = conn.execute("SELECT metric_type FROM ml_models WHERE is_active").fetchall()
            alert_count = conn.execute("SELECT count(*) FROM ml_alerts").fetchone()[0]
            methods = {m for (m,) in conn.execute("SELECT DISTINCT method FROM ml_alerts")}
        assert observations > 15000
        assert sorted(m for (m,) in active) == ["dolum_sure", "stok_seviye", "tuketim_miktar"]
        assert alert_count == alerts.json()["total"] and methods == {"isolation_forest_file"}
        assert len(list((fresh_tree / "ml_models").glob("isolation_forest_*.pkl"))) == 3
        for heading in ("flask db upgrade", "flask ml train", "flask ml scan", f"serving on {base}",
                        "/ml/dashboard", "/api/ml/"):
            assert heading in output
        assert re.search(r"Scanned \d+ observations, \d+ new alerts", output)
        # Bound to loopback only, as printed.
        assert f"Listening at: http://127.0.0.1:{port}" in output

        # The setup's `flask ml train` and `flask ml scan` ran through the job runner: recorded runs
        # (trigger cli), shown at once on the dashboard's job panel and on /metrics.
        with sqlite3.connect(database) as conn:
            first_runs: dict[str, tuple[str, str]] = {}
            for job, status, details in conn.execute("SELECT job_name, status, details FROM ml_job_runs ORDER BY id"):
                first_runs.setdefault(job, (status, json.loads(details)["trigger"]))
        assert first_runs["train_models"] == ("success", "cli") and first_runs["anomaly_scan"] == ("success", "cli")
        metrics = requests.get(f"{base}/metrics", timeout=10).text
        for job in ("train_models", "anomaly_scan"):
            assert re.search(rf'^ml_job_last_success_timestamp_seconds{{job="{job}"}} \d', metrics, re.M), job
        browser = requests.Session()
        login = browser.get(f"{base}/ml/dashboard/login", timeout=10).text
        signed_in = browser.post(f"{base}/ml/dashboard/login", timeout=10, allow_redirects=False,
                                 data={"csrf_token": CSRF.search(login).group(1), "token": token})
        assert signed_in.status_code == 302
        # The cookie is signed with the generated SECRET_KEY kept in instance/ (this user only), never the token.
        key_file = fresh_tree / "instance" / "secret_key"
        key = key_file.read_text().strip()
        assert len(key) == 64 and key != token and key_file.stat().st_mode & 0o077 == 0
        signer = SecureCookieSessionInterface().get_signing_serializer(Flask("quickstart-test"))
        assert signer is None  # no key, no serializer: the check below really uses the file's key
        keyed = Flask("quickstart-test")
        keyed.secret_key = key
        serializer = SecureCookieSessionInterface().get_signing_serializer(keyed)
        assert "ml_sid" in serializer.loads(browser.cookies["session"])
        page = browser.get(f"{base}/ml/dashboard", timeout=10).text
        panel = page[page.index('id="jobs"'):]
        assert "No job has run yet" not in panel
        for job in ("train_models", "anomaly_scan"):
            assert re.search(rf"<td>{job}</td><td><span class=\"status status-success\">success</span></td>\s*"
                             r"<td>cli</td>", panel), job

        # Restarting the quick start adds nothing: the same data and settings make no new version.
        _stop(process)
        process = _start(fresh_tree, env, out_path)
        _wait_ready(process, base, out_path)
        with sqlite3.connect(database) as conn:
            versions = conn.execute("SELECT count(*) FROM ml_models").fetchone()[0]
            decisions = conn.execute("SELECT count(*) FROM ml_gate_decisions").fetchone()[0]
            last_train = conn.execute("SELECT details FROM ml_job_runs WHERE job_name = 'train_models' "
                                      "ORDER BY id DESC LIMIT 1").fetchone()[0]
        assert versions == 3 and decisions == 3
        assert [r["status"] for r in json.loads(last_train)["result"]] == ["unchanged"] * 3
    finally:
        _stop(process)


def _start(tree: Path, env: dict[str, str], out_path: Path) -> subprocess.Popen:
    with out_path.open("wb") as out:
        return subprocess.Popen(["bash", "scripts/quickstart.sh"], cwd=tree, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _wait_ready(process: subprocess.Popen, base: str, out_path: Path) -> str:
    """Wait until ``/ready`` answers 200; return the script's output so far."""
    deadline = time.monotonic() + 150
    ready = None
    while time.monotonic() < deadline and process.poll() is None:
        try:
            ready = requests.get(f"{base}/ready", timeout=5)
            if ready.status_code == 200:
                break
        except requests.RequestException:  # not listening yet, or workers still booting
            pass
        time.sleep(0.5)
    output = out_path.read_text(errors="replace")
    assert ready is not None and ready.status_code == 200, output[-3000:]
    return output


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
