"""Walk-forward evaluation: train on the past window only, score the next day, retrain daily.

As in production (``ML_TRAIN_WINDOW_DAYS`` = 60, ``ML_MIN_TRAIN_SAMPLES`` =
50, a daily ``train_models``, hourly scans of new observations): for every
UTC day ``D`` from ``warmup_days`` after the first observation to the last,
and every metric type,

1. on the retrain cadence (every ``retrain_days``, default 1) each detector
   is fitted on the rows of ``[D - window_days, D)`` — if there are at least
   ``min_samples``; otherwise it keeps what it had (the service keeps the
   active model);
2. the rows of ``[D, D + 1 day)`` are scored with the rows before them as
   history.  Scoring a day at once equals hourly scans for every detector
   here: none of them changes state while scanning (the pooled Z-score's
   reference is the window at ``D``, the service's is re-read at each scan,
   a difference of at most one day in 60).

The alerts are then judged by :mod:`utils.ml.evaluation.metrics` over
``[first scored day, last day + 1)``.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable

import numpy as np

from utils.ml.evaluation.data import DAY, Dataset
from utils.ml.evaluation.metrics import finish, merge, score_metric


@dataclass(frozen=True)
class WalkForwardConfig:
    window_days: float = 60.0
    min_samples: int = 50
    retrain_days: int = 1
    warmup_days: int = 28


def period(dataset: Dataset, cfg: WalkForwardConfig) -> tuple[float, float]:
    """The evaluated period [start, end): whole UTC days after the warm-up."""
    first_day = np.floor(dataset.start / DAY) * DAY
    end = np.floor(dataset.end / DAY) * DAY + DAY
    start = first_day + cfg.warmup_days * DAY
    if start >= end:
        raise ValueError(f"warmup_days: {cfg.warmup_days} leaves no day to evaluate in this data")
    return float(start), float(end)


def run_detector(dataset: Dataset, factory: Callable[[str], Any], cfg: WalkForwardConfig) -> dict[str, Any]:
    """Walk one detector forward over every metric type; return its counts, scores and timings."""
    start, end = period(dataset, cfg)
    days = np.arange(start, end, DAY)
    per_metric: dict[str, Any] = {}
    timing = {"fit_s": 0.0, "score_s": 0.0, "scored_rows": 0, "fits": 0}
    for name, series in dataset.series.items():
        det = factory(name)
        flags, scores = np.zeros(len(series), dtype=bool), np.zeros(len(series))
        for k, now in enumerate(days):
            hi = series.index_at(now)
            if k % cfg.retrain_days == 0:
                lo = series.index_at(now - cfg.window_days * DAY)
                if hi - lo >= cfg.min_samples:
                    began = time.perf_counter()
                    det.fit(series.slice(lo, hi), float(now))
                    timing["fit_s"] += time.perf_counter() - began
                    timing["fits"] += 1
            stop = series.index_at(now + DAY)
            if stop > hi:
                began = time.perf_counter()
                f, s = det.score(series.slice(0, stop), hi)
                timing["score_s"] += time.perf_counter() - began
                timing["scored_rows"] += stop - hi
                flags[hi:stop], scores[hi:stop] = f, s
        per_metric[name] = score_metric(series, flags, scores, dataset.events, start, end)
    timing["us_per_scored_row"] = 1e6 * timing["score_s"] / max(timing["scored_rows"], 1)
    return {"counts": per_metric, "timing": timing}


def summarise(counts: dict[str, Any]) -> dict[str, Any]:
    """Per-metric counts -> ``{"overall": ..., "metric_types": {...}}`` ratios."""
    return {"overall": finish(merge(counts.values())),
            "metric_types": {name: finish(c) for name, c in counts.items()}}


def evaluate(dataset: Dataset, factories: dict[str, Callable[[str], Any]],
             cfg: WalkForwardConfig = WalkForwardConfig(), log: Callable[[str], None] = lambda _m: None
             ) -> dict[str, Any]:
    """Every detector of ``factories`` on ``dataset``: ``{"config", "period", "detectors": {name: ...}}``."""
    start, end = period(dataset, cfg)
    out: dict[str, Any] = {"config": asdict(cfg), "period": {"start": start, "end": end, "days": (end - start) / DAY},
                           "detectors": {}}
    for name, factory in factories.items():
        began = time.perf_counter()
        result = run_detector(dataset, factory, cfg)
        result.update(summarise(result["counts"]))
        result["timing"]["seconds"] = round(time.perf_counter() - began, 2)
        out["detectors"][name] = result
        log(f"{name}: {result['timing']['seconds']} s")
    return out


def combine(runs: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Pool several runs (seeds): counts summed per detector and metric type, then ratios."""
    pooled: dict[str, dict[str, list]] = {}
    for run in runs:
        for name, result in run["detectors"].items():
            for metric, counts in result["counts"].items():
                pooled.setdefault(name, {}).setdefault(metric, []).append(counts)
    return {name: summarise({m: merge(parts) for m, parts in metrics.items()}) for name, metrics in pooled.items()}
