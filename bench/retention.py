"""``python -m bench.retention [--rows N]``: retention at 10 million observations on PostgreSQL.

Not part of ``make bench`` (it takes several minutes): run it by hand.  In a
throw-away ``mlbench_*`` database built by the real migration chain it loads
N observations spread over 400 days in time order (3 metric types, 1,000
entities) and an alert on every 50th (one in ten of them open), then:

* times the time-range queries (the training window of one metric type, the
  last day of one, a full count) before retention, after it, and after VACUUM,
  each with its plan (EXPLAIN);
* runs ``run_retention`` (180 days, batches of ``ML_RETENTION_BATCH_SIZE``)
  while another connection inserts one observation per transaction, as the
  hotel app does, and records that inserter's latency and every time it was
  seen waiting on a lock (``pg_stat_activity``, sampled every 20 ms);
* compares the inserter's latency with a baseline period without retention.

Prints a table and writes ``bench/results/retention.json``.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import sqlalchemy as sa

from bench.env import ROOT, machine_description, write_report
from bench.stats import percentile
from tests import dbutil

RESULTS = ROOT / "bench" / "results" / "retention.json"
TYPES = ("stok_seviye", "tuketim_miktar", "dolum_sure")
WINDOW_SQL = ("SELECT entity_id, metric_value FROM ml_metrics WHERE metric_type = 'stok_seviye' "
              "AND timestamp >= now() - interval '60 days'")
QUERIES = {
    "training_window_60d_one_type": WINDOW_SQL,
    "last_day_one_type": "SELECT count(*) FROM ml_metrics WHERE metric_type = 'tuketim_miktar' "
                         "AND timestamp >= now() - interval '1 day'",
    "full_count": "SELECT count(*) FROM ml_metrics",
}
BATCH_PLAN_SQL = """
    SELECT m.ctid FROM ml_metrics m
    WHERE m.metric_type = 'stok_seviye' AND m.timestamp < now() - interval '180 days'
      AND m.timestamp >= '1970-01-01'
      AND NOT EXISTS (SELECT 1 FROM ml_alerts a WHERE a.observation_id = m.id
                      AND NOT a.is_read AND NOT a.is_false_positive AND a.resolved_at IS NULL)
    ORDER BY m.timestamp LIMIT 5000"""


def _load(engine: sa.Engine, rows: int) -> dict[str, float]:
    """N observations in time order (ids grow with time, as in production) and their alerts."""
    started = time.perf_counter()
    with engine.begin() as conn:
        indexes = conn.execute(sa.text(
            "SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.tablename = 'ml_metrics' AND NOT EXISTS "
            "(SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)")).all()
        for name, _ in indexes:  # loading first and indexing after is ~3x faster
            conn.execute(sa.text(f'DROP INDEX "{name}"'))
        conn.execute(sa.text("""
            INSERT INTO ml_metrics (metric_type, entity_id, metric_value, timestamp)
            SELECT (ARRAY['stok_seviye', 'tuketim_miktar', 'dolum_sure'])[1 + g % 3], g % 1000,
                   round((random() * 100)::numeric, 2),
                   now() - ((:n - g)::float8 / :n) * interval '400 days'
            FROM generate_series(1, :n) AS g"""), {"n": rows})
        loaded = time.perf_counter() - started
        for _, definition in indexes:
            conn.execute(sa.text(definition))
        conn.execute(sa.text("""
            INSERT INTO ml_alerts (metric_type, entity_id, metric_value, anomaly_score, severity, alert_type,
                                   message, method, observation_id, is_read, detected_at, created_at)
            SELECT metric_type, entity_id, metric_value, 0.7, 'orta', 'stok_anomali', 'bench',
                   'isolation_forest_file', id, id % 500 <> 0, timestamp, timestamp
            FROM ml_metrics WHERE id % 50 = 0"""))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE ml_metrics"))
        conn.execute(sa.text("VACUUM ANALYZE ml_alerts"))
    return {"insert_seconds": round(loaded, 1), "total_seconds": round(time.perf_counter() - started, 1)}


def _time_queries(engine: sa.Engine, repeats: int = 3) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with engine.connect() as conn:
        for name, sql in QUERIES.items():
            samples = []
            for _ in range(repeats):
                started = time.perf_counter()
                rows = conn.execute(sa.text(sql)).all()
                samples.append(time.perf_counter() - started)
            plan = [r[0] for r in conn.execute(sa.text(f"EXPLAIN {sql}"))]
            out[name] = {"median_ms": round(statistics.median(samples) * 1000, 1),
                         "rows": len(rows) if len(rows) > 1 else rows[0][0], "plan": plan}
        out["retention_batch_plan"] = [r[0] for r in conn.execute(sa.text(f"EXPLAIN {BATCH_PLAN_SQL}"))]
        out["table_mib"] = round(conn.execute(sa.text(
            "SELECT pg_total_relation_size('ml_metrics')")).scalar() / 1024 / 1024, 1)
    return out


class Inserter(threading.Thread):
    """One observation per transaction, as the hotel app writes them; records each INSERT's latency."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.engine = sa.create_engine(url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")
        self.latencies: list[float] = []
        self.stop = threading.Event()
        self.pid: int | None = None
        self.ready = threading.Event()

    def run(self) -> None:
        with self.engine.connect() as conn:
            self.pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()
            self.ready.set()
            statement = sa.text("INSERT INTO ml_metrics (metric_type, entity_id, metric_value, timestamp) "
                                "VALUES ('stok_seviye', 7, 42.0, now())")
            while not self.stop.is_set():
                started = time.perf_counter()
                conn.execute(statement)
                self.latencies.append(time.perf_counter() - started)
                time.sleep(0.005)  # ~150-200 inserts/s: far above the hotel app's rate
        self.engine.dispose()

    def summary(self) -> dict[str, Any]:
        ms = [x * 1000 for x in self.latencies]
        return {"inserts": len(ms), "median_ms": round(statistics.median(ms), 3),
                "p99_ms": round(percentile(ms, 99), 3), "max_ms": round(max(ms), 3)}


def _with_inserter(url: str, admin: sa.Engine, work: Callable[[], Any]) -> tuple[Any, dict[str, Any]]:
    """Run ``work`` while an inserter writes; sample whether the inserter waits on a lock."""
    inserter = Inserter(url)
    inserter.start()
    inserter.ready.wait(30)
    waits: list[str] = []
    samples = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal samples
        with admin.connect() as conn:
            while not done.is_set():
                row = conn.execute(sa.text("SELECT wait_event_type, wait_event FROM pg_stat_activity WHERE pid = :p"),
                                   {"p": inserter.pid}).first()
                conn.rollback()
                samples += 1
                if row and row[0] == "Lock":
                    waits.append(str(row[1]))
                time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = work()
    finally:
        done.set()
        inserter.stop.set()
        inserter.join(30)
        sampler.join(30)
    return result, {**inserter.summary(), "lock_wait_samples": len(waits), "samples": samples,
                    "lock_wait_events": sorted(set(waits))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.retention", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from utils.ml.pipeline.retention import RetentionPolicy, run_retention

    name = dbutil.create_pg_database(prefix="mlbench")
    url = dbutil.pg_url(name)
    engine = sa.create_engine(url)
    admin = sa.create_engine(url, poolclass=sa.pool.NullPool)
    started = time.perf_counter()
    try:
        dbutil.migrate(url, Path(tempfile.mkdtemp(prefix="mlbench-retention-")))
        with engine.connect() as conn:
            version = conn.execute(sa.text("SHOW server_version")).scalar()
        report: dict[str, Any] = {"rows": args.rows, "batch_size": args.batch_size,
                                  "machine": machine_description(version)}
        print(f"bench.retention: loading {args.rows:,} observations ...", file=sys.stderr, flush=True)
        report["load"] = _load(engine, args.rows)
        report["before"] = _time_queries(engine)
        _, report["inserter_baseline"] = _with_inserter(url, admin, lambda: time.sleep(10))
        policy = RetentionPolicy(observation_days=180, alert_days=365, job_run_days=90, batch_size=args.batch_size)
        print("bench.retention: retention ...", file=sys.stderr, flush=True)
        result, report["inserter_during_retention"] = _with_inserter(
            url, admin, lambda: run_retention(engine, policy))
        obs = result["observations"]
        report["retention"] = {
            "observations_deleted": obs["rows"], "batches": obs["batches"], "seconds": obs["seconds"],
            "rows_per_second": round(obs["rows"] / obs["seconds"]) if obs["seconds"] else None,
            "alerts_deleted": result["alerts"]["rows"],
        }
        with engine.connect() as conn:
            report["retention"]["kept_for_open_alerts"] = conn.execute(sa.text(
                "SELECT count(*) FROM ml_metrics WHERE timestamp < now() - interval '180 days'")).scalar()
            report["retention"]["rows_left"] = conn.execute(sa.text("SELECT count(*) FROM ml_metrics")).scalar()
        report["after"] = _time_queries(engine)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            vacuum_started = time.perf_counter()
            conn.execute(sa.text("VACUUM ANALYZE ml_metrics"))
            report["vacuum_seconds"] = round(time.perf_counter() - vacuum_started, 1)
        report["after_vacuum"] = _time_queries(engine)
    finally:
        engine.dispose()
        admin.dispose()
        dbutil.drop_pg_database(name)
    write_report(report, started, args.output, render)
    return 0


def render(report: dict[str, Any]) -> str:
    r, base, during = report["retention"], report["inserter_baseline"], report["inserter_during_retention"]
    lines = [f"{report['rows']:,} observations; retention 180 days, batches of {report['batch_size']}",
             f"deleted {r['observations_deleted']:,} in {r['seconds']} s ({r['rows_per_second']:,} rows/s, "
             f"{r['batches']} statements); kept {r['kept_for_open_alerts']:,} old ones for open alerts",
             "inserter (one row per transaction)   inserts  median ms  p99 ms  max ms  lock-wait samples",
             f"  baseline, 10 s                     {base['inserts']:7}  {base['median_ms']:9}  {base['p99_ms']:6}"
             f"  {base['max_ms']:6}  {base['lock_wait_samples']}/{base['samples']}",
             f"  during retention                   {during['inserts']:7}  {during['median_ms']:9}"
             f"  {during['p99_ms']:6}  {during['max_ms']:6}  {during['lock_wait_samples']}/{during['samples']}",
             "query (median of 3, ms)              before   after  after VACUUM"]
    for name in QUERIES:
        lines.append(f"  {name:33}  {report['before'][name]['median_ms']:7}  {report['after'][name]['median_ms']:6}"
                     f"  {report['after_vacuum'][name]['median_ms']:12}")
    lines.append(f"table size MiB: {report['before']['table_mib']} -> {report['after']['table_mib']} -> "
                 f"{report['after_vacuum']['table_mib']} (VACUUM {report['vacuum_seconds']} s)")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
