"""Issue 11's targets, walk-forward on the default simulated hotel with default settings (about a minute).

The same run as ``python -m utils.ml.evaluation --seed 1`` (and ``--seed 1
--clean``): the hotel of :class:`HotelConfig` (seed 1, 90 days, anomalies at
the default rate), the detector with :class:`DetectorSettings` as shipped,
trained daily on the 60 days before each scored day.  A change that makes the
detector worse on the world the simulator describes fails here, not only in
the README's tables.  The pooled and held-out seeds are measured by hand
(README, "Detection quality"): they take minutes each.

The simple baselines are the two cheap ones (pooled Z-score, rolling robust
Z); the per-entity IsolationForest and today's model take 60-80 s more each
and score the same F1 on this seed (0.05-0.06, README).
"""
from __future__ import annotations

import pytest

from utils.ml.evaluation.baselines import DETECTORS
from utils.ml.evaluation.simulator import HotelConfig, simulate
from utils.ml.evaluation.walkforward import WalkForwardConfig, evaluate

PRECISION, RECALL, KIND_RECALL, F1_OVER_BASELINE, FALSE_INCIDENTS_PER_100 = 0.7, 0.8, 0.6, 1.3, 1.0


@pytest.fixture(scope="module")
def default_run() -> dict:
    names = ("b_zscore", "c_rolling_z", "e_new")
    return evaluate(simulate(HotelConfig(seed=1)), {n: DETECTORS[n] for n in names}, WalkForwardConfig())["detectors"]


@pytest.mark.slow
def test_precision_recall_and_every_kind_meet_the_targets(default_run):
    new = default_run["e_new"]["overall"]
    assert new["events"] >= 60  # the run scored the hotel it should have
    assert new["precision"] >= PRECISION, new
    assert new["recall"] >= RECALL, new
    weak = {k: v["recall"] for k, v in new["kinds"].items() if v["events"] and v["recall"] < KIND_RECALL}
    assert set(new["kinds"]) == {"spike", "dip", "level_shift", "contextual", "stuck", "drift"}
    assert not weak, f"kinds below recall {KIND_RECALL}: {weak}"


@pytest.mark.slow
def test_f1_beats_the_best_simple_baseline_by_the_target_factor(default_run):
    best = max(default_run[n]["overall"]["f1"] or 0.0 for n in ("b_zscore", "c_rolling_z"))
    assert best > 0  # a baseline that found nothing would make the comparison empty
    assert default_run["e_new"]["overall"]["f1"] >= F1_OVER_BASELINE * best


@pytest.mark.slow
def test_a_month_without_anomalies_raises_at_most_one_false_incident_per_100_entity_days():
    days = HotelConfig().days
    clean = simulate(HotelConfig(seed=1, anomalies=False))
    result = evaluate(clean, {"e_new": DETECTORS["e_new"]}, WalkForwardConfig(warmup_days=days - 30))
    overall = result["detectors"]["e_new"]["overall"]
    assert overall["events"] == 0 and overall["entity_days"] > 3000
    assert overall["false_incidents_per_100_entity_days"] <= FALSE_INCIDENTS_PER_100, overall
