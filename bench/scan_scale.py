"""``python -m bench.scan_scale [--rows N]``: a scan of 10 million observations on PostgreSQL, and retention.

Not part of ``make bench`` (it takes 10 to 20 minutes): ``make bench-scan``
runs it.  In a throw-away ``mlbench_*`` database built by the real migration
chain it loads N observations over 400 days with one binary COPY
(:mod:`bench.scan_data`), trains the three models on the last 30 days with
the real trainer, then, side by side in one run:

* how much of ``score_samples`` runs without the GIL (:mod:`bench.gil`);
* the raw rate: the active models' scoring on one thread of ``--raw-rows``
  observations already in memory, in the scan's batches with each entity's
  history carried from batch to batch (:func:`bench.scan.raw_rate`: the
  scan's scoring work without the database), timed before and after the
  scan (the machine is shared: both are reported, the ratio uses their
  mean);
* the scan: ``run_scan()`` over every observation in a fresh process
  (:mod:`bench.scan_worker`) with the defaults (pages read ahead on a
  second connection, ``ML_SCAN_READ_AHEAD`` = 2; batches scored ahead of the
  writes, ``ML_SCAN_SCORE_AHEAD`` = 1, each split by entity over
  ``ML_SCAN_SCORE_THREADS`` = 2 threads) — time, rows/s, process CPU, peak
  RSS; with ``--in-turn`` also the same scan reading and scoring each batch
  in its own transaction, one thread;
* retention at 180 days (``run_retention``, batches of 5000), then the scan
  again over what is left (watermarks and alerts reset), right after the
  DELETEs as the cleanup job leaves the table: scan time before and after.

Prints a table and writes ``bench/results/scan-10m.json``; the database is
dropped at the end.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.env import ROOT, machine_description, write_report
from tests import dbutil

RESULTS = ROOT / "bench" / "results" / "scan-10m.json"
TRAIN_DAYS = 30


def _scan(url: str, models_dir: Path, read_ahead: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "bench.scan_worker", url, str(models_dir), str(read_ahead)],
                         cwd=ROOT, capture_output=True, text=True, timeout=3 * 3600)
    if out.returncode != 0:
        raise RuntimeError(f"scan worker failed ({out.returncode}): {out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["errors"]:
        raise RuntimeError(f"scan reported errors: {result}")
    return result


def _reset_scan(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM ml_alerts"))
        conn.execute(sa.text("DELETE FROM ml_scan_watermarks"))


def _gil_share(batch_size: int) -> dict[str, Any]:
    """The GIL-free share of one batch's ``score_samples`` (:mod:`bench.gil`) with a real model."""
    from bench.gil import gil_free_share
    from utils.extensions import db
    from utils.ml.model_manager import get_model_manager
    from utils.ml.pipeline.batch import read_page
    from utils.ml.pipeline.features import MODEL_TYPE, model_input

    from utils.ml.pipeline.history import entity_codes
    from utils.ml.pipeline.scoring import is_causal_model

    connection = db.session.connection()
    page = read_page(connection.connection.dbapi_connection, "postgresql", "stok_seviye", 0, 2**62, batch_size)
    db.session.rollback()
    model = get_model_manager().load_model_from_file(MODEL_TYPE, "stok_seviye")
    if is_causal_model(model):  # as bench.scan.raw_rate times it
        codes = entity_codes(page.entity_ids)
        return {"rows": len(page), **gil_free_share(lambda: model.score(codes, page.timestamps, page.values))}
    matrix = model_input(model, page.matrix)
    return {"rows": len(page), **gil_free_share(lambda: model.score_samples(matrix))}


def _progress(message: str) -> None:
    print(f"bench.scan_scale: {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace, url: str, workdir: Path) -> dict[str, Any]:
    from bench.scan import raw_rate
    from bench.scan_data import TYPES, load_observations
    from utils.extensions import db
    from utils.ml.model_trainer import ModelTrainer
    from utils.ml.pipeline.retention import RetentionPolicy, run_retention

    models_dir = workdir / "ml_models"
    models_dir.mkdir()
    dbutil.migrate(url, workdir / "migrate_models")
    engine = sa.create_engine(url)
    app = dbutil.make_app(url, models_dir)
    report: dict[str, Any] = {"rows": args.rows}
    try:
        with engine.connect() as conn:
            report["machine"] = machine_description(conn.execute(sa.text("SHOW server_version")).scalar())
        _progress(f"loading {args.rows:,} observations with COPY ...")
        report["load"] = load_observations(engine, args.rows)
        with app.app_context():
            _progress("training ...")
            started = time.perf_counter()
            trained = ModelTrainer(db, window_days=TRAIN_DAYS).train()
            if any(t.get("status") != "trained" for t in trained):
                raise RuntimeError(f"training failed: {trained}")
            report["training"] = {"window_days": TRAIN_DAYS, "seconds": round(time.perf_counter() - started, 1),
                                  "samples": {t["metric_type"]: t["samples"] for t in trained},
                                  "n_estimators": int(app.config["ML_N_ESTIMATORS"]),
                                  "batch_size": int(app.config["ML_SCAN_BATCH_SIZE"]),
                                  "read_ahead": int(app.config["ML_SCAN_READ_AHEAD"])}
            per_type = args.raw_rows // len(TYPES)
            _progress("raw score_samples rate ...")
            report["raw_before"] = raw_rate(list(TYPES), per_type)
            report["score_samples_gil"] = _gil_share(report["training"]["batch_size"])
        _progress(f"scan of {args.rows:,} ...")
        report["scan"] = _scan(url, models_dir, report["training"]["read_ahead"])
        if args.in_turn:
            _reset_scan(engine)
            _progress("the same scan overlapping nothing ...")
            report["scan_read_in_turn"] = _scan(url, models_dir, 0)
        with app.app_context():
            report["raw_after"] = raw_rate(list(TYPES), per_type)
        raw = (report["raw_before"]["rows_per_second"] + report["raw_after"]["rows_per_second"]) / 2
        report["raw_rows_per_second_mean"] = round(raw)
        report["ratio_scan_over_raw"] = round(report["scan"]["rows_per_second"] / raw, 3)
        if args.in_turn:
            report["ratio_read_in_turn_over_raw"] = round(report["scan_read_in_turn"]["rows_per_second"] / raw, 3)
        if args.retention:
            _progress("retention (180 days) ...")
            with app.app_context():
                result = run_retention(engine, RetentionPolicy(observation_days=180, alert_days=365,
                                                               job_run_days=90, batch_size=5000))
            obs = result["observations"]
            report["retention"] = {"observations_deleted": obs["rows"], "batches": obs["batches"],
                                   "seconds": obs["seconds"],
                                   "rows_per_second": round(obs["rows"] / obs["seconds"]) if obs["seconds"] else None}
            _reset_scan(engine)
            _progress("scan after retention ...")
            report["scan_after_retention"] = _scan(url, models_dir, report["training"]["read_ahead"])
    finally:
        dbutil.dispose(app)
        engine.dispose()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scan_scale", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--raw-rows", type=int, default=1_500_000,
                        help="observations the raw score_samples rate is measured on (default 1,500,000)")
    parser.add_argument("--in-turn", action="store_true",
                        help="also scan everything reading and scoring each batch in turn, one thread "
                             "(ML_SCAN_READ_AHEAD=0, ML_SCAN_SCORE_AHEAD=0, ML_SCAN_SCORE_THREADS=1)")
    parser.add_argument("--no-retention", dest="retention", action="store_false",
                        help="skip retention and the scan after it")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    problem = dbutil.pg_problem()
    if problem:
        raise SystemExit(f"bench.scan_scale: PostgreSQL is required at {dbutil.PG_ADMIN_URL}: {problem}")
    name = dbutil.create_pg_database(prefix="mlbench")
    workdir = Path(tempfile.mkdtemp(prefix="mlbench-scan-"))
    started = time.perf_counter()
    try:
        report = run(args, dbutil.pg_url(name), workdir)
    finally:
        dbutil.drop_pg_database(name)
        subprocess.run(["rm", "-rf", str(workdir)], check=False, timeout=120)
    report["database"] = name  # created for this run and dropped at its end
    write_report(report, started, args.output, render)
    return 0


def _line(label: str, scan: dict[str, Any], raw: float) -> str:
    return (f"  {label:34} {scan['rows']:>11,} {scan['seconds']:>9.1f} {scan['rows_per_second']:>9,}"
            f" {scan['rows_per_second'] / raw:>6.2f}x {scan['peak_rss_mib']:>9.1f}")


def render(report: dict[str, Any]) -> str:
    raw = report["raw_rows_per_second_mean"]
    load = report["load"]
    lines = [f"{report['rows']:,} observations loaded by COPY in {load['copy_seconds']} s "
             f"({load['copy_rows_per_second']:,} rows/s; indexes {load['index_seconds']} s); "
             f"models: {report['training']['n_estimators']} trees, batches of {report['training']['batch_size']}",
             "                                            rows         s    rows/s  / raw  peak RSS MiB",
             _line("scan, defaults (overlapped)", report["scan"], raw)]
    if "scan_read_in_turn" in report:
        lines.append(_line("scan, nothing overlapped", report["scan_read_in_turn"], raw))
    if "scan_after_retention" in report:
        lines.append(_line("scan after retention", report["scan_after_retention"], raw))
    lines.append(f"  raw score_samples, one thread       {report['raw_before']['rows']:>11,}  before "
                 f"{report['raw_before']['rows_per_second']:,} / after {report['raw_after']['rows_per_second']:,}"
                 f" rows/s (mean {raw:,})")
    gil = report["score_samples_gil"]
    lines.append(f"score_samples of one batch ({gil['rows']:,} rows) leaves the GIL free {gil['gil_free_share']:.0%} "
                 f"of the time (a probe thread's progress beside it; beside pure Python {gil['control_share']:.0%})")
    if "retention" in report:
        r = report["retention"]
        lines.append(f"retention 180 days: deleted {r['observations_deleted']:,} in {r['seconds']} s "
                     f"({r['rows_per_second']:,} rows/s, {r['batches']} statements)")
    lines.append(f"load average at start {report['machine']['load_average_at_start']}, "
                 f"at end {report['machine']['load_average_at_end']}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
