"""Typed SQLAlchemy 2.0 models of the ML subsystem's tables.

The schema is created only by ``flask db upgrade`` (``migrations/``); these
classes must stay in step with the newest revision, and a test compares them.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, deferred, mapped_column

from utils.extensions import db
from utils.time import utcnow

# A metric type is an identifier chosen by the hotel app, not an enum.
METRIC_TYPE_PATTERN = r"^[a-z][a-z0-9_]{0,49}$"
MODEL_TYPE_PATTERN = METRIC_TYPE_PATTERN

# Detection methods, as recorded in ml_alerts.method.
METHOD_FILE = "isolation_forest_file"
METHOD_DB = "isolation_forest_db"
METHOD_ZSCORE = "z_score"


class MLModel(db.Model):
    """One trained model version.

    File-backed rows have ``model_path`` (a storage key relative to the model
    store, never an absolute path) and ``checksum_sha256``; legacy rows have
    only ``model_data``.  A migrated row has both: the BLOB is the fallback.
    """

    __tablename__ = "ml_models"
    __table_args__ = (
        Index("idx_ml_models_type_active", "model_type", "metric_type", "is_active"),
        Index("idx_ml_models_path", "model_path"),
        # At most one active row per (model_type, metric_type), enforced by the
        # database itself (partial unique index: PostgreSQL and SQLite both have them).
        Index(
            "uq_ml_models_one_active",
            "model_type",
            "metric_type",
            unique=True,
            postgresql_where=text("is_active"),
            sqlite_where=text("is_active"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_type: Mapped[str] = mapped_column(String(50), nullable=False)
    metric_type: Mapped[str] = mapped_column(String(50), nullable=False)
    # Deferred: metadata queries must never pull BLOBs into memory.
    model_data: Mapped[Optional[bytes]] = deferred(mapped_column(LargeBinary, nullable=True))
    model_path: Mapped[Optional[str]] = mapped_column(String(500), nullable=True)
    parameters: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON, nullable=True)
    training_date: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)
    accuracy: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    precision: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    recall: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    is_active: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)
    checksum_sha256: Mapped[Optional[str]] = mapped_column(String(64), nullable=True)
    size_bytes: Mapped[Optional[int]] = mapped_column(BigInteger, nullable=True)
    sklearn_version: Mapped[Optional[str]] = mapped_column(String(32), nullable=True)
    numpy_version: Mapped[Optional[str]] = mapped_column(String(32), nullable=True)
    python_version: Mapped[Optional[str]] = mapped_column(String(32), nullable=True)

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"<MLModel {self.id} {self.model_type}/{self.metric_type} active={self.is_active}>"


class MLMetric(db.Model):
    """One observation written by the hotel app (or a figure of our own)."""

    __tablename__ = "ml_metrics"
    __table_args__ = (
        Index("idx_ml_metrics_type_time", "metric_type", "timestamp"),
        Index("idx_ml_metrics_type_entity_time", "metric_type", "entity_id", "timestamp"),
        # Scans page through one metric type by id (migration 0005).
        Index("idx_ml_metrics_type_id", "metric_type", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    metric_type: Mapped[str] = mapped_column(String(50), nullable=False)
    entity_id: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    metric_value: Mapped[float] = mapped_column(Float, nullable=False)
    timestamp: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)
    extra_data: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON, nullable=True)


class MLAlert(db.Model):
    """One detected anomaly; ``observation_id`` is unique so an observation never alerts twice."""

    __tablename__ = "ml_alerts"
    __table_args__ = (
        Index("idx_ml_alerts_type_time", "metric_type", "detected_at"),
        UniqueConstraint("observation_id", name="uq_ml_alerts_observation_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alert_type: Mapped[str] = mapped_column(String(50), nullable=False, default="anomaly")
    metric_type: Mapped[str] = mapped_column(String(50), nullable=False)
    entity_id: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    metric_value: Mapped[float] = mapped_column(Float, nullable=False)
    expected_value: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    deviation_percent: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    severity: Mapped[str] = mapped_column(String(20), nullable=False)
    message: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    is_read: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    is_false_positive: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    detected_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)
    anomaly_score: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    method: Mapped[Optional[str]] = mapped_column(String(40), nullable=True)
    # Not a foreign key on purpose: cleanup deletes old model rows, and the
    # alert must keep saying which model raised it.
    model_id: Mapped[Optional[int]] = mapped_column(Integer, nullable=True, index=True)
    observation_id: Mapped[Optional[int]] = mapped_column(
        Integer, ForeignKey("ml_metrics.id", ondelete="CASCADE"), nullable=True
    )
    read_at: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True), nullable=True)
    false_positive_at: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True), nullable=True)


class ScanWatermark(db.Model):
    """The last observation id each metric type's scan has scored."""

    __tablename__ = "ml_scan_watermarks"

    metric_type: Mapped[str] = mapped_column(String(50), primary_key=True)
    last_observation_id: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)


class ModelActivation(db.Model):
    """Audit trail: every change of the active version (save, promote, rollback)."""

    __tablename__ = "ml_model_activations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_type: Mapped[str] = mapped_column(String(50), nullable=False)
    metric_type: Mapped[str] = mapped_column(String(50), nullable=False)
    from_model_id: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    to_model_id: Mapped[int] = mapped_column(Integer, nullable=False)
    actor: Mapped[str] = mapped_column(String(100), nullable=False)
    reason: Mapped[Optional[str]] = mapped_column(String(200), nullable=True)
    activated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)


class JobRun(db.Model):
    """One run of a scheduled (or manually started) job.

    ``(job_name, scheduled_for)`` is unique: a tick can be claimed by exactly
    one process, whatever the number of schedulers.
    """

    __tablename__ = "ml_job_runs"
    __table_args__ = (UniqueConstraint("job_name", "scheduled_for", name="uq_ml_job_runs_job_tick"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_name: Mapped[str] = mapped_column(String(50), nullable=False)
    scheduled_for: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)
    finished_at: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True), nullable=True)
    status: Mapped[str] = mapped_column(String(20), nullable=False, default="running")
    host: Mapped[Optional[str]] = mapped_column(String(200), nullable=True)
    pid: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    error: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    details: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON, nullable=True)


class SchedulerLease(db.Model):
    """A named lease for leader election where advisory locks do not exist (SQLite)."""

    __tablename__ = "ml_scheduler_leases"

    name: Mapped[str] = mapped_column(String(50), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200), nullable=False)
    acquired_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
