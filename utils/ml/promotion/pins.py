"""Pins: a manual activation or rollback holds its version until someone unpins it.

While a (model_type, metric_type) has a pin, training still trains and
keeps its challengers, but the gate never activates one (decision ``held``).
Pinning and unpinning are recorded in ``ml_gate_decisions`` with who and why.
Every function commits its own transaction.
"""
from __future__ import annotations

from typing import Any, Optional

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from utils.ml import events
from utils.ml.promotion.models import PINNED, UNPINNED, GateDecision, ModelPin
from utils.ml.store.base import ModelNotFoundError, ModelValidationError
from utils.models import MLModel
from utils.time import as_utc


def describe(pin: ModelPin) -> dict[str, Any]:
    return {"model_type": pin.model_type, "metric_type": pin.metric_type, "model_id": pin.model_id,
            "actor": pin.actor, "reason": pin.reason, "pinned_at": as_utc(pin.pinned_at)}


def get_pin(session: Session, model_type: str, metric_type: str) -> Optional[ModelPin]:
    return session.get(ModelPin, (model_type, metric_type))


def list_pins(session: Session) -> list[dict[str, Any]]:
    """Every pin, by type."""
    rows = session.execute(select(ModelPin).order_by(ModelPin.model_type, ModelPin.metric_type)).scalars()
    return [describe(pin) for pin in rows]


def _check_actor(actor: str, reason: Optional[str]) -> None:
    if not isinstance(actor, str) or not 1 <= len(actor.strip()) <= 100:
        raise ModelValidationError("actor", f"must be a non-empty string of at most 100 characters (got {actor!r})")
    if reason is not None and (not isinstance(reason, str) or len(reason) > 200):
        raise ModelValidationError("reason", "must be a string of at most 200 characters or null")


def pin(session: Session, model_id: int, actor: str, reason: Optional[str]) -> dict[str, Any]:
    """Pin version ``model_id`` of its type (replacing any pin of that type); committed.

    Raises ModelNotFoundError for an unknown version.
    """
    _check_actor(actor, reason)
    row = session.execute(select(MLModel.model_type, MLModel.metric_type).where(MLModel.id == model_id)).first()
    if row is None:
        raise ModelNotFoundError(model_id)
    model_type, metric_type = row
    for attempt in range(2):
        try:
            current = get_pin(session, model_type, metric_type)
            if current is None:
                current = ModelPin(model_type=model_type, metric_type=metric_type, model_id=model_id, actor=actor,
                                   reason=reason)
                session.add(current)
            else:
                current.model_id, current.actor, current.reason = model_id, actor, reason
            session.add(GateDecision(model_type=model_type, metric_type=metric_type, challenger_id=model_id,
                                     champion_id=None, mode="manual", decision=PINNED,
                                     reason=f"pinned by {actor}: {reason or 'no reason given'}", metrics={},
                                     actor=actor))
            session.commit()
            break
        except IntegrityError:  # another process pinned the same type at the same moment: take its row
            session.rollback()
            if attempt:
                raise
    events.emit("model_pinned", f"{model_type}/{metric_type} pinned to model {model_id} by {actor}",
                model_type=model_type, metric_type=metric_type, model_id=model_id, actor=actor, reason=reason)
    return describe(current)


def unpin(session: Session, model_type: str, metric_type: str, actor: str, reason: Optional[str] = None) -> bool:
    """Remove the pin of a type; committed.  False when it had none (nothing recorded then)."""
    _check_actor(actor, reason)
    gone = session.execute(
        delete(ModelPin).where(ModelPin.model_type == model_type, ModelPin.metric_type == metric_type)
        .returning(ModelPin.model_id)
    ).scalars().all()
    if not gone:
        session.rollback()
        return False
    session.add(GateDecision(model_type=model_type, metric_type=metric_type, challenger_id=gone[0], champion_id=None,
                             mode="manual", decision=UNPINNED,
                             reason=f"unpinned by {actor}: {reason or 'no reason given'}", metrics={}, actor=actor))
    session.commit()
    events.emit("model_unpinned", f"{model_type}/{metric_type} unpinned by {actor}", model_type=model_type,
                metric_type=metric_type, model_id=gone[0], actor=actor, reason=reason)
    return True
