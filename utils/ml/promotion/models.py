"""The promotion tables (migration ``0011_promotion``).

* ``ml_gate_decisions`` — the audit of every promotion decision: the gate's
  verdict on a challenger (promoted, rejected, kept by ``--promote never``,
  held by a pin) with its numbers, and every pin and unpin;
* ``ml_model_pins`` — at most one pin per (model_type, metric_type): while it
  exists, training never changes that type's active version;
* ``ml_drift_reports`` — one drift measurement of a metric type's recent
  features against its champion's training window, and whether it triggered
  the retraining run ``job_run_id``.

No foreign keys to ``ml_models`` on purpose: cleanup deletes old versions
and the audit must keep saying which version it was about.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

from sqlalchemy import JSON, Boolean, DateTime, Float, Index, Integer, String, false, func
from sqlalchemy.orm import Mapped, mapped_column

from utils.extensions import db
from utils.time import utcnow

# Decisions recorded in ml_gate_decisions.
PROMOTED, REJECTED, KEPT, HELD, PINNED, UNPINNED = "promoted", "rejected", "kept", "held", "pinned", "unpinned"
DECISIONS = (PROMOTED, REJECTED, KEPT, HELD, PINNED, UNPINNED)
REASON_MAX = 500


class GateDecision(db.Model):
    """One decision about a type's active version, with the numbers it was based on."""

    __tablename__ = "ml_gate_decisions"
    __table_args__ = (Index("idx_ml_gate_decisions_type_time", "model_type", "metric_type", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_type: Mapped[str] = mapped_column(String(50), nullable=False)
    metric_type: Mapped[str] = mapped_column(String(50), nullable=False)
    challenger_id: Mapped[Optional[int]] = mapped_column(Integer, nullable=True, index=True)
    champion_id: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    mode: Mapped[str] = mapped_column(String(16), nullable=False)  # auto, never, always, manual
    decision: Mapped[str] = mapped_column(String(16), nullable=False)
    reason: Mapped[str] = mapped_column(String(REASON_MAX), nullable=False)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    fingerprint: Mapped[Optional[str]] = mapped_column(String(64), nullable=True)
    actor: Mapped[str] = mapped_column(String(100), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow,
                                                 server_default=func.now())


class ModelPin(db.Model):
    """A pinned version: automatic promotion of its type stops until it is removed."""

    __tablename__ = "ml_model_pins"

    model_type: Mapped[str] = mapped_column(String(50), primary_key=True)
    metric_type: Mapped[str] = mapped_column(String(50), primary_key=True)
    model_id: Mapped[int] = mapped_column(Integer, nullable=False)
    actor: Mapped[str] = mapped_column(String(100), nullable=False)
    reason: Mapped[Optional[str]] = mapped_column(String(200), nullable=True)
    pinned_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow,
                                                server_default=func.now())


class DriftReport(db.Model):
    """PSI and KS of recent features against the champion's training window, per feature in ``features``."""

    __tablename__ = "ml_drift_reports"
    __table_args__ = (Index("idx_ml_drift_reports_type_time", "metric_type", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_type: Mapped[str] = mapped_column(String(50), nullable=False)
    metric_type: Mapped[str] = mapped_column(String(50), nullable=False)
    model_id: Mapped[int] = mapped_column(Integer, nullable=False)
    reference_samples: Mapped[int] = mapped_column(Integer, nullable=False)
    recent_samples: Mapped[int] = mapped_column(Integer, nullable=False)
    psi: Mapped[float] = mapped_column(Float, nullable=False)  # the largest over the features
    ks: Mapped[float] = mapped_column(Float, nullable=False)
    features: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    drifted: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False, server_default=false())
    triggered: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False, server_default=false())
    job_run_id: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow,
                                                 server_default=func.now())
