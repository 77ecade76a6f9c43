"""Job runs: recorded, locked against running twice anywhere, failures kept with their
traceback.  Both backends (real PostgreSQL and SQLite files), no mocks: failures come
from a real missing table, "busy" from a lock held on another connection."""
from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from tests.ml_helpers import make_model, recorded_events, sql
from utils.extensions import db
from utils.ml import jobs
from utils.ml.jobs import JOBS, JobBusyError, UnknownJobError, job_lock, run_job_now, run_scheduled_tick, tick_for
from utils.ml.jobs.locks import JOB_LOCK_CLASS, lock_key
from utils.ml.model_manager import get_model_manager
from utils.models import JobRun


def _runs(job: str | None = None) -> list[JobRun]:
    db.session.rollback()  # see rows written on other connections
    query = sa.select(JobRun).order_by(JobRun.id)
    if job:
        query = query.where(JobRun.job_name == job)
    return list(db.session.execute(query).scalars())


def _tick(offset: int = 0) -> datetime:
    return tick_for(datetime(2030, 1, 1, tzinfo=timezone.utc).timestamp() + offset, 1.0)


def test_ticks_are_aligned_to_the_interval():
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    assert tick_for(3600.0, 3600) == epoch + timedelta(hours=1)
    assert tick_for(7199.999, 3600) == epoch + timedelta(hours=1)
    assert tick_for(86400 * 3 + 5, 86400) == epoch + timedelta(days=3)
    # Two processes looking at the clock a moment apart name the same tick.
    now = datetime(2030, 5, 6, 7, 8, 9, 500000, tzinfo=timezone.utc).timestamp()
    assert tick_for(now, 1.0) == tick_for(now + 0.4, 1.0) == datetime(2030, 5, 6, 7, 8, 9, tzinfo=timezone.utc)


def test_registry_names_the_three_jobs_and_their_interval_settings(app):
    assert set(JOBS) == {"anomaly_scan", "train_models", "cleanup_models", "drift_check", "notify_deliver"}
    for job in JOBS.values():
        assert app.config[job.interval_setting] >= 1


def test_an_on_demand_run_is_recorded_with_its_trigger_result_and_events(app_ctx):
    manager = get_model_manager()
    for seed in range(4):
        manager.save_model_to_file(make_model(seed), "isolation_forest", "stok_seviye")
    with recorded_events() as log:
        outcome = run_job_now("cleanup_models", actor="tester", trigger="api", keep_versions=2)

    assert outcome["status"] == "success" and outcome["result"]["deleted_count"] == 2
    [run] = _runs()
    assert (run.job_name, run.status, run.error) == ("cleanup_models", "success", None)
    assert run.id == outcome["run_id"] and run.finished_at is not None and run.pid > 0
    assert run.details["trigger"] == "api" and run.details["actor"] == "tester"
    assert run.details["params"] == {"keep_versions": 2}
    assert run.details["result"]["deleted_count"] == 2
    [started] = log.of("job_started")
    [finished] = log.of("job_finished")
    assert started["job"] == finished["job"] == "cleanup_models"
    assert finished["status"] == "success" and finished["duration_s"] >= 0
    assert finished["run_id"] == run.id
    assert jobs.last_runs()["cleanup_models"]["id"] == run.id
    assert jobs.last_runs()["train_models"] is None


def test_an_on_demand_run_says_whether_the_cli_or_the_api_started_it(app_ctx):
    from utils.ml.validation import InvalidInput

    for trigger in ("manual", "schedule", None):
        with pytest.raises(InvalidInput, match=r"^trigger: must be one of cli, api, drift"):
            run_job_now("cleanup_models", actor="tester", trigger=trigger)
    assert _runs() == []
    run_job_now("cleanup_models", actor="cli", trigger="cli")
    assert [(r.details["trigger"], r.details["actor"]) for r in _runs()] == [("cli", "cli")]


def test_unknown_job_is_refused_naming_the_field(app_ctx):
    with pytest.raises(UnknownJobError,
                       match=r"^job: must be one of anomaly_scan, cleanup_models, drift_check, notify_deliver, "
                             r"train_models"):
        run_job_now("retrain_everything", actor="tester", trigger="api")
    assert _runs() == []


def test_busy_job_refuses_an_on_demand_run_and_skips_a_tick(app_ctx):
    """The lock is held on another connection, as a run in another process would."""
    other = job_lock("cleanup_models")
    assert other.try_acquire()
    try:
        with pytest.raises(JobBusyError, match="job cleanup_models is already running"):
            run_job_now("cleanup_models", actor="tester", trigger="api")
        assert _runs() == [], "a refused run records nothing"

        with recorded_events() as log:
            outcome = run_scheduled_tick(app_ctx, "cleanup_models", _tick())
        assert outcome["status"] == "skipped"
        [run] = _runs()
        assert (run.status, run.scheduled_for.replace(tzinfo=timezone.utc)) == ("skipped", _tick())
        assert "still running" in run.error
        assert log.of("job_skipped") and not log.of("job_started")

    finally:
        other.release()
    assert run_job_now("cleanup_models", actor="tester", trigger="api")["status"] == "success"
    # A skipped tick never ran: a later claim of that same tick by a lock holder takes it over.
    assert run_scheduled_tick(app_ctx, "cleanup_models", _tick())["status"] == "success"
    ticks = [(r.status, r.scheduled_for.replace(tzinfo=timezone.utc), r.error) for r in _runs()
             if r.details["trigger"] == "schedule"]
    assert ticks == [("success", _tick(), None)]


@pytest.mark.parametrize("backend", ["postgresql"])  # advisory locks are PostgreSQL's; SQLite's lease is above
def test_postgres_busy_rule_honours_a_raw_advisory_lock(app_ctx):
    """The key scheme is what other tools (psql, an operator) can rely on."""
    url = app_ctx.config["SQLALCHEMY_DATABASE_URI"]
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:c, :k)"),
                         {"c": JOB_LOCK_CLASS, "k": lock_key("job:train_models")})
            with pytest.raises(JobBusyError):
                run_job_now("train_models", actor="tester", trigger="api")
            conn.execute(sa.text("SELECT pg_advisory_unlock_all()"))
    finally:
        engine.dispose()


def test_failure_is_recorded_with_traceback_and_the_next_tick_still_runs(app_ctx):
    url = app_ctx.config["SQLALCHEMY_DATABASE_URI"]
    db.session.remove()
    sql(url, "ALTER TABLE ml_models RENAME TO ml_models_gone")  # a real fault: the job's table is missing
    try:
        with recorded_events() as log:
            outcome = run_scheduled_tick(app_ctx, "cleanup_models", _tick())
        assert outcome["status"] == "failed"
        [failed] = log.of("job_failed")
        assert failed["job"] == "cleanup_models" and failed["status"] == "failed" and "ml_models" in failed["error"]
        assert failed["duration_s"] >= 0

        with pytest.raises(sa.exc.DatabaseError, match="ml_models"):
            run_job_now("cleanup_models", actor="tester", trigger="api")  # on-demand runs re-raise after recording
    finally:
        db.session.remove()
        sql(url, "ALTER TABLE ml_models_gone RENAME TO ml_models")

    assert run_scheduled_tick(app_ctx, "cleanup_models", _tick(1))["status"] == "success"
    runs = _runs()
    assert [r.status for r in runs] == ["failed", "failed", "success"]
    for run in runs[:2]:
        assert run.error.startswith("Traceback (most recent call last):")
        assert "cleanup_old_models" in run.error and "ml_models" in run.error
        assert run.finished_at is not None
    assert runs[2].error is None


def test_a_tick_runs_once_when_two_leaders_race_for_it(app):
    """Two threads (separate app contexts, sessions and lock connections) claim the same tick."""
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def race() -> None:
        barrier.wait()
        outcomes.append(run_scheduled_tick(app, "cleanup_models", _tick())["status"])

    threads = [threading.Thread(target=race) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    # The loser saw the job lock held or the tick already claimed; a "skipped" row it
    # may have written first is taken over by the winner, which holds the lock.
    assert sorted(outcomes) in (["claimed_elsewhere", "success"], ["skipped", "success"])
    with app.app_context():
        runs = _runs()
    assert [(r.status, r.scheduled_for.replace(tzinfo=timezone.utc)) for r in runs] == [("success", _tick())]


def test_a_run_left_running_by_a_dead_process_is_marked_abandoned(app_ctx):
    # The row a SIGKILLed process leaves behind (the real kill is in test_scheduler.py).
    db.session.add(JobRun(job_name="cleanup_models", scheduled_for=_tick(), status="running", host="gone", pid=999999))
    db.session.commit()
    with recorded_events() as log:
        run_job_now("cleanup_models", actor="tester", trigger="api")
    old, new = _runs()
    assert (old.status, new.status) == ("abandoned", "success")
    assert "stopped before finishing" in old.error and old.finished_at is not None
    assert log.of("job_abandoned")[0]["count"] == 1


def test_train_and_scan_jobs_run_the_pipeline_and_name_the_actor(app_ctx):
    """The job layer over the real pipeline: a small demo hotel, trained on behalf of
    a user (the activation audit names them), then scanned."""
    from utils.ml.pipeline.demo_data import generate_demo_data
    from utils.models import ModelActivation

    generate_demo_data(rooms=10, products=6, attendants=2, days=14)
    trained = run_job_now("train_models", actor="alice", trigger="api")
    assert trained["status"] == "success" and trained["result"], trained
    audit = db.session.execute(sa.select(ModelActivation.actor)).scalars().all()
    assert audit and set(audit) == {"alice"}

    scanned = run_job_now("anomaly_scan", actor="bob", trigger="api")
    assert scanned["status"] == "success" and scanned["result"]["scanned"] > 0
    assert [(r.job_name, r.status, r.details["actor"]) for r in _runs()] == [
        ("train_models", "success", "alice"), ("anomaly_scan", "success", "bob")]


def test_a_job_whose_metric_types_all_failed_is_recorded_as_failed(app_ctx, models_dir):
    """Training reports per metric type instead of raising; the job must still not call
    a run in which every save failed a success.  Real fault: the models directory is a
    read-only tmpfs, so every model file write fails with EROFS."""
    from tests.ml_helpers import tmpfs
    from utils.ml.pipeline.demo_data import generate_demo_data

    # 30 days: enough rows per entity for every metric type to reach its save (the detector's warm-up).
    generate_demo_data(rooms=10, products=6, attendants=2, days=30)
    with tmpfs(models_dir, read_only=True):
        with pytest.raises(jobs.JobError, match="training failed for"):
            run_job_now("train_models", actor="tester", trigger="api")
    [run] = _runs("train_models")
    assert run.status == "failed" and "JobError" in run.error
    failed = {entry["metric_type"] for entry in run.details["result"] if entry["status"] == "failed"}
    assert failed == {"dolum_sure", "stok_seviye", "tuketim_miktar"}
