"""The gate: is the challenger at least as good as the champion on the same recent data?

Both models score the same recent observations (the last
``ML_GATE_WINDOW_DAYS`` of the challenger's window).  :func:`measure` turns
the two scoring passes into numbers, :func:`judge` into a verdict:

* **With labels** (at least ``ML_GATE_MIN_LABELLED`` labelled observations,
  one of them an anomaly; labels from ``extra_data.label`` and alerts marked
  false positive): precision, recall and F1 of both; the challenger passes
  if its F1 is at most ``ML_GATE_MAX_F1_DROP`` below the champion's.
* **Without labels**: the challenger passes if its alert rate is within a
  factor ``ML_GATE_MAX_RATE_RATIO`` of the champion's and of the target,
  the KS distance between the two score distributions is at most
  ``ML_GATE_MAX_SCORE_SHIFT``, and the Jaccard overlap of the observations
  they flag is at least ``ML_GATE_MIN_AGREEMENT``.  The target of a pooled
  (feature version 1) model is ``ML_CONTAMINATION``, the share it flags by
  construction; the causal detector's is its alert *budget*
  (``ML_FALSE_ALERTS_PER_ENTITY_DAY`` x the sample's entity-days / samples,
  given by the caller as ``budget_rate``), a ceiling on the alerts the
  champion did not raise (with labels: on the false positives beyond the
  champion's): flagging less than the budget on calm data is the
  calibration working, and alerts both raise are the data's, not the
  challenger's.  A rule whose sample is too small to say anything (fewer
  than :data:`MIN_EXPECTED` flags expected or flagged) is reported as not
  judged, not failed; the upper rate bound allows for Poisson noise
  (:func:`_rate_rule`).

No champion (the first model of a type) or a champion that cannot be
loaded: only the target rate is judged.  The numbers are all JSON-ready.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
from scipy.stats import ks_2samp

from utils.settings import current

# Fewer flags than this expected: a rate or overlap rule says nothing.
MIN_EXPECTED = 5
# Counting slack of the rate-vs-champion rule (a handful of flags either way is noise).
RATE_SLACK = 2
HISTOGRAM_BINS = 20


@dataclass(frozen=True)
class GateSettings:
    window_days: int
    min_labelled: int
    max_f1_drop: float
    max_rate_ratio: float
    max_score_shift: float
    min_agreement: float
    target_rate: float
    alert_budget: float  # the service's false alerts per entity-day (never the challenger's own setting)

    @classmethod
    def current(cls) -> "GateSettings":
        return cls(int(current("ML_GATE_WINDOW_DAYS")), int(current("ML_GATE_MIN_LABELLED")),
                   float(current("ML_GATE_MAX_F1_DROP")), float(current("ML_GATE_MAX_RATE_RATIO")),
                   float(current("ML_GATE_MAX_SCORE_SHIFT")), float(current("ML_GATE_MIN_AGREEMENT")),
                   float(current("ML_CONTAMINATION")), float(current("ML_FALSE_ALERTS_PER_ENTITY_DAY")))


def budget_rate(budget_per_entity_day: float, entity_ids: np.ndarray, epoch: np.ndarray) -> Optional[float]:
    """The causal detector's false-alert budget as a share of a sample: budget x entity-days / samples.

    An entity-day is a (entity, UTC calendar day) with at least one
    observation in the sample; rows without an entity count as one entity.
    """
    n = int(np.asarray(epoch).size)
    if n == 0:
        return None
    entities = np.nan_to_num(np.asarray(entity_ids, dtype=float), nan=-1.0)
    days = np.floor(np.asarray(epoch, dtype=float) / 86400.0)
    entity_days = np.unique(np.stack([entities, days], axis=1), axis=0).shape[0]
    return float(budget_per_entity_day) * entity_days / n


def _round(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(float(value), 6)


def classification(flags: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Precision, recall and F1 of ``flags`` over the labelled entries (labels: -1 unknown, 0, 1)."""
    known = labels >= 0
    pred, truth = flags[known].astype(bool), labels[known] == 1
    tp, fp, fn = int(np.sum(pred & truth)), int(np.sum(pred & ~truth)), int(np.sum(~pred & truth))
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None
    return {"tp": tp, "fp": fp, "fn": fn, "precision": _round(precision), "recall": _round(recall), "f1": _round(f1)}


def histogram(scores: np.ndarray, edges: np.ndarray) -> list[int]:
    counts, _ = np.histogram(np.clip(scores, edges[0], edges[-1]), bins=edges)
    return [int(c) for c in counts]


def measure(challenger_scores: np.ndarray, challenger_flags: np.ndarray, labels: np.ndarray,
            champion_scores: Optional[np.ndarray] = None, champion_flags: Optional[np.ndarray] = None,
            budget_rate: Optional[float] = None) -> dict[str, Any]:
    """The gate's numbers for one recent sample (arrays aligned by observation).

    ``budget_rate``: the causal detector's alert budget as a share of the
    sample (see the module docstring); None judges against ``ML_CONTAMINATION``.
    """
    n = int(challenger_flags.size)
    labelled = int(np.sum(labels >= 0))
    out: dict[str, Any] = {"samples": n, "labelled": labelled, "labelled_anomalies": int(np.sum(labels == 1)),
                           "alert_budget_rate": _round(budget_rate),
                           "challenger": {"alerts": int(challenger_flags.sum()),
                                          "alert_rate": _round(challenger_flags.mean()) if n else None}}
    if labelled:
        out["challenger"].update(classification(challenger_flags, labels))
    together = challenger_scores if champion_scores is None else np.concatenate([challenger_scores, champion_scores])
    edges = np.linspace(float(together.min()), float(together.max()) + 1e-9, HISTOGRAM_BINS + 1) if n else None
    if edges is not None:
        out["histogram_edges"] = [_round(e) for e in edges]
        out["challenger"]["histogram"] = histogram(challenger_scores, edges)
    if champion_flags is None or champion_scores is None:
        return out
    out["champion"] = {"alerts": int(champion_flags.sum()), "alert_rate": _round(champion_flags.mean()) if n else None}
    if labelled:
        out["champion"].update(classification(champion_flags, labels))
    if edges is not None:
        out["champion"]["histogram"] = histogram(champion_scores, edges)
    both, either = int(np.sum(challenger_flags & champion_flags)), int(np.sum(challenger_flags | champion_flags))
    out["flagged_both"], out["flagged_either"] = both, either
    out["agreement"] = _round(both / either) if either else 1.0
    out["score_shift_ks"] = _round(ks_2samp(challenger_scores, champion_scores).statistic) if n else 0.0
    return out


def _rate_rule(name: str, rate: float, reference: float, ratio: float, n: int, problems: list[str],
               notes: list[str], upper_only: bool = False) -> None:
    """Flags within ``ratio`` of ``reference * n``, in counts.

    Above: allowed up to ``ratio * expected`` plus two Poisson standard
    deviations and :data:`RATE_SLACK`, so a handful of flags on a small
    sample is never a failure while a model flagging a third of everything
    always is.  Below (not with ``upper_only``): only judged when at least
    :data:`MIN_EXPECTED` flags are expected (zero flags are plausible otherwise).
    """
    flags, expected = rate * n, reference * n
    high = ratio * expected + 2 * math.sqrt(ratio * expected) + RATE_SLACK
    if flags > high:
        problems.append(f"alert rate {rate:.4f} above {high / n:.4f} ({name} {reference:.4f}, factor {ratio:g})")
    if upper_only:
        return
    if expected < MIN_EXPECTED:
        notes.append(f"{name}: too low not judged ({expected:.1f} alerts expected in {n} observations)")
    elif flags < expected / ratio - RATE_SLACK:
        problems.append(f"alert rate {rate:.4f} below {(expected / ratio - RATE_SLACK) / n:.4f} "
                        f"({name} {reference:.4f}, factor {ratio:g})")


def _budget_rule(extra: int, budget_rate: float, ratio: float, n: int, problems: list[str],
                 notes: list[str]) -> None:
    """The causal detector's ceiling: alerts beyond the champion's within ``ratio`` x the false-alert budget.

    The same Poisson allowance as :func:`_rate_rule`; judged once
    :data:`MIN_EXPECTED` such alerts are expected *or* raised: 30 where 0.1
    were expected is a flood however small the sample.
    """
    expected = budget_rate * n
    if expected < MIN_EXPECTED and extra < MIN_EXPECTED:
        notes.append(f"alert budget not judged: {expected:.1f} false alerts expected, {extra} raised "
                     f"beyond the champion's in {n} observations")
        return
    high = ratio * expected + 2 * math.sqrt(ratio * expected) + RATE_SLACK
    if extra > high:
        problems.append(f"alert rate {extra / n:.4f} above {high / n:.4f} (alerts beyond the champion's vs "
                        f"alert budget {budget_rate:.4f}, factor {ratio:g})")


def judge(numbers: dict[str, Any], cfg: GateSettings) -> tuple[bool, str, list[str]]:
    """``(passed, method, reasons)``: method ``labels`` or ``rates``; reasons say what failed or was not judged."""
    problems: list[str] = []
    notes: list[str] = []
    n = numbers["samples"]
    challenger, champion = numbers["challenger"], numbers.get("champion")
    if n == 0:
        return False, "none", ["no recent observations to judge on"]
    use_labels = (champion is not None and numbers["labelled"] >= cfg.min_labelled
                  and numbers["labelled_anomalies"] > 0)
    rate = challenger["alert_rate"]
    budget = numbers.get("alert_budget_rate")
    target = cfg.target_rate if budget is None else budget
    if use_labels:
        f1, best = challenger.get("f1") or 0.0, champion.get("f1") or 0.0
        if f1 < best - cfg.max_f1_drop:
            problems.append(f"F1 {f1:.3f} is more than {cfg.max_f1_drop:g} below the champion's {best:.3f}")
        # A few dozen labelled anomalies leave F1 noisy: a model that flags far more than the
        # target can tie on F1 by recall alone, and would still drown the operators in alerts.
        if budget is None:
            _rate_rule("vs target ML_CONTAMINATION", rate, cfg.target_rate, cfg.max_rate_ratio, n, problems, notes,
                       upper_only=True)
        else:
            _budget_rule(max(challenger["fp"] - champion["fp"], 0), budget, cfg.max_rate_ratio, n, problems, notes)
        return not problems, "labels", problems + notes + [f"F1 {f1:.3f} vs champion {best:.3f}, "
                                                           f"alert rate {rate:.4f}"]
    if budget is None:
        _rate_rule("vs target ML_CONTAMINATION", rate, target, cfg.max_rate_ratio, n, problems, notes)
    else:
        extra = challenger["alerts"] - (numbers["flagged_both"] if champion is not None else 0)
        _budget_rule(extra, budget, cfg.max_rate_ratio, n, problems, notes)
    if champion is not None:
        _rate_rule("vs champion", rate, champion["alert_rate"], cfg.max_rate_ratio, n, problems, notes)
        if numbers["score_shift_ks"] > cfg.max_score_shift:
            problems.append(f"score distribution shifted: KS {numbers['score_shift_ks']:.3f} > {cfg.max_score_shift:g}")
        if numbers["flagged_either"] < MIN_EXPECTED:
            notes.append(f"agreement not judged: {numbers['flagged_either']} flagged observations")
        elif numbers["agreement"] < cfg.min_agreement:
            problems.append(f"agreement {numbers['agreement']:.3f} on flagged observations < {cfg.min_agreement:g}")
    summary = f"alert rate {rate:.4f} ({'target' if budget is None else 'budget'} {target:g}"
    if champion is not None:
        summary += f", champion {champion['alert_rate']:.4f}; KS {numbers['score_shift_ks']:.3f}, " \
                   f"agreement {numbers['agreement']:.3f}"
    return not problems, "rates", problems + notes + [summary + ")"]
