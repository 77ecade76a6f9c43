"""``python -m bench --quick`` runs end to end against the local PostgreSQL.

PostgreSQL only: the bench measures the production setting (the legacy BLOB
path over a real server connection), so SQLite cannot stand in for it.  This
checks that every section ran and reported, and that the bench cleaned up
after itself; it asserts no timings (those belong to ``bench/results``).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

from tests import dbutil

ROOT = Path(__file__).resolve().parents[1]

LOAD_VARIANTS = {
    "legacy_blob_reused_connection", "legacy_blob_new_connection", "joblib_load_uncompressed",
    "joblib_load_compressed", "ours_cold", "ours_cold_gzip_file", "ours_blob_fallback",
    "floor_read_sha256_unpickle", "floor_with_db_lookup", "floor_pickle_protocol5", "ours_warm",
}
PEER_VARIANTS = {"ours_local_cold", "ours_s3_cold", "ours_s3_disk_cache", "mlflow_registry",
                 "mlflow_registry_cloudpickle", "skops_load"}
MEMORY_VARIANTS = {"legacy_scan", "legacy_scan_active_rows", "ours_scan", "legacy_list", "ours_list"}
TARGET_IDS = {"cold_vs_floor", "cold_vs_legacy", "warm_load", "threads_cache_off", "scan_memory",
              "list_memory", "scan_throughput", "scan_cost"}


def _database_exists(name: str) -> bool:
    engine = sa.create_engine(dbutil.PG_ADMIN_URL)
    try:
        with engine.connect() as conn:
            return bool(conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).scalar())
    finally:
        engine.dispose()


def test_quick_bench_reports_every_section_and_drops_its_database(pg_available, tmp_path):
    output = tmp_path / "quick.json"
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--output", str(output)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(output.read_text())

    assert report["quick"] is True
    machine = report["machine"]
    for key in ("cpu_model", "cores", "ram_gib", "python", "sklearn", "numpy", "postgresql"):
        assert machine[key], f"machine.{key} is empty"

    assert set(report["load"]["variants"]) == LOAD_VARIANTS
    for name, summary in report["load"]["variants"].items():
        assert summary["n"] > 0 and 0 < summary["median"] <= summary["p99"], name

    for label in ("cache_off", "cache_on"):
        run = report["concurrency"][label]
        assert run["threads"] == 10 and run["loads"] == 10 * report["sizes"]["loads_per_thread"] * (
            20 if label == "cache_on" else 1)
        assert run["loads_per_second"] > 0

    memory = report["memory"]
    assert set(memory["variants"]) == MEMORY_VARIANTS
    assert memory["variants"]["ours_list"]["listed"] == report["sizes"]["store_models"]
    assert memory["variants"]["legacy_scan"]["rows_with_blobs"] == report["sizes"]["store_models"]
    # Every scan variant flagged the same observations: they scored the same models.
    flagged = {memory["variants"][v]["flagged"] for v in ("legacy_scan", "legacy_scan_active_rows", "ours_scan")}
    assert len(flagged) == 1

    scan = report["scan"]
    assert scan["status"] == "ok", scan
    assert scan["end_to_end"]["rows"] == scan["observations"] == scan["raw_score_samples"]["rows"]
    assert set(scan["end_to_end"]["methods"].values()) == {"isolation_forest_file"}
    # Per-row cost of both paths, measured on the same rows.
    service = scan["cost"]["service"]
    for part in ("train_us_per_row", "scan_us_per_row"):
        assert service[part]["today"] > 0 and service[part]["new"] > 0
    assert scan["cost"]["simulator_in_memory"]["scan_us_per_row"]["new"] > 0
    # The same scan reading in turn raised the same alerts.
    assert scan["end_to_end_read_in_turn"]["rows"] == scan["end_to_end"]["rows"]
    assert scan["end_to_end_read_in_turn"]["alerts"] == scan["end_to_end"]["alerts"]

    disk = report["disk"]
    assert disk["store_at_keep_versions"]["plain"]["files"] == min(
        report["sizes"]["store_models"], disk["keep_versions"] * disk["metric_types"])
    assert disk["per_model"]["pickle_gzip6_bytes"] < disk["per_model"]["pickle_bytes"]

    # The peers need the bench-only requirements (make bench installs them; make test does not).
    peers = report["peers"]
    assert peers["status"] in ("ok", "not_run"), peers
    if peers["status"] == "ok":
        assert set(peers["variants"]) == PEER_VARIANTS
        assert {s["n"] for s in peers["variants"].values()} == {report["sizes"]["load_repetitions"]}
    else:
        assert "requirements-bench.txt" in peers["reason"]

    targets = {t["id"]: t for t in report["targets"]}
    assert set(targets) == TARGET_IDS
    assert all(t["passed"] in (True, False) for t in targets.values()), "a target was not measured"

    assert not _database_exists(report["database"]), "the bench left its database behind"



def test_scan_scale_bench_runs_small_and_drops_its_database(pg_available, tmp_path):
    output = tmp_path / "scan.json"
    completed = subprocess.run(
        [sys.executable, "-m", "bench.scan_scale", "--rows", "30000", "--raw-rows", "9000", "--in-turn",
         "--output", str(output)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(output.read_text())
    assert report["load"]["rows"] == 30000
    # Read ahead or in turn, the scan saw every observation and raised the same alerts.
    assert report["scan"]["rows"] == report["scan_read_in_turn"]["rows"] == 30000
    assert report["scan"]["alerts"] == report["scan_read_in_turn"]["alerts"] > 0
    assert report["scan"]["read_ahead"] == 2 and report["scan_read_in_turn"]["read_ahead"] == 0
    assert report["scan"]["peak_rss_mib"] >= report["scan"]["rss_before_mib"] > 0
    assert report["raw_before"]["rows"] == 9000
    kept = report["scan_after_retention"]["rows"]
    assert kept + report["retention"]["observations_deleted"] == 30000 and 0 < kept < 30000
    assert "scan after retention" in completed.stdout
    assert not _database_exists(report["database"]), "the bench left its database behind"
