"""The gate's rate rules for the causal detector, on numbers where the answer is known.

The causal detector's target is its false-alert budget, a ceiling on the
alerts the champion did not raise: a flood is rejected even in a small
sample, alerts both versions raise (the data's anomalies) and a quiet
challenger are not held against it.  A pooled model (no budget) is still
judged against ``ML_CONTAMINATION``, the share it flags by construction.
"""
from __future__ import annotations

import numpy as np

from utils.ml.promotion.gate import GateSettings, budget_rate, judge, measure

CFG = GateSettings(window_days=7, min_labelled=20, max_f1_drop=0.05, max_rate_ratio=2.0, max_score_shift=0.3,
                   min_agreement=0.5, target_rate=0.02, alert_budget=0.002)
UNLABELLED = -1


def _numbers(n: int, mine: list[int], theirs: list[int], budget: float | None) -> dict:
    scores = np.linspace(0.0, 1.0, n)  # the same scores on both sides: no distribution shift
    flags_mine, flags_theirs = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    flags_mine[mine], flags_theirs[theirs] = True, True
    return measure(scores, flags_mine, np.full(n, UNLABELLED), scores, flags_theirs, budget)


def test_budget_rate_counts_entity_days():
    day = 86400.0
    entities = np.array([1, 1, 1, 2, 2, np.nan, np.nan])
    epoch = np.array([0, 3600, day, 0, 2 * day, 0, 10])  # entity 1: 2 days, entity 2: 2 days, none: 1 day
    assert budget_rate(0.01, entities, epoch) == 0.01 * 5 / 7
    assert budget_rate(0.01, np.array([]), np.array([])) is None


def test_a_flood_beyond_the_budget_is_rejected_even_in_a_small_sample():
    n = 169  # 5 entities over a week: 0.07 false alerts expected
    budget = budget_rate(0.002, np.arange(n) % 5, np.arange(n) * 3600.0)
    passed, method, reasons = judge(_numbers(n, list(range(0, 150, 5)), [], budget), CFG)
    assert (passed, method) == (False, "rates")
    assert any("alert rate" in r and "above" in r and "alert budget" in r for r in reasons), reasons


def test_alerts_both_versions_raise_are_the_datas_not_the_challengers():
    n = 169
    budget = budget_rate(0.002, np.arange(n) % 5, np.arange(n) * 3600.0)
    incident = list(range(40, 50))  # ten rows both versions flag
    passed, _method, reasons = judge(_numbers(n, incident, incident, budget), CFG)
    assert passed, reasons
    # One extra alert in such a sample says nothing either way.
    passed, _method, reasons = judge(_numbers(n, incident + [100], incident, budget), CFG)
    assert passed and any("alert budget not judged" in r for r in reasons), reasons


def test_a_quiet_causal_challenger_passes_but_a_quiet_pooled_model_does_not():
    n = 5000  # many entity-days: 10 false alerts budgeted, 100 flags expected of a pooled model
    entities, epoch = np.arange(n) % 700, np.arange(n) * 120.0
    budget = budget_rate(0.002, entities, epoch)
    assert budget * n >= 5
    passed, _method, reasons = judge(_numbers(n, [], [], budget), CFG)
    assert passed, reasons
    passed, _method, reasons = judge(_numbers(n, [], [], None), CFG)
    assert not passed and any("ML_CONTAMINATION" in r and "below" in r for r in reasons), reasons
