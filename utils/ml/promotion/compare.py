"""Champion and challenger side by side: gate numbers, alert and incident rates, overlap, score histograms.

:func:`compare` scores the last ``days`` (default ``ML_GATE_WINDOW_DAYS``)
of a metric type's observations with both versions — the same numbers the
gate computes (:func:`utils.ml.promotion.gate.measure`), histograms over
common bins included — and adds what the database says about the last
``days``: alerts each version raised (``ml_alerts.model_id``) and, when the
``ml_incidents`` table exists, incidents of the metric type.  The challenger
is the given version, else the newest kept version that is not active.
Read-only; every value is JSON-ready.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Any, Optional

import numpy as np
from sqlalchemy import column, func, inspect, select, table

from utils.extensions import db
from utils.ml.pipeline.features import MODEL_TYPE
from utils.ml.pipeline.scoring import is_causal_model, score_window
from utils.ml.promotion.gate import GateSettings, budget_rate, judge, measure
from utils.ml.promotion.models import GateDecision
from utils.ml.promotion.pins import describe as describe_pin, get_pin
from utils.ml.store.base import ModelNotFoundError
from utils.ml.store.integrity import read_verified
from utils.models import MLAlert, MLMetric, MLModel
from utils.time import as_utc, utcnow

INCIDENTS = "ml_incidents"


def _versions(model_type: str, metric_type: str, challenger_id: Optional[int]) -> tuple[Optional[int], Optional[int]]:
    active = db.session.execute(select(MLModel.id).where(
        MLModel.model_type == model_type, MLModel.metric_type == metric_type, MLModel.is_active.is_(True))
    ).scalar_one_or_none()
    if challenger_id is None:
        challenger_id = db.session.execute(select(MLModel.id).where(
            MLModel.model_type == model_type, MLModel.metric_type == metric_type, MLModel.is_active.is_(False))
            .order_by(MLModel.created_at.desc(), MLModel.id.desc()).limit(1)).scalar_one_or_none()
    else:
        found = db.session.execute(select(MLModel.model_type, MLModel.metric_type).where(
            MLModel.id == challenger_id)).first()
        if found is None or tuple(found) != (model_type, metric_type):
            raise ModelNotFoundError(challenger_id)
    return active, challenger_id


def _alerts(model_id: Optional[int], metric_type: str, since: Any, observations: int) -> Optional[dict[str, Any]]:
    if model_id is None:
        return None
    count = db.session.execute(select(func.count()).select_from(MLAlert).where(
        MLAlert.model_id == model_id, MLAlert.metric_type == metric_type, MLAlert.detected_at >= since)).scalar_one()
    return {"alerts": int(count), "per_observation": round(count / observations, 6) if observations else None}


def incident_rate(metric_type: str, since: Any, days: int) -> Optional[dict[str, Any]]:
    """Incidents of ``metric_type`` since ``since``, when an ``ml_incidents`` table with a time column exists.

    Another part of the service owns that table; only a ``metric_type`` and
    one of ``opened_at``/``created_at`` are assumed, and anything else
    (no table, other columns) answers None instead of failing.
    """
    try:
        if not inspect(db.engine).has_table(INCIDENTS):
            return None
        names = {c["name"] for c in inspect(db.engine).get_columns(INCIDENTS)}
        when = next((name for name in ("opened_at", "created_at", "detected_at") if name in names), None)
        if "metric_type" not in names or when is None:
            return None
        incidents = table(INCIDENTS, column("metric_type"), column(when))
        count = db.session.execute(select(func.count()).select_from(incidents).where(
            incidents.c.metric_type == metric_type, incidents.c[when] >= since)).scalar_one()
        return {"incidents": int(count), "per_day": round(count / days, 4)}
    except Exception:  # noqa: BLE001 - an optional panel: its absence is the answer
        db.session.rollback()
        return None


def _decision(challenger_id: Optional[int]) -> Optional[dict[str, Any]]:
    if challenger_id is None:
        return None
    row = db.session.execute(select(GateDecision).where(
        GateDecision.challenger_id == challenger_id, GateDecision.decision.in_(
            ("promoted", "rejected", "kept", "held"))).order_by(GateDecision.id.desc()).limit(1)).scalar_one_or_none()
    if row is None:
        return None
    return {"id": row.id, "decision": row.decision, "reason": row.reason, "mode": row.mode, "actor": row.actor,
            "champion_id": row.champion_id, "created_at": as_utc(row.created_at), "metrics": row.metrics}


def load_version(manager: Any, model_id: int) -> tuple[Any, Optional[str]]:
    """Any kept file-backed version, verified against its recorded SHA-256 before unpickling: ``(model, None)``
    or ``(None, why)``."""
    row = db.session.execute(select(MLModel.model_path, MLModel.checksum_sha256, MLModel.sklearn_version)
                             .where(MLModel.id == model_id)).first()
    db.session.rollback()
    if row is None or not row.model_path:
        return None, "no model file"
    model, _reason, detail = read_verified(manager.store, model_id, row.model_path, row.checksum_sha256,
                                           row.sklearn_version, manager.max_bytes, manager.retry_delays)
    return model, detail


def compare(manager: Any, metric_type: str, *, model_type: str = MODEL_TYPE, challenger_id: Optional[int] = None,
            days: Optional[int] = None) -> dict[str, Any]:
    """The comparison of ``metric_type``'s champion and challenger; raises ModelNotFoundError for a bad id."""
    from utils.ml.model_trainer import ModelTrainer

    cfg = GateSettings.current()
    days = int(days or cfg.window_days)
    champion_id, challenger_id = _versions(model_type, metric_type, challenger_id)
    now = utcnow()
    since = now - timedelta(days=days)
    trainer = ModelTrainer(db)
    # The causal detector judges each row against its entity's earlier rows: load the challenger's
    # training window so the recent rows have the history the gate gave them (not a cold start).
    data = trainer.load(metric_type, now - timedelta(days=max(trainer.window_days, days)), now)
    epoch = data.epoch
    start = int(np.searchsorted(epoch, since.timestamp(), side="left"))
    recent = len(data) - start
    pin = get_pin(db.session, model_type, metric_type)
    result: dict[str, Any] = {
        "model_type": model_type, "metric_type": metric_type, "days": days, "since": since,
        "champion_id": champion_id, "challenger_id": challenger_id, "observations": recent,
        "pin": describe_pin(pin) if pin else None, "last_decision": _decision(challenger_id),
        "alerts": {"champion": _alerts(champion_id, metric_type, since, recent),
                   "challenger": _alerts(challenger_id, metric_type, since, recent)},
        "incidents": incident_rate(metric_type, since, days), "gate": None, "problem": None,
    }
    db.session.rollback()
    if challenger_id is None or recent == 0:
        result["problem"] = "no challenger to compare" if challenger_id is None else "no recent observations"
        return result
    models, causal = {}, False
    for name, model_id in (("challenger", challenger_id), ("champion", champion_id)):
        if model_id is None:
            continue
        loaded, problem = load_version(manager, model_id)
        if loaded is None:
            result["problem"] = f"{name} {model_id} could not be loaded: {problem}"
            return result
        causal = causal or (name == "challenger" and is_causal_model(loaded))
        models[name] = score_window(loaded, data.entity_ids, epoch, data.values, start)
    mine, theirs = models["challenger"], models.get("champion")
    numbers = measure(mine.score, mine.is_anomaly, data.labels[start:],
                      theirs.score if theirs else None, theirs.is_anomaly if theirs else None,
                      budget_rate(cfg.alert_budget, data.entity_ids[start:], epoch[start:]) if causal else None)
    passed, method, notes = judge(numbers, cfg)
    numbers.update(passed=passed, method=method, notes=notes)
    result["gate"] = numbers
    return result
