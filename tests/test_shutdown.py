"""Stopping within 5 s: gunicorn (what ``make run`` execs, scheduler on) and ``flask ml scheduler``,
by SIGTERM or by Ctrl-C (SIGINT to the whole process group, as a terminal sends it), idle or
with a job running; a running job stops at a safe point and is recorded as interrupted.

Real processes and a real PostgreSQL database; gunicorn is stopped 20 times in a row.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Optional

import pytest
import requests

from tests import dbutil
from tests.ml_helpers import sql
from tests.procutil import VENV_BIN, base_env, free_port, http_status, start, stop_group, tail, wait_until

TOKEN = "shutdown-test-token-0123456789abcdef"
STOP_BOUND_S = 5.0
ROUNDS = 20
# Training the demo hotel takes seconds (six fits of about a second): a job is running when we stop.
SLOW_TRAINING = {"ML_N_ESTIMATORS": "300"}


@pytest.fixture
def database(pg_template, tmp_path) -> Any:
    name = dbutil.create_pg_database(template=pg_template)
    url = dbutil.pg_url(name)
    models = tmp_path / "models"
    models.mkdir()
    env = _env(tmp_path, url, models)
    done = subprocess.run([str(VENV_BIN / "flask"), "--app", "app", "ml", "demo-data", "--rooms", "30",
                           "--products", "10", "--attendants", "4", "--days", "30"],
                          env=env, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    yield url, models, env
    dbutil.drop_pg_database(name)


def _env(tmp_path: Path, url: str, models: Path, **extra: str) -> dict[str, str]:
    return base_env(tmp_path, DATABASE_URL=url, ML_MODELS_DIR=str(models), ML_ADMIN_TOKEN=TOKEN,
                    SECRET_KEY="shutdown-test-secret-key-0123456789", ML_SCHEDULER_HEARTBEAT_SECONDS="0.5",
                    ML_SCAN_INTERVAL_SECONDS="3600", ML_TRAIN_INTERVAL_SECONDS="86400",
                    ML_CLEANUP_INTERVAL_SECONDS="86400", **SLOW_TRAINING, **extra)


def _runs(url: str) -> list[tuple[str, str]]:
    return [(r[0], r[1]) for r in sql(url, "SELECT job_name, status FROM ml_job_runs ORDER BY id")]


def _stop_and_time(proc: subprocess.Popen, how: str) -> float:
    started = time.monotonic()
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)  # the terminal's way: every process of the group
    else:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    return time.monotonic() - started


def _train_in_background(base: str) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            response = requests.post(f"{base}/api/ml/train", json={}, timeout=60,
                                     headers={"Authorization": f"Bearer {TOKEN}"})
            outcome["status"] = response.status_code
        except requests.RequestException as exc:  # the connection closes under a stopping worker
            outcome["status"] = type(exc).__name__

    thread = threading.Thread(target=call)
    thread.start()
    return thread, outcome


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_gunicorn_with_the_scheduler_stops_within_5_s_20_times(database, tmp_path, backend):
    url, models, env = database
    prom = tmp_path / "prom"
    prom.mkdir()
    slow: list[tuple[int, str, bool, float]] = []
    for round_no in range(ROUNDS):
        how = "ctrl-c" if round_no % 2 == 0 else "sigterm"
        with_job = round_no % 4 >= 2  # idle, idle, job, job, ... for both ways of stopping
        port = free_port()
        log = tmp_path / f"gunicorn-{round_no}.log"
        proc = start([str(VENV_BIN / "gunicorn"), "-c", "gunicorn.conf.py", "app:app"],
                     dict(env, ML_SCHEDULER_ENABLED="true", GUNICORN_BIND=f"127.0.0.1:{port}",
                          GUNICORN_WORKERS="2", GUNICORN_THREADS="4", GUNICORN_ACCESSLOG="",
                          PROMETHEUS_MULTIPROC_DIR=str(prom)), log)
        thread: Optional[threading.Thread] = None
        try:
            base = f"http://127.0.0.1:{port}"
            wait_until(lambda: http_status(f"{base}/ready") == 200, 90, "gunicorn to be ready", [proc], [log])
            # Both workers booted (each starts its scheduler after its app is imported): a stop
            # during a worker's import is gunicorn's "Worker failed to boot", not this test's subject.
            wait_until(lambda: log.read_text(errors="replace").count("scheduler_started") >= 2, 60,
                       "both workers to boot", [proc], [log])
            # Some real use first: the slow stops came "after real use".
            for path in ("/api/ml/models", "/api/ml/alerts"):
                requests.get(base + path, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
            if with_job:
                runs_before = len(_runs(url))
                thread, outcome = _train_in_background(base)
                # The training run, not the newest row: the scheduler's notify_deliver (every 30 s) may
                # add one of its own just after the training starts.
                wait_until(lambda: ("train_models", "running") in _runs(url)[runs_before:], 30,
                           "the training run to start", [proc], [log])
            seconds = _stop_and_time(proc, how)
            if seconds > STOP_BOUND_S or proc.returncode != 0:
                slow.append((round_no, how, with_job, round(seconds, 2)))
            text = log.read_text(errors="replace")
            assert "SIGKILL" not in text and "WORKER TIMEOUT" not in text, tail([log])
            if with_job:
                thread.join(timeout=30)
                # The train run (the scheduler's own notify_deliver may be interrupted by the same stop).
                last = [run for run in _runs(url) if run[0] == "train_models"][-1]
                # Stopped at a safe point and said so (or, rarely, done just before the signal).
                assert last in (("train_models", "interrupted"), ("train_models", "success")), (last, outcome)
        finally:
            stop_group(proc)
            if thread is not None:
                thread.join(timeout=30)
    assert slow == [], f"rounds that took over {STOP_BOUND_S}s or exited non-zero: {slow}"
    interrupted = [run for run in _runs(url) if run == ("train_models", "interrupted")]
    assert interrupted, _runs(url)


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_flask_ml_scheduler_stops_within_5_s_with_a_job_running(database, tmp_path, backend, how):
    url, models, env = database
    log = tmp_path / "scheduler.log"
    # A training tick every 2 s: the first one starts soon after the start.
    proc = start([str(VENV_BIN / "flask"), "--app", "app", "ml", "scheduler"],
                 dict(env, ML_TRAIN_INTERVAL_SECONDS="2"), log)
    try:
        wait_until(lambda: ("train_models", "running") in _runs(url), 60, "a training run", [proc], [log])
        time.sleep(0.5)
        seconds = _stop_and_time(proc, how)
        assert seconds <= STOP_BOUND_S, f"stopped in {seconds:.2f}s\n{tail([log])}"
        assert proc.returncode == 0, tail([log])
        assert ("train_models", "interrupted") in _runs(url), (_runs(url), tail([log]))
        assert ("train_models", "running") not in _runs(url)
    finally:
        stop_group(proc)
