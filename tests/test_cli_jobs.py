"""``flask ml train | scan | cleanup`` run through the one job runner, on both databases.

Each CLI run is a row of ``ml_job_runs`` with trigger ``cli``, seen at once on
``/metrics`` and the dashboard; a job already running anywhere is refused in
one line.  "Running anywhere" is real: a lock held by another process, and
(PostgreSQL) a real ``flask ml cleanup`` process held up mid-run by a table
lock, whose run the refusal must name.
"""
from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest
import sqlalchemy as sa

from tests.dashboard_helpers import sign_in
from tests.ml_helpers import make_model, tmpfs
from tests.procutil import ROOT, VENV_BIN, base_env, wait_until
from utils.extensions import db
from utils.ml.model_manager import get_model_manager
from utils.models import JobRun

SMALL_HOTEL = ["--rooms", "30", "--products", "10", "--attendants", "4", "--days", "30"]


def _runs(app) -> list[JobRun]:
    with app.app_context():
        rows = list(db.session.execute(sa.select(JobRun).order_by(JobRun.id)).scalars())
        db.session.remove()
    return rows


def _one_line_failure(result, *fragments: str) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_cli_runs_are_recorded_with_trigger_cli_and_shown_on_metrics_and_dashboard(app, runner, client):
    assert runner.invoke(args=["ml", "demo-data", *SMALL_HOTEL]).exit_code == 0
    trained = runner.invoke(args=["ml", "train"])
    assert trained.exit_code == 0, trained.output
    scanned = runner.invoke(args=["ml", "scan"])
    assert scanned.exit_code == 0, scanned.output
    cleaned = runner.invoke(args=["ml", "cleanup"])
    assert cleaned.exit_code == 0, cleaned.output

    runs = _runs(app)
    assert [(r.job_name, r.status, r.details["trigger"], r.details["actor"]) for r in runs] == [
        ("train_models", "success", "cli", "cli"), ("anomaly_scan", "success", "cli", "cli"),
        ("cleanup_models", "success", "cli", "cli")]
    # What the commands printed is the runs' own result.
    assert f"Scanned {runs[1].details['result']['scanned']} observations" in scanned.output
    assert len(runs[0].details["result"]) == 3 and all(r["status"] == "trained" for r in runs[0].details["result"])

    metrics = client.get("/metrics").get_data(as_text=True)
    for run in runs:
        match = re.search(rf'^ml_job_last_success_timestamp_seconds{{job="{run.job_name}"}} (\S+)$', metrics, re.M)
        assert match and float(match.group(1)) == pytest.approx(run.finished_at.timestamp(), abs=0.001)
    sign_in(client)
    panel = client.get("/ml/dashboard").get_data(as_text=True).split('id="jobs"')[1]
    for run in runs:
        assert re.search(rf"<td>{run.job_name}</td><td><span class=\"status status-success\">success</span></td>\s*"
                         r"<td>cli</td>", panel), run.job_name


def test_a_training_with_failed_metric_types_prints_its_table_then_fails(app, runner, models_dir):
    """Real fault: the models directory is a read-only tmpfs, so every save fails with EROFS."""
    assert runner.invoke(args=["ml", "demo-data", *SMALL_HOTEL]).exit_code == 0
    with tmpfs(models_dir, read_only=True):
        result = runner.invoke(args=["ml", "train"])
    assert result.exit_code == 1
    header, _rule, *rows = result.stdout.strip().splitlines()
    assert header.split()[:3] == ["metric", "type", "status"] and all(r.split()[1] == "failed" for r in rows)
    _one_line_failure(result, "training failed for dolum_sure, stok_seviye, tuketim_miktar")
    [run] = _runs(app)
    assert (run.status, run.details["trigger"]) == ("failed", "cli") and "JobError" in run.error


def test_bad_arguments_are_refused_before_any_run_is_recorded(app, runner):
    _one_line_failure(runner.invoke(args=["ml", "train", "--metric-type", "Bad-Name"]), "metric_type")
    _one_line_failure(runner.invoke(args=["ml", "scan", "--metric-type", "model_load_time"]), "internal figure")
    assert _runs(app) == []


HOLD_LOCK = textwrap.dedent("""
    import sys
    from tests import dbutil
    from utils.ml.jobs import job_lock

    app = dbutil.make_app(sys.argv[1], sys.argv[2])
    with app.app_context():
        lock = job_lock("cleanup_models")
        assert lock.try_acquire()
        print("held", flush=True)
        sys.stdin.read()  # until the test closes our stdin
        lock.release()
""")


def test_a_job_locked_by_another_process_is_refused_in_one_line(app, runner, database_url, models_dir):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, database_url, str(models_dir)], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        _one_line_failure(runner.invoke(args=["ml", "cleanup"]), "job cleanup_models is already running",
                          "try again when it has finished")
        assert _runs(app) == [], "a refused run records nothing"
    finally:
        holder.stdin.close()
        assert holder.wait(timeout=30) == 0
    assert runner.invoke(args=["ml", "cleanup"]).exit_code == 0
    assert [(r.job_name, r.status) for r in _runs(app)] == [("cleanup_models", "success")]


@pytest.mark.parametrize("backend", ["postgresql"])  # a reader blocked by a table lock: PostgreSQL's locking
def test_a_cli_run_of_a_job_running_in_another_process_names_that_run(app, runner, database_url, models_dir,
                                                                      tmp_path):
    with app.app_context():
        get_model_manager().save_model(make_model(1), "isolation_forest", "stok_seviye")
        db.session.remove()
    engine = sa.create_engine(database_url)
    conn = engine.connect()
    log = tmp_path / "other.log"
    try:
        # Hold the other process's cleanup inside its run: its first read of ml_models waits for us.
        conn.execute(sa.text("LOCK TABLE ml_models IN ACCESS EXCLUSIVE MODE"))
        env = base_env(tmp_path, FLASK_APP="app:app", DATABASE_URL=database_url, ML_MODELS_DIR=str(models_dir),
                       ML_LOG_LEVEL="WARNING")
        with open(log, "wb") as out:
            other = subprocess.Popen([str(VENV_BIN / "flask"), "ml", "cleanup"], cwd=ROOT, env=env, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        running = wait_until(lambda: [r for r in _runs(app) if r.status == "running"], 60,
                             "the other process's run to start", [other], [log])
        [run] = running
        assert (run.pid, run.details["trigger"]) == (other.pid, "cli")

        line = _one_line_failure(runner.invoke(args=["ml", "cleanup"]), "job cleanup_models is already running",
                                 f"(run {run.id} started ", f" on {run.host} pid {other.pid})")
        assert line.endswith("; try again when it has finished")
        conn.rollback()  # let the other run go on
        assert other.wait(timeout=60) == 0, log.read_text()
    finally:
        conn.close()
        engine.dispose()
    assert "Deleted 0 old versions" in log.read_text()
    assert [(r.id, r.status) for r in _runs(app)] == [(run.id, "success")]
