"""Promotion routes: champion vs challenger, pins, gate decisions, drift reports and the drift check.

Thin over :mod:`utils.ml.promotion`; the request and response models of
this resource are declared here, next to their routes.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Callable, Optional

from pydantic import Field
from sqlalchemy import select

from utils.extensions import db
from utils.ml.model_manager import get_model_manager
from utils.ml.pipeline.features import MODEL_TYPE
from utils.ml.promotion import compare as comparison
from utils.ml.promotion import pins
from utils.ml.promotion.models import DriftReport, GateDecision
from utils.ml.store.base import ModelNotFoundError
from utils.time import as_utc
from utils.web.api import schemas as s
from utils.web.api.base import BodyModel, MetricType, ModelType, QueryModel, ResponseModel
from utils.web.api.framework import ApiError, actor_of, operation

MAX_DAYS = 90
MAX_LIMIT = 500


class CompareQuery(QueryModel):
    metric_type: MetricType
    model_type: ModelType = MODEL_TYPE
    challenger_id: Optional[int] = Field(default=None, ge=1, le=2**31 - 1,
                                         description="default: the newest kept version that is not active")
    days: Optional[int] = Field(default=None, ge=1, le=MAX_DAYS, description="default: ML_GATE_WINDOW_DAYS")


class Comparison(ResponseModel):
    model_type: str
    metric_type: str
    days: int
    since: datetime
    champion_id: Optional[int]
    challenger_id: Optional[int]
    observations: int
    pin: Optional[s.Pin]
    last_decision: Optional[dict[str, Any]] = Field(description="the gate's recorded decision on the challenger")
    alerts: dict[str, Any] = Field(description="alerts each version raised over the period, and per observation")
    incidents: Optional[dict[str, Any]] = Field(description="incidents of the metric type (null: no ml_incidents)")
    gate: Optional[dict[str, Any]] = Field(description="both versions scored on the period: rates, P/R/F1 with "
                                                       "labels, overlap, KS score shift, histograms")
    problem: Optional[str]


class PinList(ResponseModel):
    pins: list[s.Pin]
    count: int


class UnpinRequest(BodyModel):
    metric_type: MetricType
    model_type: ModelType = MODEL_TYPE
    actor: Optional[s.Actor] = None
    reason: Optional[str] = Field(default=None, max_length=200)


class UnpinResult(ResponseModel):
    model_type: str
    metric_type: str
    unpinned: bool = Field(description="false when the type had no pin (nothing recorded)")


class HistoryQuery(QueryModel):
    metric_type: Optional[MetricType] = None
    limit: int = Field(default=50, ge=1, le=MAX_LIMIT)


class DecisionList(ResponseModel):
    decisions: list[dict[str, Any]]
    count: int


class DriftList(ResponseModel):
    reports: list[dict[str, Any]]
    count: int


@operation("GET", "/models/compare", response=Comparison, query=CompareQuery, tag="promotion", errors=(404,),
           summary="Champion vs challenger: gate numbers, alert and incident rates, overlap, score histograms")
def compare_models(query: CompareQuery) -> Comparison:
    """Both versions score the last ``days`` of observations (read-only)."""
    try:
        result = comparison.compare(get_model_manager(), query.metric_type, model_type=query.model_type,
                                    challenger_id=query.challenger_id, days=query.days)
    except ModelNotFoundError as exc:
        raise ApiError(404, f"{exc} (as a version of {query.model_type}/{query.metric_type})") from None
    return Comparison.model_validate(result)


@operation("GET", "/pins", response=PinList, tag="promotion", summary="Pinned types: training never changes them")
def list_pins() -> PinList:
    """A manual activation or rollback pins its version; remove a pin with ``POST /pins/unpin``."""
    rows = pins.list_pins(db.session)
    db.session.rollback()
    return PinList(pins=rows, count=len(rows))


@operation("POST", "/pins/unpin", response=UnpinResult, body=UnpinRequest, tag="promotion",
           summary="Remove a type's pin: automatic promotion resumes")
def unpin(body: UnpinRequest) -> UnpinResult:
    """Recorded in the gate decisions (``unpinned``) with who and why."""
    done = pins.unpin(db.session, body.model_type, body.metric_type, actor_of(body.actor), body.reason)
    return UnpinResult(model_type=body.model_type, metric_type=body.metric_type, unpinned=done)


def _newest(table: Any, query: HistoryQuery, describe: Callable[[Any], dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest ``query.limit`` rows of ``table`` (of ``query.metric_type`` if given), described."""
    statement = select(table).order_by(table.id.desc()).limit(query.limit)
    if query.metric_type:
        statement = statement.where(table.metric_type == query.metric_type)
    rows = [describe(row) for row in db.session.execute(statement).scalars()]
    db.session.rollback()
    return rows


def _decision(row: GateDecision) -> dict[str, Any]:
    return {"id": row.id, "model_type": row.model_type, "metric_type": row.metric_type,
            "challenger_id": row.challenger_id, "champion_id": row.champion_id, "mode": row.mode,
            "decision": row.decision, "reason": row.reason, "actor": row.actor, "fingerprint": row.fingerprint,
            "created_at": as_utc(row.created_at), "metrics": row.metrics}


@operation("GET", "/gate-decisions", response=DecisionList, query=HistoryQuery, tag="promotion",
           summary="The promotion audit: every gate decision, pin and unpin with its numbers, newest first")
def gate_decisions(query: HistoryQuery) -> DecisionList:
    rows = _newest(GateDecision, query, _decision)
    return DecisionList(decisions=rows, count=len(rows))


def describe_report(row: DriftReport) -> dict[str, Any]:
    return {"id": row.id, "model_type": row.model_type, "metric_type": row.metric_type, "model_id": row.model_id,
            "psi": row.psi, "ks": row.ks, "drifted": row.drifted, "triggered": row.triggered,
            "job_run_id": row.job_run_id, "reference_samples": row.reference_samples,
            "recent_samples": row.recent_samples, "features": row.features, "created_at": as_utc(row.created_at)}


@operation("GET", "/drift", response=DriftList, query=HistoryQuery, tag="promotion",
           summary="Drift reports (PSI and KS per feature against the champion's window), newest first")
def drift_reports(query: HistoryQuery) -> DriftList:
    rows = _newest(DriftReport, query, describe_report)
    return DriftList(reports=rows, count=len(rows))


@operation("POST", "/drift-check", response=s.JobResult, body=s.JobRequest, body_required=False,
           errors=(409, 500), tag="promotion", summary="Measure drift now; a drift triggers one retraining")
def drift_check(body: s.JobRequest) -> s.JobResult:
    """The drift_check job through the job runner (409 while it runs in any process)."""
    from utils.web.api.jobs import _run_job

    return _run_job("drift_check", body)
