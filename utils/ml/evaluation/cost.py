"""Per-row cost of training and scanning: today's model path and the new detector, side by side.

One run, same data (the simulated hotel's largest metric type), same
process: both are fitted on the 60-day window before ``--split-day`` and
score the rows after it in scan batches of ``batch`` rows (the service's
``ML_SCAN_BATCH_SIZE``).  Today's path is timed through the service's own
``score_with_model`` when the service package imports (it needs Flask), else
through the identical call sequence (``-score_samples`` against ``-offset_``
plus the entity reference) and says so.  The new detector's batch also gets
each entity's last ``causal.HISTORY`` rows before the batch, as a scan would
read them; reading them from the database is not timed here.
"""
from __future__ import annotations

import pickle
import time
from typing import Any, Callable

import numpy as np

from utils.ml.detector import causal
from utils.ml.detector import model as new_detector
from utils.ml.evaluation.baselines import TodayModel
from utils.ml.evaluation.data import DAY, Series


def _today_scorer() -> tuple[Callable[[Any, np.ndarray], Any], str]:
    try:
        from utils.ml.anomaly_detector import score_with_model  # the service's own code path

        return score_with_model, "utils.ml.anomaly_detector.score_with_model"
    except Exception:  # the service package moved or Flask is absent: the same three calls
        def replica(model: Any, matrix: np.ndarray) -> Any:
            score = -model.score_samples(matrix)
            flags = score > -model.steps[-1][1].offset_
            return flags, model.steps[0][1].reference(matrix)[0]

        return replica, "replica of score_with_model (service package not importable)"


def _best(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def measure(series: Series, split_day: float = 60.0, batch: int = 20_000, repeat: int = 3) -> dict[str, Any]:
    """Timings in microseconds per row, artefact sizes and load times (see the module docstring)."""
    t0 = np.floor(series.ts[0] / DAY) * DAY
    split = series.index_at(t0 + split_day * DAY)
    lo = series.index_at(t0 + (split_day - 60) * DAY)
    window = series.slice(lo, split)
    scored = min(len(series) - split, 5 * batch)
    if scored < batch:
        raise ValueError(f"split_day: leaves {scored} rows to score, fewer than one batch of {batch}")
    score_today, today_name = _today_scorer()

    today = TodayModel(series.metric_type)
    fit_today = _best(lambda: today.fit(window, 0.0), 1)
    fit_new_start = time.perf_counter()
    model = new_detector.train(window.entity, window.ts, window.value)
    fit_new = time.perf_counter() - fit_new_start
    assert model is not None

    batches = [(s, min(s + batch, split + scored)) for s in range(split, split + scored, batch)]
    matrices = [TodayModel.matrix(series.slice(a, b)) for a, b in batches]
    inputs = []
    for a, b in batches:
        past = new_detector.recent_history(series.entity[:a], series.ts[:a])
        inputs.append(((series.entity[a:b], series.ts[a:b], series.value[a:b]),
                       (series.entity[past], series.ts[past], series.value[past])))

    def run_today() -> None:
        for m in matrices:
            score_today(today.model, m)

    def run_new() -> None:
        for rows, history in inputs:
            model.score(*rows, history=history)

    def run_features() -> None:
        for rows, history in inputs:
            e, t, v, targets = new_detector._combine(*rows, history)
            causal.compute(model.stats, e, t, v, targets)

    today_s, new_s, feat_s = _best(run_today, repeat), _best(run_new, repeat), _best(run_features, repeat)
    today_blob = pickle.dumps(today.model, protocol=pickle.HIGHEST_PROTOCOL)
    new_blob = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
    return {
        "metric_type": series.metric_type, "train_rows": len(window), "scored_rows": scored, "batch": batch,
        "history_rows_per_batch": int(np.mean([len(h[0]) for _r, h in inputs])),
        "today_scorer": today_name,
        "scan_us_per_row": {"today": 1e6 * today_s / scored, "new": 1e6 * new_s / scored,
                            "new_features_only": 1e6 * feat_s / scored},
        "scan_ratio_new_over_today": new_s / today_s,
        "train_us_per_row": {"today": 1e6 * fit_today / len(window), "new": 1e6 * fit_new / len(window)},
        "artefact_bytes": {"today": len(today_blob), "new": len(new_blob)},
        "new_state": model.size(),
        "load_ms": {"today": 1e3 * _best(lambda: pickle.loads(today_blob), repeat),
                    "new": 1e3 * _best(lambda: pickle.loads(new_blob), repeat)},
    }


def format_cost(result: dict[str, Any]) -> str:
    scan, train = result["scan_us_per_row"], result["train_us_per_row"]
    return "\n".join([
        f"cost on {result['metric_type']}: {result['train_rows']} training rows, {result['scored_rows']} scored "
        f"in batches of {result['batch']} (+{result['history_rows_per_batch']} history rows each)",
        f"  scan  us/row: today {scan['today']:.2f}  new {scan['new']:.2f} (features {scan['new_features_only']:.2f})"
        f"  ratio {result['scan_ratio_new_over_today']:.2f}   [{result['today_scorer']}]",
        f"  train us/row: today {train['today']:.2f}  new {train['new']:.2f}",
        f"  artefact: today {result['artefact_bytes']['today']} B, new {result['artefact_bytes']['new']} B "
        f"({result['new_state']['bytes_per_entity']} B per entity + forest {result['new_state']['forest_bytes']} B)",
        f"  load ms: today {result['load_ms']['today']:.1f}  new {result['load_ms']['new']:.1f}",
    ])
