"""Section 4: the end-to-end scan against the raw scoring rate of the same models, and its per-row cost.

The data is the demo hotel (``utils.ml.pipeline.demo_data``), scaled so the three
minibar metric types add up to the requested number of observations over 60
days; the models are trained by the real trainer with its defaults; the scan
is ``utils.ml.pipeline.scan.run_scan`` — what ``flask ml scan`` runs: read from
PostgreSQL in batches, compute features, score, write alerts, move the
watermarks.  "Raw" is the same active models' ``score_samples`` over the same
observations already in memory (the feature step of the pipeline included,
nothing else): the ceiling a scan could reach.  ``cost`` (:mod:`bench.cost`)
puts the per-row cost of training and scanning with the new detector beside
today's model, on the same rows.
"""
from __future__ import annotations

import importlib
import time
from typing import Any, Optional

DAYS = 60
# Observations per entity per day in the demo generator (utils/ml/pipeline/demo_data.py).
_PER_DAY = {"products": 2.0, "rooms": 0.85, "attendants": 10.0}


def demo_sizes(observations: int, days: int = DAYS) -> dict[str, int]:
    """Products, rooms and attendants giving about ``observations`` rows, a third per metric type."""
    third = observations / 3.0
    return {name: max(1, round(third / (per_day * days))) for name, per_day in _PER_DAY.items()}


def _missing() -> Optional[str]:
    for module, name in (("utils.ml.pipeline.scan", "run_scan"), ("utils.ml.pipeline.demo_data", "generate_demo_data")):
        try:
            if not hasattr(importlib.import_module(module), name):
                return f"{module}.{name} does not exist yet"
        except ImportError as exc:
            return f"{module} cannot be imported: {exc}"
    return None


def _score_in_batches(model: Any, codes: Any, stamps: Any, values: Any, batch_size: int) -> None:
    """What a scan's scoring does, without the database: batch by batch, each against its entities' history.

    The history is carried in memory from batch to batch as the scan carries
    it (:class:`~utils.ml.pipeline.history.HistoryCache`); a scan from the
    first id has no history before its first batch.
    """
    from utils.ml.pipeline.history import HistoryCache

    cache = HistoryCache(None, "raw")
    cache.assume_empty(codes)
    for lo in range(0, len(values), batch_size):
        e, t, v = codes[lo:lo + batch_size], stamps[lo:lo + batch_size], values[lo:lo + batch_size]
        model.score(e, t, v, history=cache.for_batch(e, upto_id=0))
        cache.advance(e, t, v)


def raw_rate(metric_types: list[str], rows_per_type: Optional[int] = None,
             batch_size: Optional[int] = None) -> dict[str, Any]:
    """Each active model's scoring of its observations already in memory, one thread, timed alone.

    The observations are read first (the first ``rows_per_type`` by id, or
    all), outside the timing.  The causal detector (feature version 2) scores
    them as a scan does, in batches of ``batch_size`` (default
    ``ML_SCAN_BATCH_SIZE``) with each entity's earlier rows as history
    (history, features, forest, thresholds): the scan's own scoring work on
    one thread, the ceiling of a scan that does not overlap anything.  (Timed
    as one call over all the rows instead, it was 2-3x slower per row: the
    48-wide history matrices of 500,000 rows do not fit any cache.)  An older
    pipeline is timed on ``score_samples``.
    """
    import numpy as np

    from utils.extensions import db
    from utils.ml.model_manager import get_model_manager
    from utils.ml.pipeline.batch import read_page
    from utils.ml.pipeline.features import MODEL_TYPE, model_input, observation_matrix
    from utils.ml.pipeline.history import entity_codes
    from utils.ml.pipeline.scoring import is_causal_model

    from utils.settings import current

    batch_size = int(batch_size or current("ML_SCAN_BATCH_SIZE"))
    manager = get_model_manager()
    rows_total, seconds_total, per_type = 0, 0.0, {}
    connection = db.session.connection()
    for metric_type in metric_types:
        pages, after, wanted = [], 0, rows_per_type or 2**62
        while wanted > 0:
            page = read_page(connection.connection.dbapi_connection, connection.dialect.name, metric_type,
                             after, 2**62, min(wanted, 200_000))
            if page.last_read_id is None:
                break
            pages.append(page)
            wanted -= len(page)
            after = page.last_read_id
        entities = np.concatenate([p.entity_ids for p in pages]) if pages else np.empty(0)
        values = np.concatenate([p.values for p in pages]) if pages else np.empty(0)
        stamps = np.concatenate([p.timestamps for p in pages]) if pages else np.empty(0)
        del pages
        model = manager.load_model_from_file(MODEL_TYPE, metric_type)
        if model is None:
            raise RuntimeError(f"no active model for {metric_type} after training")
        if is_causal_model(model):
            codes = entity_codes(entities)
            started = time.perf_counter()
            _score_in_batches(model, codes, stamps, values, batch_size)
        else:
            matrix = model_input(model, observation_matrix(entities, values))
            started = time.perf_counter()
            model.score_samples(matrix)
        elapsed = time.perf_counter() - started
        per_type[metric_type] = {"rows": len(values), "seconds": round(elapsed, 3)}
        rows_total += len(values)
        seconds_total += elapsed
    db.session.rollback()
    return {"rows": rows_total, "seconds": round(seconds_total, 3), "batch_size": batch_size,
            "rows_per_second": round(rows_total / seconds_total), "by_metric_type": per_type}


def rescan(read_ahead: int) -> dict[str, Any]:
    """Forget every alert and watermark, scan everything again with ``ML_SCAN_READ_AHEAD`` = ``read_ahead``."""
    from flask import current_app
    from sqlalchemy import text

    from utils.extensions import db
    from utils.ml.pipeline.scan import run_scan

    db.session.execute(text("DELETE FROM ml_alerts"))
    db.session.execute(text("DELETE FROM ml_scan_watermarks"))
    db.session.commit()
    saved = current_app.config.get("ML_SCAN_READ_AHEAD")
    current_app.config["ML_SCAN_READ_AHEAD"] = read_ahead
    try:
        started = time.perf_counter()
        summary = run_scan()
        seconds = time.perf_counter() - started
    finally:
        current_app.config["ML_SCAN_READ_AHEAD"] = saved
    if summary.get("errors"):
        raise RuntimeError(f"scan reported errors: {summary}")
    return {"read_ahead": read_ahead, "rows": summary["scanned"], "alerts": summary["alerts"],
            "seconds": round(seconds, 3), "rows_per_second": round(summary["scanned"] / seconds)}


def run(env: Any, sizes: Any) -> dict[str, Any]:
    problem = _missing()
    if problem:
        return {"status": "not_run", "reason": problem}
    from utils.ml.pipeline.demo_data import generate_demo_data
    from utils.ml.model_trainer import ModelTrainer
    from utils.ml.pipeline.scan import run_scan
    from utils.extensions import db

    hotel = demo_sizes(sizes.scan_observations)
    started = time.perf_counter()
    demo = generate_demo_data(days=DAYS, **hotel)
    demo_seconds = time.perf_counter() - started

    started = time.perf_counter()
    trained = ModelTrainer(db, window_days=DAYS + 1).train()
    train_seconds = time.perf_counter() - started
    failed = [t for t in trained if t.get("status") != "trained"]
    if failed:
        raise RuntimeError(f"training failed: {failed}")

    started = time.perf_counter()
    summary = run_scan()
    scan_seconds = time.perf_counter() - started
    if summary.get("errors"):
        raise RuntimeError(f"scan reported errors: {summary}")
    methods = {name: s.get("method") for name, s in summary["metric_types"].items()}

    # The same scan again reading each batch in its own transaction, for the overlap's effect.
    in_turn = rescan(read_ahead=0)
    raw = raw_rate(sorted(summary["metric_types"]))
    from bench import cost

    per_row = cost.compare({"rows": sum(t["samples"] for t in trained), "seconds": train_seconds},
                           {"rows": summary["scanned"], "seconds": scan_seconds, "alerts": summary["alerts"],
                            "metric_types": summary["metric_types"]},
                           window_days=DAYS + 1, simulator_days=42 if sizes.scan_observations < 100_000 else 90)
    end_to_end = {
        "read_ahead": int(env.app.config.get("ML_SCAN_READ_AHEAD", 2)),
        "rows": summary["scanned"],
        "alerts": summary["alerts"],
        "seconds": round(scan_seconds, 3),
        "rows_per_second": round(summary["scanned"] / scan_seconds),
        "methods": methods,
        "by_metric_type": {name: {k: s.get(k) for k in ("scanned", "alerts", "batches", "seconds", "load_ms")}
                           for name, s in summary["metric_types"].items()},
    }
    return {
        "status": "ok",
        "observations": demo["observations"],
        "hotel": {**hotel, "days": DAYS},
        "models": {t["metric_type"]: {"model_id": t["model_id"], "samples": t["samples"]} for t in trained},
        "n_estimators": int(env.app.config.get("ML_N_ESTIMATORS", 200)),
        "batch_size": int(env.app.config.get("ML_SCAN_BATCH_SIZE", 20000)),
        "setup_seconds": {"demo_data": round(demo_seconds, 1), "training": round(train_seconds, 1)},
        "end_to_end": end_to_end,
        "end_to_end_read_in_turn": in_turn,
        "raw_score_samples": raw,
        "ratio_end_to_end_over_raw": round(end_to_end["rows_per_second"] / raw["rows_per_second"], 3),
        "ratio_read_in_turn_over_raw": round(in_turn["rows_per_second"] / raw["rows_per_second"], 3),
        "cost": per_row,
    }
