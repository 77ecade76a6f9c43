"""One scan in a fresh process: ``python -m bench.scan_worker URL MODELS_DIR READ_AHEAD`` (0: overlap nothing).

Runs ``run_scan()`` (what ``flask ml scan`` runs) against the database and
prints one JSON object: rows, alerts, seconds, rows per second, and the
process's resident set before the scan and its peak during it (``VmHWM``
reset after start-up, as in :mod:`bench.memory_worker`), so the peak is the
scan's own and not that of whatever loaded the data.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.memory_worker import MIB, _reset_peak, _status_kib  # noqa: E402
from tests import dbutil  # noqa: E402


def main(argv: list[str]) -> int:
    url, models_dir, read_ahead = argv[0], Path(argv[1]), int(argv[2])
    # Scans step over observations older than the training window; the bench's data spans
    # 400 days and the scan is to read all of it, so the window covers it (and retention,
    # which must outlive the window, keeps everything in this process).
    # READ_AHEAD 0 stands for a scan that overlaps nothing: it also scores in turn, on one thread.
    overlap = {} if read_ahead else {"ML_SCAN_SCORE_AHEAD": 0, "ML_SCAN_SCORE_THREADS": 1}
    app = dbutil.make_app(url, models_dir, ML_SCAN_READ_AHEAD=read_ahead, ML_TRAIN_WINDOW_DAYS=3650,
                          ML_OBSERVATION_RETENTION_DAYS=0, **overlap)
    from utils.ml.pipeline.scan import run_scan

    with app.app_context():
        peak_reset = _reset_peak()
        before = _status_kib()["VmRSS"]
        started = time.perf_counter()
        cpu = time.process_time()
        summary = run_scan()
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu
        status = _status_kib()
    dbutil.dispose(app)
    print(json.dumps({
        "read_ahead": read_ahead,
        "rows": summary["scanned"], "alerts": summary["alerts"], "errors": summary["errors"],
        "seconds": round(seconds, 2), "rows_per_second": round(summary["scanned"] / seconds),
        "process_cpu_seconds": round(cpu, 2),
        "batches": sum(s.get("batches", 0) for s in summary["metric_types"].values()),
        "methods": sorted({s.get("method") for s in summary["metric_types"].values()} - {None}),
        "rss_before_mib": round(before / MIB, 1),
        "peak_rss_mib": round(status["VmHWM"] / MIB, 1),
        "peak_is_the_scans": peak_reset,
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
