"""What happens to a freshly saved challenger: promoted, rejected, kept or held, and recorded.

:func:`decide` is called by the trainer after it saved a new version
(inactive).  The mode comes from ``flask ml train --promote`` / the API's
``promote`` field (the scheduler uses ``auto``):

* ``auto`` — the first model of a type is promoted; otherwise the gate
  (:mod:`.gate`) decides;
* ``always`` — promoted whatever the gate says (its numbers are still recorded);
* ``never`` — kept as a challenger, never activated.

A pin (:mod:`.pins`) holds the type: no mode activates anything then
(decision ``held``).  Activation goes through the one activation function
(:meth:`ModelManager.activate_model` -> ``registry.activate_version``), which
writes the ``ml_model_activations`` row; the decision itself, with its
numbers, goes to ``ml_gate_decisions`` in the same transaction as its
``gate_decision`` notification.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Optional

import numpy as np

from utils.extensions import db
from utils.ml import events
from utils.ml.pipeline.scoring import Scores, is_causal_model
from utils.ml.promotion.gate import GateSettings, judge, measure
from utils.ml.promotion.models import HELD, KEPT, PROMOTED, REASON_MAX, REJECTED, GateDecision
from utils.ml.promotion.pins import get_pin
from utils.ml.store.base import ModelManagerError
from utils.ml.store.legacy import INCOMPATIBLE

logger = logging.getLogger(__name__)

MODES = ("auto", "never", "always")


def check_mode(mode: Any) -> str:
    from utils.ml.validation import InvalidInput

    if mode not in MODES:
        raise InvalidInput("promote", f"must be one of {', '.join(MODES)} (got {mode!r})")
    return mode


def _champion(manager: Any, model_type: str, metric_type: str,
              challenger_id: int) -> tuple[Optional[int], Any, str, Optional[str]]:
    """``(champion id, loaded model or None, why not loaded, reason code)``; (None, None, ...) when the type has none."""
    from utils.ml.store import queries

    # Asked first: loading a type that has no active version would log a model_fallback warning.
    if queries.active_meta(db.session, model_type, metric_type) is None:
        return None, None, "no active version", None
    outcome = manager.load_active(model_type, metric_type)
    if outcome.model_id is None or outcome.model_id == challenger_id:
        return None, None, outcome.reason or "no active version", outcome.reason
    return outcome.model_id, outcome.model, outcome.detail or outcome.reason or "", outcome.reason


def decide(manager: Any, *, model_type: str, metric_type: str, challenger_id: int, challenger: Any,
           score: Callable[[Any], Scores], labels: np.ndarray, mode: str, actor: str,
           fingerprint: Optional[str] = None, budget_rate: Optional[float] = None) -> dict[str, Any]:
    """Judge challenger ``challenger_id`` on the recent sample, act, record.

    ``score(model)`` scores the recent sample with a model (the same rows
    and history for both; see :func:`utils.ml.pipeline.scoring.score_window`);
    ``labels`` are that sample's labels; ``budget_rate`` the causal
    detector's false-alert budget as a share of the sample
    (:func:`utils.ml.promotion.gate.budget_rate`; None: a pooled model's
    ``ML_CONTAMINATION`` target).

    Returns ``decision``, ``reason``, ``champion_id``, ``method`` and ``metrics``.
    The challenger stays a kept version whatever the decision.
    """
    cfg = GateSettings.current()
    session = db.session
    champion_id, champion, load_problem, load_reason = _champion(manager, model_type, metric_type, challenger_id)
    db.session.rollback()  # end the read; the scoring below may take a while
    mine = score(challenger)
    theirs = None
    other_kind = champion is not None and is_causal_model(champion) != is_causal_model(challenger)
    if champion is not None and not other_kind:
        theirs = score(champion)
    numbers = measure(mine.score, mine.is_anomaly, labels,
                      theirs.score if theirs else None, theirs.is_anomaly if theirs else None, budget_rate)
    passed, method, notes = judge(numbers, cfg)
    numbers.update(method=method, passed=passed, window_days=cfg.window_days,
                   thresholds={"max_f1_drop": cfg.max_f1_drop, "max_rate_ratio": cfg.max_rate_ratio,
                               "max_score_shift": cfg.max_score_shift, "min_agreement": cfg.min_agreement,
                               "min_labelled": cfg.min_labelled, "target_rate": cfg.target_rate,
                               "alert_budget": cfg.alert_budget})
    if champion_id is not None and champion is None:
        notes.insert(0, f"champion {champion_id} could not be loaded ({load_problem}): judged against the target only")
    elif other_kind:
        # Scores of another kind of model (a legacy or v1 forest against the causal detector) are on
        # another scale: a KS or agreement between them says nothing about which is better.
        notes.insert(0, f"champion {champion_id} is another kind of model, its scores are not comparable: "
                        "judged against the target only")
    verdict = f"gate {'passed' if passed else 'failed'} ({method}): {'; '.join(notes)}"
    pin = get_pin(session, model_type, metric_type)
    if pin is not None:
        decision = HELD
        reason = f"pinned to model {pin.model_id} by {pin.actor} ({pin.reason or 'no reason'}); {verdict}"
    elif mode == "never":
        decision, reason = KEPT, f"--promote never; {verdict}"
    elif champion_id is None and mode == "auto":
        decision, reason = PROMOTED, f"first model of its type; {verdict}"
    elif load_reason == INCOMPATIBLE and mode == "auto":
        # A legacy model (the minibar app's aggregate features) detection never uses: nothing to defend.
        decision, reason = PROMOTED, f"champion {champion_id} takes an input this service cannot compute; {verdict}"
    elif mode == "always":
        decision, reason = PROMOTED, f"--promote always; {verdict}"
    elif passed:
        decision, reason = PROMOTED, verdict
    else:
        decision, reason = REJECTED, verdict
    session.rollback()
    if decision == PROMOTED:
        # The one activation path: verified, serialised, audited in ml_model_activations.
        try:
            manager.activate_model(challenger_id, actor=actor, reason=f"gate: {reason}"[:200])
        except ModelManagerError as exc:  # its file failed verification: the champion stays, and we say why
            session.rollback()
            decision, reason = REJECTED, f"activation refused: {exc}; {reason}"
    reason = reason[:REASON_MAX]
    session.add(GateDecision(model_type=model_type, metric_type=metric_type, challenger_id=challenger_id,
                             champion_id=champion_id, mode=mode, decision=decision, reason=reason, metrics=numbers,
                             fingerprint=fingerprint, actor=actor))
    if decision in (PROMOTED, REJECTED, HELD):
        _notify(model_type, metric_type, challenger_id, champion_id, decision, reason, numbers)
    session.commit()
    events.emit("gate_decision", f"challenger {challenger_id} of {model_type}/{metric_type} {decision}: {reason}",
                model_type=model_type, metric_type=metric_type, challenger_id=challenger_id,
                champion_id=champion_id, decision=decision, method=method, mode=mode)
    return {"decision": decision, "reason": reason, "champion_id": champion_id, "method": method,
            "metrics": numbers}


def _notify(model_type: str, metric_type: str, challenger_id: int, champion_id: Optional[int], decision: str,
            reason: str, numbers: dict[str, Any]) -> None:
    """The gate_decision notification, in the decision's transaction; a bad payload never stops training."""
    from utils.ml.notify.producers import notify_gate_decision

    summary = {k: numbers.get(k) for k in ("samples", "labelled", "method", "agreement", "score_shift_ks")}
    for side in ("challenger", "champion"):
        if side in numbers:
            summary[side] = {k: v for k, v in numbers[side].items() if k != "histogram"}
    payload = {"model_type": model_type, "metric_type": metric_type, "challenger_id": challenger_id,
               "champion_id": champion_id, "reason": reason, "metrics": summary}
    try:
        notify_gate_decision(model_type, metric_type, challenger_id, decision, payload, session=db.session)
    except Exception as exc:  # noqa: BLE001 - recorded in the log; the decision itself stands
        logger.warning("gate_decision notification not recorded: %s", exc)
