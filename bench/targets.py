"""The issue's targets, checked against one run's results, and the table that shows them."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional


@dataclass(frozen=True)
class Target:
    id: str
    description: str
    target: str
    measured: Optional[float]
    unit: str
    passed: Optional[bool]  # None: the section did not produce this number
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _get(results: dict[str, Any], *path: str) -> Any:
    node: Any = results
    for step in path:
        if not isinstance(node, dict) or step not in node:
            return None
        node = node[step]
    return node


def _check(id_: str, description: str, target: str, unit: str, value: Optional[float],
           rule: Callable[[float], bool], detail: str = "") -> Target:
    if value is None:
        return Target(id_, description, target, None, unit, None, detail or "not measured in this run")
    return Target(id_, description, target, round(float(value), 3), unit, bool(rule(value)), detail)


def evaluate(sections: dict[str, Any]) -> list[Target]:
    load = sections.get("load", {})
    variants = _get(load, "variants") or {}
    floor = _get(variants, "floor_read_sha256_unpickle", "median")
    cold = _get(variants, "ours_cold", "median")
    legacy = _get(variants, "legacy_blob_reused_connection", "median")
    scan = sections.get("scan", {})
    return [
        _check("cold_vs_floor", "cold verified load / floor (read+SHA-256+pickle.loads), medians",
               "<= 1.3x", "x", _get(load, "ratios", "cold_over_floor"), lambda v: v <= 1.3,
               f"cold {cold} ms, floor {floor} ms"),
        _check("cold_vs_legacy", "legacy BLOB load (reused connection) / cold verified load, medians",
               ">= 4x", "x", _get(load, "ratios", "legacy_reused_over_cold"), lambda v: v >= 4.0,
               f"legacy {legacy} ms, cold {cold} ms"),
        _check("warm_load", "warm (cached) load, median", "< 20 us", "us",
               _get(variants, "ours_warm", "median"), lambda v: v < 20.0,
               f"p99 {_get(variants, 'ours_warm', 'p99')} us"),
        _check("threads_cache_off", "10 threads loading at once, cache off", ">= 400 loads/s", "loads/s",
               _get(sections, "concurrency", "cache_off", "loads_per_second"), lambda v: v >= 400.0,
               f"p99 {_get(sections, 'concurrency', 'cache_off', 'latency', 'p99')} ms"),
        _check("scan_memory", "peak RSS of a scan over all types: legacy BLOB rows / ours", ">= 2.5x", "x",
               _get(sections, "memory", "ratios", "legacy_scan_peak_over_ours"), lambda v: v >= 2.5,
               "legacy {} MiB, ours {} MiB".format(
                   _get(sections, "memory", "variants", "legacy_scan", "peak_rss_mib"),
                   _get(sections, "memory", "variants", "ours_scan", "peak_rss_mib"))),
        _check("list_memory", "RSS added by listing the store's models (ours)", "< 5 MiB", "MiB",
               _get(sections, "memory", "variants", "ours_list", "added_mib"), lambda v: v < 5.0,
               "{} models; legacy listing adds {} MiB".format(
                   _get(sections, "memory", "variants", "ours_list", "listed"),
                   _get(sections, "memory", "variants", "legacy_list", "added_mib"))),
        # Issue 14: reading ahead on a second core should hide the reading entirely.
        _check("scan_throughput", "end-to-end scan rate / raw single-thread score_samples rate", ">= 1.0x", "x",
               _get(scan, "ratio_end_to_end_over_raw"), lambda v: v >= 1.0,
               scan.get("reason", "") if scan.get("status") != "ok" else
               f"{_get(scan, 'end_to_end', 'rows_per_second')} rows/s vs "
               f"{_get(scan, 'raw_score_samples', 'rows_per_second')} rows/s; read in turn "
               f"{_get(scan, 'end_to_end_read_in_turn', 'rows_per_second')} rows/s"),
        _check("scan_cost", "per-row scan cost, new causal detector / today's model (same rows, run_scan)",
               "<= 2x", "x", _get(scan, "cost", "service", "scan_ratio_new_over_today"), lambda v: v <= 2.0,
               "{} vs {} us/row; training {} vs {} us/row".format(
                   _get(scan, "cost", "service", "scan_us_per_row", "new"),
                   _get(scan, "cost", "service", "scan_us_per_row", "today"),
                   _get(scan, "cost", "service", "train_us_per_row", "new"),
                   _get(scan, "cost", "service", "train_us_per_row", "today"))),
    ]


def verdict(target: Target) -> str:
    return {True: "pass", False: "MISS", None: "n/a"}[target.passed]


def render_table(targets: list[Target]) -> str:
    rows = [("target", "goal", "measured", "result", "detail")]
    for t in targets:
        measured = "-" if t.measured is None else f"{t.measured:g} {t.unit}"
        rows.append((t.description, t.target, measured, verdict(t), t.detail))
    return _format(rows)


def render_loads(load: dict[str, Any]) -> str:
    rows = [("load variant", "median", "p99", "n")]
    for name, s in (load.get("variants") or {}).items():
        rows.append((name, f"{s['median']:g} {s['unit']}", f"{s['p99']:g} {s['unit']}", str(s["n"])))
    return _format(rows)


def _format(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for index, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)
