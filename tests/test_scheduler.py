"""The scheduler: every tick runs once however many processes schedule, a dead
leader is replaced, failures do not stop later ticks, and nothing starts where it
must not (``flask db upgrade``, test apps).

Real processes throughout: gunicorn with 2 workers plus ``flask ml scheduler``
against one PostgreSQL database; two ``flask ml scheduler`` processes against one
SQLite file.  Leaders are killed with SIGKILL; ticks are 1 s.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable

import sqlalchemy as sa

from tests import dbutil
from tests.ml_helpers import sql
from tests.procutil import (
    VENV_BIN,
    base_env,
    free_port,
    http_status,
    json_events,
    start,
    stop_group,
    tail,
    terminate,
    wait_until,
)
from utils.ml.jobs.locks import LEADER_LOCK_CLASS, LEADER_LOCK_NAME, lock_key
from utils.ml.jobs.scheduler import current_scheduler, start_for_web_worker, stop_scheduler
from utils.models import JobRun
from utils.time import as_utc

RUNS = JobRun.__table__
JOB_NAMES = ("anomaly_scan", "train_models", "cleanup_models")
ONE_SECOND = {"ML_SCAN_INTERVAL_SECONDS": "1", "ML_TRAIN_INTERVAL_SECONDS": "1", "ML_CLEANUP_INTERVAL_SECONDS": "1"}
SECOND = timedelta(seconds=1)
# Ticks a (re)starting leader may miss: its first runs import the ML stack, and
# APScheduler skips a tick while the previous run of that job is still going.
WARM_UP = timedelta(seconds=3)


# ---------------------------------------------------------------- helpers
def scheduler_env(tmp_path: Path, url: str, heartbeat: str, lease: str, **extra: str) -> dict[str, str]:
    models = tmp_path / "ml_models"
    models.mkdir(exist_ok=True)
    settings = dict(DATABASE_URL=url, ML_MODELS_DIR=str(models), ML_SCHEDULER_ENABLED="true", ML_ENABLED="true",
                    ML_SCHEDULER_HEARTBEAT_SECONDS=heartbeat, ML_SCHEDULER_LEASE_SECONDS=lease,
                    ML_ADMIN_TOKEN="test-admin-token-0123456789", SECRET_KEY="test-secret", **ONE_SECOND)
    settings.update(extra)
    return base_env(tmp_path, **settings)


def read_runs(url: str) -> list[dict[str, Any]]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(RUNS).order_by(RUNS.c.id)).all()
    finally:
        engine.dispose()
    out = []
    for row in rows:
        run = dict(row._mapping)
        for key in ("scheduled_for", "started_at", "finished_at"):
            run[key] = as_utc(run[key])
        out.append(run)
    return out


def scheduled(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in runs if (r["details"] or {}).get("trigger") == "schedule"]


def latest_runner(url: str) -> int | None:
    runs = read_runs(url)
    return runs[-1]["pid"] if runs else None


def runs_by_others_after(url: str, moment: datetime, excluded: set[int]) -> list[dict[str, Any]]:
    return [r for r in read_runs(url) if r["started_at"] > moment and r["pid"] not in excluded]


def missing_ticks(ticks: Iterable[datetime], allowed: list[tuple[datetime, datetime]]) -> list[datetime]:
    """Aligned 1 s ticks between the first and last one seen that are absent and not inside
    an ``allowed`` window (start-up, takeover)."""
    have = sorted(set(ticks))
    gaps, tick = [], have[0]
    while tick <= have[-1]:
        if tick not in have and not any(lo <= tick <= hi for lo, hi in allowed):
            gaps.append(tick)
        tick += SECOND
    return gaps


def assert_each_tick_ran_once(runs: list[dict[str, Any]], logs: list[Path]) -> None:
    """The database allows one row per tick; the logs prove no process ran a tick it had
    not claimed: every ``job_started`` of a scheduled run names a distinct claimed tick."""
    started = Counter((e["job"], e["scheduled_for"]) for e in json_events(*logs, name="job_started")
                      if e.get("trigger") == "schedule")
    twice = {key: n for key, n in started.items() if n > 1}
    assert not twice, f"ticks started more than once: {twice}"
    claimed = {(r["job_name"], r["scheduled_for"].isoformat()): r for r in scheduled(runs)}
    assert len(claimed) == len(scheduled(runs))
    assert set(started) <= set(claimed), f"started but never claimed: {set(started) - set(claimed)}"
    for key, run in claimed.items():
        if run["status"] in ("success", "failed"):
            assert key in started, f"run {run['id']} finished without a job_started event"


def assert_outcomes_are_honest(runs: list[dict[str, Any]],
                               dead_leases: Iterable[tuple[datetime, datetime]] = ()) -> None:
    """Every row says what happened.  ``dead_leases`` are the windows in which a killed
    process may still hold a job lock (a SQLite lease lives until its TTL runs out):
    a tick in one that finds the job busy is honestly ``skipped``, and nowhere else."""
    dead_leases = list(dead_leases)
    assert not [r for r in runs if r["status"] == "running"], "a run was left 'running' after a clean stop"
    for run in runs:
        assert run["status"] in {"success", "failed", "skipped", "abandoned", "interrupted"}
        if run["status"] == "failed":
            assert run["error"].startswith("Traceback (most recent call last):"), run["error"][:200]
        if run["status"] == "interrupted":  # the stop came while it ran: it stopped at a safe point, and says so
            assert run["error"].startswith("interrupted by shutdown"), run["error"][:200]
            assert run["finished_at"] is not None, run
        if run["job_name"] == "cleanup_models":  # an empty store: nothing can make it fail
            if run["status"] == "skipped":  # but a killed leader's lock can outlive it
                assert run["error"].startswith("job cleanup_models was still running"), run
                assert any(lo <= run["scheduled_for"] <= hi for lo, hi in dead_leases), run
            else:
                assert run["status"] in {"success", "abandoned", "interrupted"}, run


def leader_sessions(url: str, dbname: str) -> tuple[int, int]:
    """(sessions competing for the leader lock, sessions holding it) in ``dbname``."""
    [(competing, holding)] = sql(url, """
        SELECT count(*), count(l.pid)
        FROM pg_stat_activity a
        LEFT JOIN pg_locks l ON l.pid = a.pid AND l.locktype = 'advisory' AND l.granted
             AND l.classid = :cls AND l.objid = :key AND l.objsubid = 2
        WHERE a.datname = :db AND a.application_name = 'ml-scheduler-leader'
    """, {"cls": LEADER_LOCK_CLASS, "key": lock_key(LEADER_LOCK_NAME), "db": dbname})
    return competing, holding


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


# ------------------------------------------------------- PostgreSQL, 3 processes
def test_gunicorn_workers_and_scheduler_process_run_each_tick_once_and_survive_leader_kills(
        pg_template, tmp_path):
    name = dbutil.create_pg_database(template=pg_template)
    url = dbutil.pg_url(name)
    prom = tmp_path / "prom"
    prom.mkdir()
    env = scheduler_env(tmp_path, url, heartbeat="0.5", lease="3")
    port = free_port()
    web_log, sched_log = tmp_path / "gunicorn.log", tmp_path / "scheduler.log"
    logs = [web_log, sched_log]
    web = start([str(VENV_BIN / "gunicorn"), "-c", "gunicorn.conf.py", "app:app"],
                dict(env, GUNICORN_BIND=f"127.0.0.1:{port}", GUNICORN_WORKERS="2", GUNICORN_THREADS="2",
                     PROMETHEUS_MULTIPROC_DIR=str(prom)), web_log)
    sched = start([str(VENV_BIN / "flask"), "--app", "app", "ml", "scheduler"], env, sched_log)
    kills: list[tuple[int, datetime]] = []
    try:
        wait_until(lambda: http_status(f"http://127.0.0.1:{port}/health") == 200, 30, "gunicorn to serve",
                   [web, sched], logs)
        # Both workers and the scheduler process compete; exactly one session holds the lock.
        wait_until(lambda: leader_sessions(url, name) == (3, 1), 30, "3 competitors, 1 leader", [web, sched], logs)
        wait_until(lambda: read_runs(url), 20, "the first tick", [web, sched], logs)
        time.sleep(3)
        assert leader_sessions(url, name) == (3, 1)

        for _ in range(2):  # kill the leader twice: a successor takes over each time
            victim = latest_runner(url)
            ours = {sched.pid, *children(web.pid)}
            assert victim in ours, f"leader pid {victim} is not one of our processes {ours}"
            os.kill(victim, signal.SIGKILL)
            killed_at = datetime.now(timezone.utc)
            kills.append((victim, killed_at))
            dead = {pid for pid, _ in kills}
            wait_until(lambda: runs_by_others_after(url, killed_at, dead), 15, "another process to take over",
                       [web], logs)
            time.sleep(2)

        stopping_at = datetime.now(timezone.utc)
        if sched.poll() is None:
            assert terminate(sched) == 0, tail([sched_log])
        assert terminate(web) == 0, tail([web_log])
    finally:
        stop_group(sched)
        stop_group(web)

    try:
        runs = read_runs(url)
        # Every session is gone and left no lock behind (released or closed with its process).
        assert leader_sessions(url, name) == (0, 0)
    finally:
        dbutil.drop_pg_database(name)

    assert_each_tick_ran_once(runs, logs)
    # Advisory locks die with the session, but the server may notice the kill a beat late.
    assert_outcomes_are_honest(runs, [(at - SECOND, at + WARM_UP) for _, at in kills])
    ticks = scheduled(runs)
    first = min(r["scheduled_for"] for r in ticks)
    allowed = [(first, first + WARM_UP)] + [(at - SECOND, at + WARM_UP) for _, at in kills]
    for job in JOB_NAMES:
        job_ticks = [r["scheduled_for"] for r in ticks if r["job_name"] == job and r["scheduled_for"] < stopping_at]
        assert len(job_ticks) >= 8, (job, len(job_ticks))
        assert missing_ticks(job_ticks, allowed) == [], job
    for victim, killed_at in kills:
        after = [r for r in ticks if r["started_at"] > killed_at + SECOND]
        assert after and victim not in {r["pid"] for r in after}, "the killed leader cannot have run later ticks"
        takeover = min(r["started_at"] for r in after if r["pid"] != victim) - killed_at
        print(f"leader pid {victim} killed; first tick by a successor {takeover.total_seconds():.2f}s later")
        assert takeover < timedelta(seconds=4), f"takeover took {takeover}"
    # Leadership moved: the runs were made by at least three distinct processes.
    assert len({r["pid"] for r in ticks}) >= 3


# ------------------------------------------------------- SQLite, 2 processes
def _lease(url: str) -> list[tuple[str, datetime]]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT holder, expires_at FROM ml_scheduler_leases WHERE name = :n"),
                                {"n": LEADER_LOCK_NAME}).all()
    finally:
        engine.dispose()
    return [(holder, as_utc(datetime.fromisoformat(str(expires)))) for holder, expires in rows]


def _holder_pid(url: str) -> int | None:
    lease = _lease(url)
    return int(lease[0][0].split(":")[1]) if lease else None


def test_sqlite_lease_election_between_two_scheduler_processes(sqlite_template, tmp_path):
    """SQLite's own mechanism (the PostgreSQL path uses advisory locks, tested above)."""
    url = dbutil.copy_sqlite(sqlite_template, tmp_path / "ml.sqlite3")
    heartbeat, lease = 0.4, 2.0
    env = scheduler_env(tmp_path, url, heartbeat=str(heartbeat), lease=str(lease))
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    logs = [first_log, second_log]
    first = start([str(VENV_BIN / "flask"), "--app", "app", "ml", "scheduler"], env, first_log)
    second = None
    try:
        wait_until(lambda: _holder_pid(url) == first.pid, 30, "the first process to lead", [first], logs)
        second = start([str(VENV_BIN / "flask"), "--app", "app", "ml", "scheduler"], env, second_log)
        wait_until(lambda: json_events(second_log, name="scheduler_started"), 30, "the second process to start",
                   [first, second], logs)
        assert json_events(second_log, name="scheduler_started")[0]["leader"] is False
        time.sleep(2.5)
        assert _holder_pid(url) == first.pid, "a live, renewed lease is never taken"

        os.kill(first.pid, signal.SIGKILL)
        killed_at = datetime.now(timezone.utc)
        first.wait(timeout=10)
        [(_, expires_at)] = _lease(url)  # the dead leader's last renewal
        wait_until(lambda: _holder_pid(url) == second.pid, 10, "the second process to take the lease over",
                   [second], logs)
        wait_until(lambda: runs_by_others_after(url, killed_at, {first.pid}), 10, "ticks by the new leader",
                   [second], logs)
        time.sleep(1.5)
        assert terminate(second) == 0, tail([second_log])
        stopped_at = datetime.now(timezone.utc)
    finally:
        stop_group(first)
        if second is not None:
            stop_group(second)

    assert _lease(url) == [], "a clean stop deletes the lease"
    [acquired] = [e for e in json_events(second_log, name="scheduler_leadership") if e["leader"]]
    acquired_at = datetime.fromisoformat(acquired["ts"])
    print(f"lease expired {(expires_at - killed_at).total_seconds():.2f}s after the kill; "
          f"taken over {(acquired_at - expires_at).total_seconds():.2f}s after expiry")
    assert acquired_at >= expires_at, "the lease was taken over before it expired"
    assert acquired_at - expires_at < timedelta(seconds=1.5), "takeover came later than a heartbeat or two"
    [released] = [e for e in json_events(second_log, name="scheduler_leadership") if not e["leader"]]
    assert released["change"] == "released"

    runs = read_runs(url)
    assert_each_tick_ran_once(runs, logs)
    # The dead leader's job lease (renewed each heartbeat while a job ran) can expire
    # after its leader lease; until then the new leader finds that job busy.
    assert_outcomes_are_honest(runs, [(killed_at - SECOND, killed_at + timedelta(seconds=lease + heartbeat))])
    ticks = scheduled(runs)
    assert {r["pid"] for r in ticks} == {first.pid, second.pid}
    assert all(r["pid"] == first.pid for r in ticks if r["started_at"] < killed_at)
    assert all(r["started_at"] >= acquired_at for r in ticks if r["pid"] == second.pid)
    start_tick = min(r["scheduled_for"] for r in ticks)
    allowed = [(start_tick, start_tick + WARM_UP), (killed_at - SECOND, acquired_at + WARM_UP)]
    for job in JOB_NAMES:
        job_ticks = [r["scheduled_for"] for r in ticks if r["job_name"] == job and r["scheduled_for"] < stopped_at]
        assert missing_ticks(job_ticks, allowed) == [], job


# ------------------------------------------------------- in-process
def _scheduling_app(database_url: str, models_dir: Path, **overrides: Any):
    config = dict(ML_SCHEDULER_ENABLED=True, ML_SCAN_INTERVAL_SECONDS=1.0, ML_TRAIN_INTERVAL_SECONDS=1.0,
                  ML_CLEANUP_INTERVAL_SECONDS=1.0, ML_SCHEDULER_HEARTBEAT_SECONDS=0.3, ML_SCHEDULER_LEASE_SECONDS=2.0)
    config.update(overrides)
    return dbutil.make_app(database_url, models_dir, **config)


def _cleanup_runs(url: str) -> list[dict[str, Any]]:
    return [r for r in scheduled(read_runs(url)) if r["job_name"] == "cleanup_models"]


def test_a_failing_job_is_recorded_and_later_ticks_still_run(database_url, models_dir):
    app = _scheduling_app(database_url, models_dir)
    sql(database_url, "ALTER TABLE ml_models RENAME TO ml_models_gone")  # a real fault for cleanup_models
    renamed = True
    try:
        assert start_for_web_worker(app) is current_scheduler(app) is not None
        failed = wait_until(lambda: [r for r in _cleanup_runs(database_url) if r["status"] == "failed"], 15,
                            "a failed cleanup tick")[0]
        sql(database_url, "ALTER TABLE ml_models_gone RENAME TO ml_models")
        renamed = False
        wait_until(lambda: [r for r in _cleanup_runs(database_url)
                            if r["status"] == "success" and r["scheduled_for"] > failed["scheduled_for"]],
                   15, "a successful later tick")
    finally:
        stop_scheduler(app)
        if renamed:
            sql(database_url, "ALTER TABLE ml_models_gone RENAME TO ml_models")
        dbutil.dispose(app)
    assert failed["error"].startswith("Traceback (most recent call last):")
    assert "cleanup_old_models" in failed["error"] and "ml_models" in failed["error"]
    assert failed["finished_at"] is not None
    # Stopping released leadership: no lease row (SQLite) and no advisory lock (PostgreSQL).
    assert sql(database_url, "SELECT count(*) FROM ml_scheduler_leases WHERE name = :n",
               {"n": LEADER_LOCK_NAME}) == [(0,)]
    if database_url.startswith("postgresql"):
        assert sql(database_url, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = :c"
                   " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                   {"c": LEADER_LOCK_CLASS}) == [(0,)]
    assert not [t for t in threading.enumerate() if t.name == "ml-leader-heartbeat"]


def test_apps_start_no_scheduler_unless_asked(database_url, models_dir):
    app = _scheduling_app(database_url, models_dir)  # ML_SCHEDULER_ENABLED=True, like the env of a web worker
    try:
        assert current_scheduler(app) is None, "create_app must never start the scheduler"
        assert not [t for t in threading.enumerate() if t.name == "ml-leader-heartbeat"]
        off = _scheduling_app(database_url, models_dir, ML_ENABLED=False)
        assert start_for_web_worker(off) is None, "ML_ENABLED=false: no jobs"
        quiet = _scheduling_app(database_url, models_dir, ML_SCHEDULER_ENABLED=False)
        assert start_for_web_worker(quiet) is None
        for extra in (off, quiet):
            dbutil.dispose(extra)
    finally:
        dbutil.dispose(app)
    assert read_runs(database_url) == []


def test_flask_db_upgrade_with_the_scheduler_enabled_starts_no_scheduler(pg_available, tmp_path):
    """Both backends, upgraded side by side (the guard does not depend on the backend;
    running the two real CLI processes at once halves the test's time)."""
    pg_name = dbutil.create_pg_database()
    urls = {"sqlite": dbutil.sqlite_url(tmp_path / "upgrade.sqlite3"), "postgresql": dbutil.pg_url(pg_name)}
    procs, logs = {}, {}
    try:
        for backend, url in urls.items():
            logs[backend] = tmp_path / f"upgrade-{backend}.log"
            procs[backend] = start([str(VENV_BIN / "flask"), "--app", "app", "db", "upgrade"],
                                   scheduler_env(tmp_path, url, heartbeat="0.2", lease="1"), logs[backend])
        for backend, proc in procs.items():
            assert proc.wait(timeout=90) == 0, logs[backend].read_text()
        for backend, url in urls.items():
            assert "Running upgrade" in logs[backend].read_text()
            # A started scheduler announces itself synchronously and takes a lease or lock at once.
            for event in ("scheduler_started", "scheduler_leadership"):
                assert json_events(logs[backend], name=event) == [], (backend, event)
            assert read_runs(url) == [], backend
            assert sql(url, "SELECT count(*) FROM ml_scheduler_leases") == [(0,)], backend
    finally:
        for proc in procs.values():
            stop_group(proc)
        dbutil.drop_pg_database(pg_name)


def test_scheduler_command_refuses_when_ml_is_disabled(sqlite_template, tmp_path, models_dir):
    url = dbutil.copy_sqlite(sqlite_template, tmp_path / "ml.sqlite3")
    app = _scheduling_app(url, models_dir, ML_ENABLED=False)
    try:
        result = app.test_cli_runner().invoke(args=["ml", "scheduler"])
    finally:
        dbutil.dispose(app)
    assert result.exit_code == 1
    assert "Error: ML_ENABLED is false" in result.output
    assert current_scheduler(app) is None and read_runs(url) == []
