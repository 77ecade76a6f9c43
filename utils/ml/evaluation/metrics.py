"""Event-level scores of a detector's alerts against labelled event windows.

Definitions (per metric type, then summed over metric types for "overall"):

* **scored rows**: the observations in the evaluated period ``[start, end)``;
  **entity-days**: distinct (entity, UTC day) pairs among them.
* **events**: labelled windows that *start* in the period.  Windows that
  start before it but reach into it are "don't care": alerts inside them and
  incidents starting inside them count neither way.
* an event is **found** when at least one alert of its entity (same metric
  type) falls inside its window, ends included; **recall** = found / events;
  **detection delay** = first such alert's time - window start (hours).
* **incident**: an entity's alerts in time order, split wherever two
  consecutive alerts are more than the entity's *incident gap* apart:
  ``max(6 h, 1.5 x the entity's median interval between observations)``
  (6 h for hourly series, 36 h for daily ones).  An incident is **true** when
  its first alert falls inside an event window of its entity, else **false**.
* **precision** = true incidents / all incidents (what an operator triages);
  alert precision = alerts inside windows / all alerts is reported too.
* **F1** = 2 P R / (P + R) with the incident precision and the event recall.
* **false alerts per entity-day** = alerts outside every window / entity-days;
  **false incidents per 100 entity-days** likewise, x 100.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable, Optional

import numpy as np

from utils.ml.evaluation.data import DAY, HOUR, Event, Series

MIN_INCIDENT_GAP = 6 * HOUR
INCIDENT_GAP_FACTOR = 1.5


def incident_gaps(series: Series) -> dict[int, float]:
    """Per entity: ``max(6 h, 1.5 x median interval between its observations)``, in seconds."""
    gaps = {}
    order = np.argsort(series.entity, kind="stable")
    ids, starts = np.unique(series.entity[order], return_index=True)
    for e, rows in zip(ids, np.split(order, starts[1:])):
        steps = np.diff(series.ts[rows])
        step = float(np.median(steps)) if steps.size else DAY
        gaps[int(e)] = max(MIN_INCIDENT_GAP, INCIDENT_GAP_FACTOR * step)
    return gaps


def incidents(entity: np.ndarray, ts: np.ndarray, score: np.ndarray,
              gaps: dict[int, float]) -> list[dict[str, Any]]:
    """Group alerts (one row each) into incidents: entity, start, end, count, peak score."""
    out = []
    order = np.lexsort((ts, entity))
    entity, ts, score = entity[order], ts[order], score[order]
    if ts.size == 0:
        return out
    cut = np.flatnonzero((np.diff(entity) != 0)
                         | (np.diff(ts) > np.array([gaps.get(int(e), MIN_INCIDENT_GAP) for e in entity[1:]])))
    for lo, hi in zip(np.r_[0, cut + 1], np.r_[cut + 1, ts.size]):
        out.append({"entity_id": int(entity[lo]), "start": float(ts[lo]), "end": float(ts[hi - 1]),
                    "count": int(hi - lo), "peak": float(np.max(score[lo:hi]))})
    return out


def _in_windows(entity: np.ndarray, ts: np.ndarray, windows: dict[int, list[Event]]) -> np.ndarray:
    inside = np.zeros(ts.size, dtype=bool)
    for i, (e, t) in enumerate(zip(entity.tolist(), ts.tolist())):
        inside[i] = any(ev.start <= t <= ev.end for ev in windows.get(e, ()))
    return inside


def _ratio(a: float, b: float) -> Optional[float]:
    return None if b == 0 else a / b


def _f1(p: Optional[float], r: Optional[float]) -> Optional[float]:
    if p is None or r is None or p + r == 0:
        return None if p is None or r is None else 0.0
    return 2 * p * r / (p + r)


def score_metric(series: Series, is_alert: np.ndarray, score: np.ndarray, events: Iterable[Event],
                 start: float, end: float) -> dict[str, Any]:
    """Counts for one metric type (see the module docstring); ``finish`` turns counts into ratios."""
    scored = (series.ts >= start) & (series.ts < end)
    alert = scored & np.asarray(is_alert, dtype=bool)
    own = [ev for ev in events if ev.metric_type == series.metric_type]
    evaluated = [ev for ev in own if start <= ev.start < end]
    ignored = [ev for ev in own if ev.start < start <= ev.end]
    by_entity: dict[int, list[Event]] = defaultdict(list)
    ignored_by_entity: dict[int, list[Event]] = defaultdict(list)
    for ev in evaluated:
        by_entity[ev.entity_id].append(ev)
    for ev in ignored:
        ignored_by_entity[ev.entity_id].append(ev)
    a_ent, a_ts, a_score = series.entity[alert], series.ts[alert], np.asarray(score, dtype=float)[alert]
    inside = _in_windows(a_ent, a_ts, by_entity)
    dont_care = _in_windows(a_ent, a_ts, ignored_by_entity) & ~inside
    groups = incidents(a_ent[~dont_care], a_ts[~dont_care], a_score[~dont_care], incident_gaps(series))
    starts_e = np.array([g["entity_id"] for g in groups], dtype=np.int64)
    starts_t = np.array([g["start"] for g in groups], dtype=float)
    true_incidents = int(_in_windows(starts_e, starts_t, by_entity).sum())
    kinds: dict[str, dict[str, Any]] = defaultdict(lambda: {"events": 0, "found": 0, "delays_h": []})
    for ev in evaluated:
        hits = a_ts[(a_ent == ev.entity_id) & (a_ts >= ev.start) & (a_ts <= ev.end)]
        entry = kinds[ev.kind]
        entry["events"] += 1
        if hits.size:
            entry["found"] += 1
            entry["delays_h"].append(float(hits.min() - ev.start) / HOUR)
    entity_days = np.unique(np.column_stack([series.entity[scored], np.floor(series.ts[scored] / DAY)]), axis=0)
    return {
        "rows": int(scored.sum()), "entity_days": int(entity_days.shape[0]),
        "alerts": int(alert.sum()), "alerts_in_windows": int(inside.sum()),
        "false_alerts": int((~inside & ~dont_care).sum()),
        "incidents": len(groups), "true_incidents": true_incidents,
        "kinds": {k: dict(v) for k, v in kinds.items()},
    }


def merge(parts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Sum the counts of several ``score_metric`` results (metric types, or seeds)."""
    total: dict[str, Any] = {"kinds": {}}
    for part in parts:
        for key, value in part.items():
            if key == "kinds":
                for kind, entry in value.items():
                    slot = total["kinds"].setdefault(kind, {"events": 0, "found": 0, "delays_h": []})
                    slot["events"] += entry["events"]
                    slot["found"] += entry["found"]
                    slot["delays_h"] += list(entry["delays_h"])
            elif isinstance(value, (int, float)):
                total[key] = total.get(key, 0) + value
    return total


def finish(counts: dict[str, Any]) -> dict[str, Any]:
    """Counts -> the reported ratios (None where a denominator is zero)."""
    kinds = counts.get("kinds", {})
    events = sum(k["events"] for k in kinds.values())
    found = sum(k["found"] for k in kinds.values())
    delays = [d for k in kinds.values() for d in k["delays_h"]]
    precision = _ratio(counts.get("true_incidents", 0), counts.get("incidents", 0))
    recall = _ratio(found, events)
    entity_days = counts.get("entity_days", 0)
    false_incidents = counts.get("incidents", 0) - counts.get("true_incidents", 0)
    return {
        **{k: v for k, v in counts.items() if k != "kinds"},
        "events": events, "found": found, "recall": recall, "precision": precision, "f1": _f1(precision, recall),
        "alert_precision": _ratio(counts.get("alerts_in_windows", 0), counts.get("alerts", 0)),
        "false_incidents": false_incidents,
        "false_alerts_per_entity_day": _ratio(counts.get("false_alerts", 0), entity_days),
        "false_incidents_per_100_entity_days": None if not entity_days else 100.0 * false_incidents / entity_days,
        "delay_h_median": float(np.median(delays)) if delays else None,
        "delay_h_mean": float(np.mean(delays)) if delays else None,
        "kinds": {
            name: {"events": k["events"], "found": k["found"], "recall": _ratio(k["found"], k["events"]),
                   "delay_h_median": float(np.median(k["delays_h"])) if k["delays_h"] else None}
            for name, k in sorted(kinds.items())
        },
    }
