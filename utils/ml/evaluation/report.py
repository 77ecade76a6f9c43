"""Plain-text comparison tables of walk-forward results (what the command line prints)."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

KIND_ORDER = ("spike", "dip", "level_shift", "contextual", "stuck", "drift")


def _f(value: Optional[float], digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def overall_table(results: dict[str, Any]) -> str:
    """One line per detector: P, R, F1, alert precision, false alerts/incidents, delay."""
    head = (f"{'detector':<18} {'P':>5} {'R':>5} {'F1':>5} {'alertP':>6} {'events':>7} {'incid.':>6} "
            f"{'FA/ent-day':>10} {'FI/100ed':>8} {'delay_h':>7}")
    lines = [head, "-" * len(head)]
    for name, res in results.items():
        o = res["overall"]
        lines.append(
            f"{name:<18} {_f(o['precision']):>5} {_f(o['recall']):>5} {_f(o['f1']):>5} {_f(o['alert_precision']):>6} "
            f"{o['found']:>3}/{o['events']:<3} {o['incidents']:>6} {_f(o['false_alerts_per_entity_day'], 4):>10} "
            f"{_f(o['false_incidents_per_100_entity_days']):>8} {_f(o['delay_h_median'], 1):>7}")
    return "\n".join(lines)


def kind_table(results: dict[str, Any]) -> str:
    """Recall per anomaly kind (found/events) for each detector."""
    kinds = [k for k in KIND_ORDER if any(k in r["overall"]["kinds"] for r in results.values())]
    head = f"{'detector':<18} " + " ".join(f"{k:>13}" for k in kinds)
    lines = [head, "-" * len(head)]
    for name, res in results.items():
        cells = []
        for k in kinds:
            entry = res["overall"]["kinds"].get(k)
            cells.append("-" if entry is None else f"{_f(entry['recall'])} {entry['found']}/{entry['events']}")
        lines.append(f"{name:<18} " + " ".join(f"{c:>13}" for c in cells))
    return "\n".join(lines)


def metric_table(results: dict[str, Any]) -> str:
    """P / R / F1 / false incidents per 100 entity-days per metric type and detector."""
    metrics = sorted({m for r in results.values() for m in r["metric_types"]})
    head = f"{'detector':<18} " + " ".join(f"{m:>22}" for m in metrics)
    lines = [head, f"{'':<18} " + " ".join(f"{'P/R/F1 FI100':>22}" for _ in metrics), "-" * len(head)]
    for name, res in results.items():
        cells = []
        for m in metrics:
            o = res["metric_types"].get(m)
            cells.append("-" if o is None else
                         f"{_f(o['precision'])}/{_f(o['recall'])}/{_f(o['f1'])} {_f(o['false_incidents_per_100_entity_days'])}")
        lines.append(f"{name:<18} " + " ".join(f"{c:>22}" for c in cells))
    return "\n".join(lines)


def spread_table(runs: list[dict[str, Any]]) -> str:
    """Mean and standard deviation over runs (seeds) of P, R, F1, false incidents and each kind's recall.

    One run's numbers rest on a few dozen events; the spread says how far a
    difference between detectors or settings can be trusted.
    """
    names = list(dict.fromkeys(n for run in runs for n in run["detectors"]))
    kinds = [k for k in KIND_ORDER if any(k in run["detectors"][n]["overall"]["kinds"]
                                          for run in runs for n in run["detectors"])]
    cols = ["P", "R", "F1", "FI/100ed"] + list(kinds)
    head = f"{'detector':<18} " + " ".join(f"{c[:11]:>11}" for c in cols)
    lines = [head, "-" * len(head)]
    for name in names:
        rows = [run["detectors"][name]["overall"] for run in runs if name in run["detectors"]]
        cells = []
        for col in cols:
            key = {"P": "precision", "R": "recall", "F1": "f1", "FI/100ed": "false_incidents_per_100_entity_days"}
            values = [o[key[col]] if col in key else (o["kinds"].get(col) or {}).get("recall") for o in rows]
            values = [x for x in values if x is not None]
            cells.append("-" if not values else f"{np.mean(values):.2f}+-{np.std(values):.2f}")
        lines.append(f"{name:<18} " + " ".join(f"{c:>11}" for c in cells))
    best = max((n for n in names if n != "e_new"), default=None,
               key=lambda n: np.mean([run["detectors"][n]["overall"]["f1"] or 0.0 for run in runs if n in run["detectors"]]))
    if best is not None and "e_new" in names:
        ratios = [(run["detectors"]["e_new"]["overall"]["f1"] or 0.0) / max(run["detectors"][best]["overall"]["f1"] or 0.0, 1e-9)
                  for run in runs if best in run["detectors"] and "e_new" in run["detectors"]]
        lines.append(f"e_new F1 / best baseline ({best}) F1 per run: mean {np.mean(ratios):.2f}, min {np.min(ratios):.2f}")
    return "\n".join(lines)


def full_report(title: str, results: dict[str, Any]) -> str:
    return "\n\n".join([f"== {title}", overall_table(results), "recall per kind", kind_table(results),
                        "per metric type", metric_table(results)])
