"""Models of the promotion routes: activating a version (promotion or rollback), its audit trail, pins."""
from __future__ import annotations

from datetime import datetime
from typing import Optional

from pydantic import Field

from utils.web.api.base import Actor, BodyModel, Reason, ResponseModel
from utils.web.api.schemas.models import Activation


class ActivationList(ResponseModel):
    activations: list[Activation]
    count: int


class ActivateRequest(BodyModel):
    """Optional body of an activation (promotion or rollback)."""

    reason: Optional[Reason] = Field(default=None, description="why, for the audit trail")
    actor: Optional[Actor] = Field(default=None, description="who, for the audit trail (recorded as api:<actor>)")


class ActivationResult(ResponseModel):
    model_id: int
    model_type: str
    metric_type: str
    from_model_id: Optional[int]
    actor: str
    reason: Optional[str]
    changed: bool = Field(description="false when the model was already the active version (nothing audited)")
    pinned: Optional["Pin"] = Field(default=None, description="the pin this manual activation set: training stops "
                                                              "changing the type until it is removed")


class Pin(ResponseModel):
    model_type: str
    metric_type: str
    model_id: int
    actor: str
    reason: Optional[str]
    pinned_at: datetime


ActivationResult.model_rebuild()  # resolves the forward reference to Pin, declared after it
