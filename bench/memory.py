"""Section 2: peak RSS of a scan and of a listing, legacy BLOB rows against ours, each in a fresh process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.env import ROOT
from bench.fixtures import STORE_MODEL_TYPE, save_with_blob, store_metric_types, train_model
from bench.memory_worker import VARIANTS


def prepare(env: Any, sizes: Any) -> dict[str, Any]:
    """``store_models`` versions over ``store_metric_types`` types, each with a file and a BLOB."""
    from utils.extensions import db
    from utils.ml.model_manager import ModelManager

    manager = ModelManager(db, models_dir=str(env.models_dir))
    metric_types = store_metric_types(sizes.store_metric_types)
    models = {m: train_model(sizes.train_rows, sizes.trees, seed=10 + i) for i, m in enumerate(metric_types)}
    stored = []
    for version in range(sizes.store_models):
        metric_type = metric_types[version % len(metric_types)]
        stored.append(save_with_blob(manager, models[metric_type], STORE_MODEL_TYPE, metric_type))
    return {
        "models": len(stored),
        "metric_types": len(metric_types),
        "blob_bytes_total": sum(s.size_bytes for s in stored),
    }


def _measure(env: Any, sizes: Any, variant: str) -> dict[str, Any]:
    completed = subprocess.run(
        [sys.executable, "-m", "bench.memory_worker", variant, env.url, str(env.models_dir),
         STORE_MODEL_TYPE, str(sizes.memory_score_rows)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"memory worker {variant} failed: {completed.stderr.strip()[-2000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def run(env: Any, sizes: Any, prepared: dict[str, Any]) -> dict[str, Any]:
    # One process per variant, as many at once as there are cores: a
    # process's resident set does not depend on what runs beside it.
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        futures = {variant: pool.submit(_measure, env, sizes, variant) for variant in VARIANTS}
        results = {variant: future.result() for variant, future in futures.items()}
    return {
        "store": {**prepared, "blob_mib_total": round(prepared["blob_bytes_total"] / 2 ** 20, 1)},
        "score_rows_per_metric_type": sizes.memory_score_rows,
        "variants": results,
        "ratios": {
            "legacy_scan_peak_over_ours": round(results["legacy_scan"]["peak_rss_mib"]
                                                / results["ours_scan"]["peak_rss_mib"], 3),
            "legacy_active_rows_peak_over_ours": round(results["legacy_scan_active_rows"]["peak_rss_mib"]
                                                       / results["ours_scan"]["peak_rss_mib"], 3),
        },
    }
