"""Labelled anomalies, anomalous by the simulator's own truth (never by a detector).

Kinds, each a window ``(metric_type, entity_id, kind, start, end)`` of one entity:

* ``spike`` / ``dip`` — 1-3 consecutive observations whose value has an upper
  (lower) tail probability ``p`` under the row's true distribution, ``p``
  log-uniform in [1e-12, 1e-5] (4.3-7 sigma for a normal).  A dip needs a
  lower tail that reaches that far (never for an empty room's 0);
* ``contextual`` — 1-4 observations each replaced by a draw from the same
  entity's distribution at another time within +-3.5 days (a normal value
  at the wrong time of day or week), kept only if it is that improbable
  (two-sided tail <= 1e-5) at its own time;
* ``stuck`` — the entity repeats its previous value for 8-48 hourly, 8-30
  irregular or 5-10 daily observations; only where the entity's values
  normally change (fewer than 20 % of consecutive pairs equal);
* ``level_shift`` — from its onset on, the entity's mean is multiplied by
  ``1 +- k * cv`` (k in [5, 10], cv its coefficient of variation; factor at
  most 8) and stays so: the new normal.  **Only the onset window is
  labelled**: from the first shifted observation to 24 h later, or to the
  third shifted observation if that is later.  Observations after the window
  are shifted but normal;
* ``drift`` — one entity per metric type drifts linearly to ``1 +- k * cv``
  (k in [6, 10]) over 4-7 days (hourly), 10-18 days (daily) or 3-5 days
  (irregular), then is repaired at once.  The window is the drift plus 24 h
  after its last drifted observation (the repair jump belongs to it).

Rates: point kinds and level shifts are added until ``anomaly_rate`` of the
metric's rows lie inside windows; the drift is added first if that keeps the
total within ``max_labelled_rate``.  Every event needs three days of its
entity's normal history before it and keeps two days clear of any other
event of the same entity.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from utils.ml.evaluation.data import DAY, HOUR, Event
from utils.ml.evaluation.truth import Truth, coefficient_of_variation, draw, quantile, round_values, \
    tail_probability

P_RANGE = (1e-12, 1e-5)
P_MAX = 1e-5
MARGIN = 2 * DAY
HISTORY = 3 * DAY
KINDS = ("spike", "dip", "level_shift", "contextual", "stuck", "drift")


class _Entity:
    def __init__(self, rows: np.ndarray, ts: np.ndarray, values: np.ndarray) -> None:
        self.rows = rows
        gaps = np.diff(ts[rows])
        step = float(np.median(gaps)) if gaps.size else DAY
        self.cadence = "hourly" if step <= 2 * HOUR else "daily" if step >= 12 * HOUR else "irregular"
        v = values[rows]
        self.repeat_rate = float(np.mean(v[1:] == v[:-1])) if v.size > 1 else 1.0
        self.busy: list[tuple[float, float]] = []

    def free(self, start: float, end: float) -> bool:
        return all(end + MARGIN < lo or start - MARGIN > hi for lo, hi in self.busy)


class _Injector:
    def __init__(self, gen: Any, rng: np.random.Generator) -> None:
        self.gen, self.rng = gen, rng
        self.truth: Truth = gen.truth
        self.original = gen.value.copy()
        self.changed = np.zeros(gen.value.size, dtype=bool)
        order = np.argsort(gen.entity, kind="stable")
        ids, starts = np.unique(gen.entity[order], return_index=True)
        self.entities = {int(e): _Entity(rows, gen.ts, gen.value) for e, rows in zip(ids, np.split(order, starts[1:]))}
        self.events: list[Event] = []
        self.room = 0  # rows that may still be labelled (set by ``inject``)

    def _fits(self, ent: _Entity, start: float, end: float) -> bool:
        ts = self.gen.ts[ent.rows]
        return int(np.sum((ts >= start) & (ts <= end))) <= self.room

    # ------------------------------------------------------------ helpers
    def _p(self, n: int) -> np.ndarray:
        return np.exp(self.rng.uniform(np.log(P_RANGE[0]), np.log(P_RANGE[1]), n))

    def _cv(self, ent: _Entity) -> float:
        rows = ent.rows[self.truth.mu[ent.rows] > 0]
        return float(np.median(coefficient_of_variation(self.truth.take(rows)))) if rows.size else np.inf

    def _pick(self, length: int) -> tuple[int, _Entity, int] | None:
        """A random entity and start position with ``length`` rows, history before and no other event near."""
        e = int(self.rng.choice(list(self.entities)))
        ent = self.entities[e]
        ts = self.gen.ts[ent.rows]
        first = int(np.searchsorted(ts, ts[0] + HISTORY)) + 1
        if ent.rows.size - length <= first:
            return None
        pos = int(self.rng.integers(first, ent.rows.size - length))
        return (e, ent, pos) if ent.free(ts[pos], ts[pos + length - 1]) else None

    def _record(self, e: int, ent: _Entity, kind: str, start: float, end: float) -> int:
        ent.busy.append((start, end))
        self.events.append(Event(self.gen.metric_type, e, kind, float(start), float(end)))
        ts = self.gen.ts[ent.rows]
        count = int(np.sum((ts >= start) & (ts <= end)))
        self.room -= count
        return count

    def _set(self, rows: np.ndarray, values: np.ndarray) -> None:
        self.gen.value[rows] = values
        self.changed[rows] = True

    # -------------------------------------------------------------- kinds
    def point(self, kind: str) -> int:
        length = int(self.rng.integers(1, 4 if kind != "contextual" else 5))
        picked = self._pick(length)
        if picked is None:
            return 0
        e, ent, pos = picked
        rows = ent.rows[pos:pos + length]
        truth = self.truth.take(rows)
        if not self._fits(ent, self.gen.ts[rows[0]], self.gen.ts[rows[-1]]) or np.any(truth.mu <= 0):  # an empty room: its context (occupancy) is hidden from any detector
            return 0
        if kind in ("spike", "dip"):
            upper = kind == "spike"
            raw = quantile(truth, 1 - self._p(length) if upper else self._p(length))
            scale = 10.0 ** truth.decimals
            values = np.ceil(raw * scale) / scale if upper else np.maximum(np.floor(raw * scale) / scale, 0.0)
            if np.any(tail_probability(truth, values, upper) > P_MAX):
                return 0
        else:
            values = self._contextual(ent, pos, length)
            if values is None:
                return 0
        self._set(rows, values)
        ts = self.gen.ts[rows]
        return self._record(e, ent, kind, ts[0], ts[-1])

    def _contextual(self, ent: _Entity, pos: int, length: int) -> np.ndarray | None:
        ts = self.gen.ts[ent.rows]
        out = []
        for p in range(pos, pos + length):
            near = np.flatnonzero((np.abs(ts - ts[p]) <= 3.5 * DAY) & (np.abs(ts - ts[p]) >= 3 * HOUR))
            if near.size == 0:
                return None
            own = self.truth.take(ent.rows[[p]])
            for j in self.rng.choice(near, size=min(40, near.size), replace=False):
                value = draw(self.truth.take(ent.rows[[j]]), self.rng)
                tail = min(tail_probability(own, value, True)[0], tail_probability(own, value, False)[0])
                if tail <= P_MAX:
                    out.append(value[0])
                    break
            else:
                return None
        return np.asarray(out)

    def stuck(self) -> int:
        picked = self._pick(1)
        if picked is None:
            return 0
        e, ent, pos = picked
        if ent.repeat_rate >= 0.2:
            return 0
        low, high = {"hourly": (8, 48), "irregular": (8, 30), "daily": (5, 10)}[ent.cadence]
        length = int(self.rng.integers(low, high + 1))
        if pos + length > ent.rows.size:
            return 0
        span = self.gen.ts[ent.rows[[pos, pos + length - 1]]]
        if not ent.free(span[0], span[1]) or not self._fits(ent, span[0], span[1]):
            return 0
        rows = ent.rows[pos:pos + length]
        self._set(rows, np.full(length, self.gen.value[ent.rows[pos - 1]]))
        return self._record(e, ent, "stuck", self.gen.ts[rows[0]], self.gen.ts[rows[-1]])

    def _factor(self, ent: _Entity, k_range: tuple[float, float]) -> float | None:
        cv, k = self._cv(ent), self.rng.uniform(*k_range)
        down = self.rng.random() < 0.5 and 1 - k * cv >= 0.15
        factor = 1 - k * cv if down else 1 + k * cv
        return factor if factor <= 8 else None

    def level_shift(self) -> int:
        picked = self._pick(3)
        if picked is None:
            return 0
        e, ent, pos = picked
        factor = self._factor(ent, (5.0, 10.0))
        ts = self.gen.ts[ent.rows]
        end = max(ts[pos] + DAY, ts[pos + 2])
        # Nothing else of this entity may come after the onset: the shift redraws every later row.
        if factor is None or not ent.free(ts[pos], ts[-1]) or not self._fits(ent, ts[pos], end):
            return 0
        rows = ent.rows[pos:]
        self.truth.mu[rows] *= factor
        self._set(rows, draw(self.truth.take(rows), self.rng))
        ent.busy.append((ts[pos], ts[-1] - MARGIN - 1))  # nothing else shifts this entity afterwards
        return self._record(e, ent, "level_shift", ts[pos], end)

    def drift(self) -> int:
        for _ in range(50):
            picked = self._pick(2)
            if picked is None:
                continue
            e, ent, pos = picked
            days = {"hourly": (4, 7), "daily": (10, 18), "irregular": (3, 5)}[ent.cadence]
            ts = self.gen.ts[ent.rows]
            stop = int(np.searchsorted(ts, ts[pos] + self.rng.uniform(*days) * DAY))
            end = ts[stop - 1] + DAY
            labelled = int(np.sum((ts >= ts[pos]) & (ts <= end)))
            factor = self._factor(ent, (6.0, 10.0))
            if stop >= ts.size or labelled > self.room or factor is None or not ent.free(ts[pos], end):
                continue
            rows = ent.rows[pos:stop]
            progress = (ts[pos:stop] - ts[pos]) / max(ts[stop - 1] - ts[pos], 1.0)
            truth = self.truth.take(rows)
            truth.mu = truth.mu * (1 + (factor - 1) * progress)
            self._set(rows, draw(truth, self.rng))
            return self._record(e, ent, "drift", ts[pos], end)
        return 0


def inject(gen: Any, cfg: Any, rng: np.random.Generator) -> tuple[list[Event], np.ndarray, dict[str, Any]]:
    """Inject anomalies into ``gen`` (a ``simulator.Generated``, values changed in place).

    Returns the events, the mask of changed rows (level shifts change every
    row after their onset) and a summary (labelled rows and rate, events per kind).
    """
    inj = _Injector(gen, rng)
    n = gen.value.size
    target, cap = int(round(cfg.anomaly_rate * n)), int(cfg.max_labelled_rate * n)
    inj.room = cap - target
    labelled = inj.drift()
    inj.room = cap - labelled
    budget_target = labelled + target
    shifts_budget = labelled + target // 5
    for _ in range(400):
        if labelled >= shifts_budget:
            break
        labelled += inj.level_shift()
    kinds = ["spike", "dip", "contextual", "stuck"]
    misses = 0
    while labelled < budget_target and misses < 2000:
        gained = 0
        for kind in inj.rng.permutation(kinds):
            if labelled >= budget_target:
                break
            got = inj.stuck() if kind == "stuck" else inj.point(str(kind))
            labelled += got
            gained += got
        misses = 0 if gained else misses + 1
    gen.value[:] = round_values(gen.value, gen.truth.decimals)
    counts = {k: sum(1 for ev in inj.events if ev.kind == k) for k in KINDS}
    return inj.events, inj.changed | (gen.value != inj.original), {
        "labelled_rows": labelled, "labelled_rate": round(labelled / max(n, 1), 5), "events": counts,
    }
