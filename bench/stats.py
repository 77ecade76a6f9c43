"""Timing helpers: nanosecond samples in, medians and tail percentiles out."""
from __future__ import annotations

import math
import statistics
import time
from typing import Any, Callable, Sequence


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by the nearest-rank method (no interpolation)."""
    if not samples:
        raise ValueError("percentile of no samples")
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summarize_ns(samples_ns: Sequence[int], unit: str = "ms") -> dict[str, Any]:
    """Median, p99, mean, min and max of nanosecond samples, in ``unit`` (ms or us)."""
    scale = {"ms": 1e6, "us": 1e3}[unit]
    values = [s / scale for s in samples_ns]
    digits = 4 if unit == "ms" else 2
    return {
        "unit": unit,
        "n": len(values),
        "median": round(statistics.median(values), digits),
        "p99": round(percentile(values, 99), digits),
        "mean": round(statistics.fmean(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


def time_interleaved(variants: dict[str, Callable[[], Any]], repetitions: int,
                     before: dict[str, Callable[[], Any]] | None = None,
                     warmup: int = 3) -> dict[str, list[int]]:
    """Time each variant ``repetitions`` times, round-robin, returning ns samples.

    Interleaving (A B C A B C ...) instead of running each variant in a block
    spreads any drift of a shared machine (another process waking up, a CPU
    frequency change) over every variant alike, so their ratios stay fair.
    ``before[name]`` runs untimed ahead of each timed call (to clear a cache).
    """
    before = before or {}
    samples: dict[str, list[int]] = {name: [] for name in variants}
    for rep in range(warmup + repetitions):
        for name, fn in variants.items():
            prepare = before.get(name)
            if prepare is not None:
                prepare()
            started = time.perf_counter_ns()
            fn()
            elapsed = time.perf_counter_ns() - started
            if rep >= warmup:
                samples[name].append(elapsed)
    return samples
