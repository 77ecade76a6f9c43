"""The ``ml_incidents`` table (migration ``0009_incidents``).

An incident is a run of one entity's alerts on one metric type, each within
``ML_INCIDENT_GAP_HOURS`` of the previous one (observation time).  Its
alerts point at it through ``ml_alerts.incident_id``; the incident keeps the
summary: first and last observation time, how many alerts, the worst
severity and the peak (largest anomaly score, with its value and alert).
``severity`` is English here (our table), unlike ``ml_alerts.severity``.
"""
from __future__ import annotations

from datetime import datetime
from typing import Optional

from sqlalchemy import Boolean, CheckConstraint, DateTime, Float, Index, Integer, String, false, func, text
from sqlalchemy.orm import Mapped, mapped_column

from utils.extensions import db
from utils.time import utcnow

SEVERITIES = ("low", "medium", "high", "critical")


class MLIncident(db.Model):
    """One incident: consecutive anomalies of one entity (see the module docstring)."""

    __tablename__ = "ml_incidents"
    __table_args__ = (
        # Grouping: the entity's latest incident of a metric type.
        Index("idx_ml_incidents_entity_end", "metric_type", "entity_id", "ended_at"),
        Index("idx_ml_incidents_started", "started_at"),
        CheckConstraint("severity IN ('low', 'medium', 'high', 'critical')", name="severity"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    metric_type: Mapped[str] = mapped_column(String(50), nullable=False)
    entity_id: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    ended_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    alert_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default=text("0"))
    severity: Mapped[str] = mapped_column(String(16), nullable=False)
    peak_score: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    peak_value: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    peak_observation_id: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    method: Mapped[Optional[str]] = mapped_column(String(40), nullable=True)
    model_id: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    is_false_positive: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False, server_default=false())
    false_positive_at: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow,
                                                 server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow,
                                                 server_default=func.now())
