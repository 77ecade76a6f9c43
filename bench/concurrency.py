"""Section 3: the seed's "10 threads load at once", with the model cache off and on."""
from __future__ import annotations

import threading
import time
from typing import Any

from bench.fixtures import LOAD_MODEL_TYPE
from bench.load import PLAIN
from bench.stats import summarize_ns


def _hammer(app: Any, manager: Any, threads: int, loads_per_thread: int) -> dict[str, Any]:
    """``threads`` threads, each with its own app context (so its own DB session), start together."""
    barrier = threading.Barrier(threads + 1)
    latencies: list[list[int]] = [[] for _ in range(threads)]
    failures: list[str] = []

    def worker(index: int) -> None:
        try:
            with app.app_context():
                from utils.extensions import db

                # One untimed load opens this thread's pooled connection.
                manager.load_model_from_file(LOAD_MODEL_TYPE, PLAIN)
                barrier.wait()
                mine = latencies[index]
                for _ in range(loads_per_thread):
                    started = time.perf_counter_ns()
                    model = manager.load_model_from_file(LOAD_MODEL_TYPE, PLAIN)
                    mine.append(time.perf_counter_ns() - started)
                    if model is None:
                        failures.append("load returned None")
                db.session.remove()
        except Exception as exc:  # reported, and the run fails below
            failures.append(repr(exc))
            barrier.abort()

    pool = [threading.Thread(target=worker, args=(i,), name=f"bench-load-{i}") for i in range(threads)]
    for thread in pool:
        thread.start()
    barrier.wait()
    started, cpu_started = time.perf_counter(), time.process_time()
    for thread in pool:
        thread.join()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    if failures:
        raise RuntimeError(f"concurrent loads failed: {failures[:3]}")
    flat = [ns for per_thread in latencies for ns in per_thread]
    return {
        "threads": threads,
        "loads": len(flat),
        "seconds": round(elapsed, 3),
        "loads_per_second": round(len(flat) / elapsed, 1),
        # CPU this process got, per load and in cores: on a shared machine a
        # low figure says the process waited for CPU, not for the loader.
        "cpu_ms_per_load": round(cpu * 1000 / len(flat), 3),
        "cores_used": round(cpu / elapsed, 2),
        "latency": summarize_ns(flat, unit="ms"),
    }


def run(env: Any, sizes: Any) -> dict[str, Any]:
    from utils.extensions import db
    from utils.ml.model_manager import ModelManager

    results: dict[str, Any] = {}
    for label, cache_size, per_thread in (("cache_off", 0, sizes.loads_per_thread),
                                          ("cache_on", 32, sizes.loads_per_thread * 20)):
        manager = ModelManager(db, models_dir=str(env.models_dir), cache_size=cache_size)
        results[label] = _hammer(env.app, manager, sizes.threads, per_thread)
        results[label]["cache_size"] = cache_size
    return results
