"""Retention of observations, closed alerts and job runs, on real PostgreSQL and SQLite."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, insert, select, text

from tests.procutil import ROOT
from utils.extensions import db
from utils.ml.incidents.models import MLIncident
from utils.ml.pipeline.retention import RetentionPolicy, run_retention
from utils.models import JobRun, MLAlert, MLMetric
from utils.time import utcnow

POLICY = RetentionPolicy(observation_days=180, alert_days=365, job_run_days=90, batch_size=100)


def _observations(metric_type: str, days_ago: float, count: int) -> list[int]:
    now = utcnow()
    rows = [{"metric_type": metric_type, "entity_id": i % 7, "metric_value": float(i),
             "timestamp": now - timedelta(days=days_ago, minutes=i)} for i in range(count)]
    return list(db.session.execute(insert(MLMetric).returning(MLMetric.id), rows).scalars())


def _alert(observation_id, days_ago: float, *, method="z_score", **state) -> int:
    when = utcnow() - timedelta(days=days_ago)
    return db.session.execute(insert(MLAlert).returning(MLAlert.id).values(
        metric_type="stok_seviye", entity_id=1, metric_value=1.0, severity="high", message="m", method=method,
        observation_id=observation_id, created_at=when, detected_at=when, **state)).scalar_one()


def _incident(days_ago: float) -> int:
    when = utcnow() - timedelta(days=days_ago)
    return db.session.execute(insert(MLIncident).returning(MLIncident.id).values(
        metric_type="stok_seviye", entity_id=1, started_at=when, ended_at=when + timedelta(hours=2),
        alert_count=1, severity="high")).scalar_one()


def _run(job: str, days_ago: float, status: str) -> int:
    when = utcnow() - timedelta(days=days_ago)
    return db.session.execute(insert(JobRun).returning(JobRun.id).values(
        job_name=job, scheduled_for=when, started_at=when, finished_at=None if status == "running" else when,
        status=status)).scalar_one()


def _ids(model) -> set[int]:
    found = set(db.session.execute(select(model.id)).scalars())
    db.session.rollback()
    return found


@pytest.fixture
def history(app_ctx):
    """Old and recent rows of every kind, each with a known fate."""
    old = {t: _observations(t, 200, 230) for t in ("stok_seviye", "tuketim_miktar")}  # 2 metric types, 3 batches each
    recent = _observations("stok_seviye", 10, 20)
    boundary = _observations("dolum_sure", 179, 5)  # younger than 180 days: kept
    incidents = {"inc_of_fp": _incident(400), "inc_of_open": _incident(400), "inc_empty_old": _incident(400),
                 "inc_recent": _incident(10)}
    rows = {
        "old": old, "recent": recent, "boundary": boundary, **incidents,
        # Open: its observation is kept, however old; closed ones lose only the link.
        "open_alert": _alert(old["stok_seviye"][0], 200),
        "read_alert": _alert(old["stok_seviye"][1], 200, is_read=True),
        "old_fp_alert": _alert(None, 400, is_false_positive=True, incident_id=incidents["inc_of_fp"]),
        "old_resolved_alert": _alert(None, 400, resolved_at=utcnow()),
        "old_open_alert": _alert(None, 400, incident_id=incidents["inc_of_open"]),
        "hotel_app_alert": _alert(None, 400, method=None, is_read=True),  # the hotel app's: not ours to delete
        "runs_old": [_run("anomaly_scan", 100 + i, "failed") for i in range(3)],
        "run_old_success": _run("train_models", 120, "success"),  # that job's latest success: kept
        "run_old_failed_later": _run("train_models", 110, "failed"),  # its latest run: kept
        "run_old_running": _run("cleanup_models", 100, "running"),
        "run_recent": _run("anomaly_scan", 1, "success"),
    }
    db.session.commit()
    return rows


def test_a_dry_run_counts_what_would_go_and_deletes_nothing(history):
    before = (_ids(MLMetric), _ids(MLAlert), _ids(JobRun), _ids(MLIncident))
    result = run_retention(db.engine, POLICY, dry_run=True)
    assert result["dry_run"] is True
    assert result["observations"]["rows"] == 459  # 460 old, less the one an open alert points at
    assert result["alerts"]["rows"] == 2  # our false positive and our resolved alert, 400 days old
    assert result["job_runs"]["rows"] == 3
    assert result["incidents"]["rows"] == 2  # the false positive's (its one alert would go) and the empty one
    assert (_ids(MLMetric), _ids(MLAlert), _ids(JobRun), _ids(MLIncident)) == before


def test_retention_deletes_in_batches_and_keeps_what_is_still_needed(history):
    result = run_retention(db.engine, POLICY)
    assert (result["observations"]["rows"], result["alerts"]["rows"], result["job_runs"]["rows"]) == (459, 2, 3)
    # 230 old rows per type in batches of 100: 3 statements each (the last one short), and one that
    # finds nothing old of dolum_sure.
    assert result["observations"]["batches"] == 7

    metrics = _ids(MLMetric)
    kept_open = history["old"]["stok_seviye"][0]
    assert metrics == {kept_open, *history["recent"], *history["boundary"]}
    alerts = _ids(MLAlert)
    assert alerts == {history[k] for k in ("open_alert", "read_alert", "old_open_alert", "hotel_app_alert")}
    links = dict(db.session.execute(select(MLAlert.id, MLAlert.observation_id)).all())
    assert links[history["open_alert"]] == kept_open
    assert links[history["read_alert"]] is None  # its observation went; the alert stays
    assert _ids(JobRun) == {history[k] for k in ("run_old_success", "run_old_failed_later", "run_old_running",
                                                 "run_recent")}
    # An incident goes with its last alert; one with an open alert, or recent, stays.
    assert result["incidents"]["rows"] == 2
    assert _ids(MLIncident) == {history["inc_of_open"], history["inc_recent"]}
    # A second run finds nothing more.
    again = run_retention(db.engine, POLICY)
    assert (again["observations"]["rows"], again["alerts"]["rows"], again["job_runs"]["rows"],
            again["incidents"]["rows"]) == (0, 0, 0, 0)


def test_zero_keeps_everything(history):
    before = (_ids(MLMetric), _ids(MLAlert), _ids(JobRun))
    result = run_retention(db.engine, RetentionPolicy(0, 0, 0, 100))
    assert [result[t]["cutoff"] for t in ("observations", "alerts", "job_runs")] == [None, None, None]
    assert (_ids(MLMetric), _ids(MLAlert), _ids(JobRun)) == before


# PostgreSQL only: SQLite enforces no foreign keys here (retention clears the link itself there).
@pytest.mark.parametrize("backend", ["postgresql"])
def test_deleting_observations_outside_retention_never_deletes_an_alert(backend, history):
    """What the original application's own cleanup does (every observation older than 90 days): the
    alerts stay, open ones included (ON DELETE SET NULL, revision 0008)."""
    before = _ids(MLAlert)
    db.session.execute(text("DELETE FROM ml_metrics WHERE timestamp < now() - interval '90 days'"))
    db.session.commit()
    assert _ids(MLAlert) == before
    assert db.session.execute(select(MLAlert.observation_id).where(MLAlert.id == history["open_alert"])).scalar() \
        is None


def test_the_cli_dry_run_and_the_cleanup_job_report_retention(history, app):
    runner = app.test_cli_runner()
    dry = runner.invoke(args=["ml", "retention", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "observations (ml_metrics): would delete 459 older than 180 days" in dry.output
    assert "closed alerts of ours (ml_alerts): would delete 2 older than 365 days" in dry.output
    assert "finished job runs (ml_job_runs): would delete 3 older than 90 days" in dry.output
    assert "Dry run: nothing was deleted." in dry.output
    assert db.session.execute(select(func.count()).select_from(MLMetric)).scalar() == 485
    db.session.rollback()

    app.config["ML_RETENTION_BATCH_SIZE"] = 100
    cleanup = runner.invoke(args=["ml", "cleanup"])
    assert cleanup.exit_code == 0, cleanup.output
    assert "observations (ml_metrics): deleted 459 older than 180 days" in cleanup.output
    assert "in 7 batches" in cleanup.output
    assert db.session.execute(select(func.count()).select_from(MLMetric)).scalar() == 26
    db.session.rollback()


@pytest.mark.parametrize("name,raw,rule", [
    ("ML_OBSERVATION_RETENTION_DAYS", "30", "must be 0 (keep everything) or at least ML_TRAIN_WINDOW_DAYS + 28 (88)"),
    ("ML_ALERT_RETENTION_DAYS", "7", "must be 0 (keep everything) or at least ML_TRAIN_WINDOW_DAYS (60)"),
    ("ML_JOB_RUN_RETENTION_DAYS", "-1", "must be at least 0"),
    ("ML_RETENTION_BATCH_SIZE", "10", "must be at least 100"),
])
def test_retention_settings_refuse_what_would_cut_into_the_training_window(name, raw, rule, tmp_path):
    import subprocess
    import sys

    from tests.procutil import base_env

    env = base_env(tmp_path, **{name: raw})
    result = subprocess.run([sys.executable, "-m", "utils.settings"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == f"config error: {name}={raw!r}: {rule}"
