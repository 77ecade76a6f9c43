"""Per-row cost of training and scanning: today's model (feature version 1) beside the new detector.

Measured in the service's own path, on the scan section's data and database:
the new detector is what the scan section just trained and scanned with;
"today" is the pooled pipeline the service trained before feature version 2
(``build_pipeline``, 200 trees, the same 80/20 held-out evaluation, fitted on
the same window and saved through the same store), then the same
``run_scan`` over the same rows after the scan state is reset.  A second,
in-memory measurement on the evaluation simulator's largest metric type
(:func:`utils.ml.evaluation.cost.measure`) is reported beside it.
"""
from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

TODAY_TREES = 200  # ML_N_ESTIMATORS before feature version 2


def _train_today(metric_types: list[str], window_days: int) -> dict[str, Any]:
    import numpy as np

    from utils.extensions import db
    from utils.ml.model_manager import get_model_manager
    from utils.ml.model_trainer import HOLDOUT_FRACTION, ModelTrainer
    from utils.ml.pipeline.features import MODEL_TYPE, build_pipeline, observation_matrix
    from utils.time import utcnow

    trainer = ModelTrainer(db, window_days=window_days)
    now = utcnow()
    rows, started = 0, time.perf_counter()
    for metric_type in metric_types:
        data = trainer.load(metric_type, now - timedelta(days=window_days), now)
        db.session.rollback()
        matrix = observation_matrix(data.entity_ids, data.values)
        split = int(len(data) * (1 - HOLDOUT_FRACTION))
        held_out = build_pipeline(n_estimators=TODAY_TREES).fit(matrix[:split])
        np.asarray(held_out.predict(matrix[split:]))
        model = build_pipeline(n_estimators=TODAY_TREES).fit(matrix)
        get_model_manager().save_model(model, MODEL_TYPE, metric_type, parameters={"feature_version": 1},
                                       actor="bench")
        rows += len(data)
    return {"rows": rows, "seconds": round(time.perf_counter() - started, 3)}


def _reset_scan_state() -> None:
    from utils.extensions import db
    from utils.ml.incidents.models import MLIncident
    from utils.ml.model_manager import get_model_manager
    from utils.models import MLAlert, ScanWatermark

    db.session.execute(MLAlert.__table__.delete())
    db.session.execute(MLIncident.__table__.delete())
    db.session.execute(ScanWatermark.__table__.update().values(last_observation_id=0))
    db.session.commit()
    get_model_manager().clear_cache()


def compare(new_train: dict[str, Any], new_scan: dict[str, Any], window_days: int, simulator_days: int) -> dict:
    """Today's path measured now; ``new_*``: ``{"rows", "seconds"}`` the scan section measured for the new one."""
    from utils.ml.evaluation.cost import measure
    from utils.ml.evaluation.simulator import HotelConfig, simulate
    from utils.ml.pipeline.scan import run_scan

    metric_types = sorted(new_scan["metric_types"])
    today_train = _train_today(metric_types, window_days)
    _reset_scan_state()
    started = time.perf_counter()
    summary = run_scan()
    today_scan = {"rows": summary["scanned"], "seconds": round(time.perf_counter() - started, 3),
                  "alerts": summary["alerts"]}

    def us(part: dict[str, Any]) -> float:
        return round(1e6 * part["seconds"] / max(part["rows"], 1), 2)

    service = {
        "train_us_per_row": {"today": us(today_train), "new": us(new_train)},
        "scan_us_per_row": {"today": us(today_scan), "new": us(new_scan)},
        "alerts": {"today": today_scan["alerts"], "new": new_scan["alerts"]},
        "today_trees": TODAY_TREES,
    }
    service["scan_ratio_new_over_today"] = round(service["scan_us_per_row"]["new"] /
                                                 max(service["scan_us_per_row"]["today"], 1e-9), 3)
    service["train_ratio_new_over_today"] = round(service["train_us_per_row"]["new"] /
                                                  max(service["train_us_per_row"]["today"], 1e-9), 3)
    small = simulator_days < 90  # --quick: a small hotel, so the smoke run stays short
    dataset = simulate(HotelConfig(days=simulator_days, seed=1, **({"rooms": 20, "products": 10, "attendants": 4,
                                                                     "meters": 4} if small else {})))
    largest = max(dataset.series.values(), key=len)
    in_memory = measure(largest, split_day=max(simulator_days - 30, 14), batch=2_000 if small else 20_000,
                        repeat=1 if small else 3)
    return {"service": service, "simulator_in_memory": in_memory}
