"""``flask ml demo-data --realistic``: the evaluation simulator's hotel, inserted as observations.

The simulator (:mod:`utils.ml.evaluation.simulator`, written independently
of the detector) gives entity levels orders of magnitude apart and tiny
ranges, hour-of-day and day-of-week profiles with holidays, trends and
persistent level shifts, entities appearing mid-window, missing days, zero-
heavy counts, and labelled anomaly windows (spikes, dips, level shifts,
contextual values, stuck values, a slow drift) at 0.1-1 % of the rows.

Its time line is moved by whole weeks so the data ends before ``end``
(default now): hours of day and days of week stay what the simulator made.
Every row's ``extra_data`` carries ``{"source": "simulator", "label":
"normal"}`` or ``{"label": "anomaly", "anomaly_kind": <kind>}`` when it lies
in a labelled window of its entity (what training's evaluation reads).
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any, Optional

import numpy as np
from sqlalchemy import text

from utils.extensions import db
from utils.ml import events
from utils.ml.evaluation.data import NO_ENTITY
from utils.ml.evaluation.simulator import HotelConfig, simulate
from utils.ml.pipeline.observations import bulk_insert
from utils.time import as_utc, utcnow

WEEK = 7 * 86400.0


def _row_kinds(series: Any, dataset_events: list[Any]) -> np.ndarray:
    kinds = np.full(len(series), None, dtype=object)
    for event in dataset_events:
        if event.metric_type != series.metric_type:
            continue
        lo = int(np.searchsorted(series.ts, event.start, side="left"))
        hi = int(np.searchsorted(series.ts, event.end, side="right"))
        hit = lo + np.flatnonzero(series.entity[lo:hi] == event.entity_id)
        kinds[hit] = event.kind
    return kinds


def generate_realistic_demo(*, days: int = 90, seed: int = 1, end: Optional[datetime] = None,
                            rooms: int = HotelConfig.rooms, products: int = HotelConfig.products,
                            attendants: int = HotelConfig.attendants, meters: int = HotelConfig.meters,
                            anomaly_rate: float = HotelConfig.anomaly_rate) -> dict[str, Any]:
    """Simulate and insert (one transaction); return ``{"observations", "start", "end", "seed", "seconds",
    "events", "shift_seconds", "by_metric_type": {name: {"observations", "entities", "events", kinds...}}}``.

    ``shift_seconds`` is what was added to the simulator's times (the same
    configuration simulated again gives the labelled events: add it to them).
    """
    if not 0 < anomaly_rate <= 0.05:
        raise ValueError(f"anomaly_rate: must be in (0, 0.05] (got {anomaly_rate!r})")
    started = time.perf_counter()
    dataset = simulate(HotelConfig(rooms=rooms, products=products, attendants=attendants, meters=meters, days=days,
                                   seed=seed, anomaly_rate=anomaly_rate))
    limit = (as_utc(end) if end is not None else utcnow()).timestamp()
    shift = np.floor((limit - dataset.end) / WEEK) * WEEK
    summary: dict[str, Any] = {}
    rows = []
    for name, series in dataset.series.items():
        kinds = _row_kinds(series, dataset.events)
        mine = [e for e in dataset.events if e.metric_type == name]
        summary[name] = {"observations": len(series), "entities": int(np.unique(series.entity).size),
                         "events": len(mine)}
        for e in mine:
            summary[name][e.kind] = summary[name].get(e.kind, 0) + 1
        labels = {None: {"source": "simulator", "label": "normal"}}
        for i in range(len(series)):
            kind = kinds[i]
            if kind not in labels:
                labels[kind] = {"source": "simulator", "label": "anomaly", "anomaly_kind": kind}
            entity = int(series.entity[i])
            rows.append({"metric_type": name, "entity_id": None if entity == NO_ENTITY else entity,
                         "metric_value": float(series.value[i]),
                         "timestamp": datetime.fromtimestamp(float(series.ts[i] + shift), tz=timezone.utc),
                         "extra_data": labels[kind]})
    rows.sort(key=lambda r: r["timestamp"])  # a real feed arrives in time order
    count = bulk_insert(rows)
    if db.session.get_bind().dialect.name == "postgresql":
        db.session.execute(text("ANALYZE ml_metrics"))
        db.session.commit()
    result = {"observations": count, "start": rows[0]["timestamp"].isoformat() if rows else None,
              "end": rows[-1]["timestamp"].isoformat() if rows else None, "seed": seed,
              "seconds": round(time.perf_counter() - started, 3), "by_metric_type": summary,
              "events": len(dataset.events), "shift_seconds": float(shift)}
    events.emit("demo_data_generated", f"Generated {count} simulated observations", observations=count,
                days=days, seed=seed, realistic=True)
    return result


__all__ = ["generate_realistic_demo"]
