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
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
    func,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, deferred, mapped_column
from sqlalchemy.types import TypeDecorator

from utils.extensions import db
from utils.time import utcnow

# A metric type is an identifier chosen by the hotel app, not an enum.
METRIC_TYPE_PATTERN = r"^[a-z][a-z0-9_]{0,49}$"
MODEL_TYPE_PATTERN = METRIC_TYPE_PATTERN

# The minibar app's vocabulary (LEGACY.md; frozen copies in migrations/vocab.py,
# a test keeps them equal).  ml_alerts.alert_type and severity hold only these
# words, so the app, which shares the tables, can read every alert.
APP_ALERT_TYPES = (
    "stok_anomali", "tuketim_anomali", "dolum_gecikme", "stok_bitis_uyari", "zimmet_fire_yuksek",
    "zimmet_kullanim_dusuk", "bosta_tuketim_var", "doluda_tuketim_yok", "talep_yanitlanmadi",
    "talep_yogunluk_yuksek", "qr_kullanim_dusuk",
)
# In the database type but not in the app's ORM: the app fails to read a row holding it. Never written.
UNREADABLE_ALERT_TYPES = ("zimmet_kullanim_dusuk",)
APP_SEVERITIES = ("dusuk", "orta", "yuksek", "kritik")  # low -> critical; the app orders by it
SEVERITY_FROM_ENGLISH = {"low": "dusuk", "medium": "orta", "high": "yuksek", "critical": "kritik"}
# The alert type written for an alert on a metric type; any other type gets
# DEFAULT_ALERT_TYPE, the app's own choice for alerts that fit none of its types.
ALERT_TYPE_FOR_METRIC = {
    "stok_seviye": "stok_anomali", "tuketim_miktar": "tuketim_anomali", "dolum_sure": "dolum_gecikme",
    "stok_bitis_tahmini": "stok_bitis_uyari", "zimmet_fire": "zimmet_fire_yuksek",
    "zimmet_kullanim": "zimmet_fire_yuksek", "bosta_tuketim": "bosta_tuketim_var",
    "talep_yanit_sure": "talep_yanitlanmadi", "talep_yogunluk": "talep_yogunluk_yuksek",
    "qr_okutma_siklik": "qr_kullanim_dusuk", "qr_okutma_performans": "qr_kullanim_dusuk",
    "tuketim_oran": "tuketim_anomali", "minibar_tuketim": "tuketim_anomali",
}
DEFAULT_ALERT_TYPE = "stok_anomali"


def alert_type_for(metric_type: Optional[str]) -> str:
    """The app's alert type for an alert on ``metric_type`` (never an unreadable one)."""
    return ALERT_TYPE_FOR_METRIC.get(metric_type or "", DEFAULT_ALERT_TYPE)


def _alert_type_default(context: Any) -> str:
    return alert_type_for(context.get_current_parameters().get("metric_type"))


class Severity(TypeDecorator):
    """An alert's severity: English in Python (low ... critical), the app's word in the database.

    The database column is the app's ``ml_alert_severity`` (dusuk, orta, yuksek,
    kritik, in that order), so the app reads every row and its ``ORDER BY
    severity DESC`` still puts critical first.  The app's own words are accepted
    on the way in too; anything else is refused, naming the allowed values.
    """

    impl = Enum(*APP_SEVERITIES, name="ml_alert_severity", length=20, create_constraint=False, validate_strings=True)
    cache_ok = True
    _TO_ENGLISH = {v: k for k, v in SEVERITY_FROM_ENGLISH.items()}

    def process_bind_param(self, value: Optional[str], dialect: Any) -> Optional[str]:
        if value is None or value in APP_SEVERITIES:
            return value
        if value in SEVERITY_FROM_ENGLISH:
            return SEVERITY_FROM_ENGLISH[value]
        raise ValueError(f"severity {value!r}: expected one of low, medium, high, critical")

    def process_result_value(self, value: Optional[str], dialect: Any) -> Optional[str]:
        return None if value is None else self._TO_ENGLISH.get(value, value)


# JSON documents: jsonb on PostgreSQL, as the app created them (equality, indexing).
JSONDoc = JSON().with_variant(JSONB(), "postgresql")

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
    parameters: Mapped[Optional[dict[str, Any]]] = mapped_column(JSONDoc, nullable=True)
    training_date: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)
    accuracy: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    precision: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    recall: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    is_active: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False, server_default=true())
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow, server_default=func.now()
    )
    checksum_sha256: Mapped[Optional[str]] = mapped_column(String(64), nullable=True)
    size_bytes: Mapped[Optional[int]] = mapped_column(BigInteger, nullable=True)
    sklearn_version: Mapped[Optional[str]] = mapped_column(String(32), nullable=True)
    numpy_version: Mapped[Optional[str]] = mapped_column(String(32), nullable=True)
    python_version: Mapped[Optional[str]] = mapped_column(String(32), nullable=True)
    # What the model takes as input (utils/ml/store/signature.py): detection uses only models
    # whose input this service computes.  NULL: not recorded yet (inferred when loaded).
    input_signature: Mapped[Optional[dict[str, Any]]] = mapped_column(JSONDoc, nullable=True)
    # An adopted minibar-app file: the absolute path its row had (the file itself was copied to model_path).
    legacy_path: Mapped[Optional[str]] = mapped_column(String(500), nullable=True)

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
        Index("idx_ml_metrics_entity", "entity_id"),  # the minibar app's
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    metric_type: Mapped[str] = mapped_column(String(50), nullable=False)
    entity_id: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    metric_value: Mapped[float] = mapped_column(Float, nullable=False)
    timestamp: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow, server_default=func.now()
    )
    extra_data: Mapped[Optional[dict[str, Any]]] = mapped_column(JSONDoc, nullable=True)


class MLAlert(db.Model):
    """One detected anomaly; ``observation_id`` is unique so an observation never alerts twice.

    The table is shared with the minibar app, which reads every row (its
    dashboard, e-mails and API select all of its columns): ``alert_type`` and
    ``severity`` hold its words (its PostgreSQL enum types; ``Severity``
    translates to English for our code), ``message`` and ``created_at`` are
    always filled.  Its own inserts name none of our
    columns: ``metric_type`` is then filled by a trigger (PostgreSQL).
    """

    __tablename__ = "ml_alerts"
    __table_args__ = (
        Index("idx_ml_alerts_type_time", "metric_type", "detected_at"),
        UniqueConstraint("observation_id", name="uq_ml_alerts_observation_id"),
        # The minibar app's indexes, kept on adopted tables and created on new ones.
        Index("idx_ml_alerts_severity_read", "severity", "is_read"),
        Index("idx_ml_alerts_created", "created_at"),
        Index("idx_ml_alerts_entity", "entity_id"),
        Index("idx_ml_alerts_incident", "incident_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alert_type: Mapped[str] = mapped_column(
        Enum(*APP_ALERT_TYPES, name="ml_alert_type", length=50, create_constraint=False, validate_strings=True),
        nullable=False, default=_alert_type_default,
    )
    metric_type: Mapped[Optional[str]] = mapped_column(String(50), nullable=True)
    entity_type: Mapped[Optional[str]] = mapped_column(String(50), nullable=True)
    entity_id: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    metric_value: Mapped[float] = mapped_column(Float, nullable=False)
    expected_value: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    deviation_percent: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    severity: Mapped[str] = mapped_column(Severity(), nullable=False)
    message: Mapped[str] = mapped_column(Text, nullable=False, server_default=text("''"))
    suggested_action: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow, server_default=func.now()
    )
    is_read: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False, server_default=false())
    is_false_positive: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False, server_default=false())
    resolved_at: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True), nullable=True)
    # The app's user (kullanicilar.id): a foreign key only where that table exists.
    resolved_by_id: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    detected_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow, server_default=func.now()
    )
    anomaly_score: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    method: Mapped[Optional[str]] = mapped_column(String(40), nullable=True)
    # Not a foreign key on purpose: cleanup deletes old model rows, and the
    # alert must keep saying which model raised it.
    model_id: Mapped[Optional[int]] = mapped_column(Integer, nullable=True, index=True)
    observation_id: Mapped[Optional[int]] = mapped_column(
        Integer, ForeignKey("ml_metrics.id", ondelete="SET NULL"), nullable=True
    )
    read_at: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True), nullable=True)
    false_positive_at: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True), nullable=True)
    # The incident this alert belongs to (ml_incidents.id; NULL for the hotel app's own alerts).
    incident_id: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)


class ScanWatermark(db.Model):
    """The last observation id each metric type's scan has scored."""

    __tablename__ = "ml_scan_watermarks"

    metric_type: Mapped[str] = mapped_column(String(50), primary_key=True)
    last_observation_id: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default=text("0"))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow, server_default=func.now()
    )


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
    activated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow, server_default=func.now()
    )


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
    started_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow, server_default=func.now()
    )
    finished_at: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True), nullable=True)
    status: Mapped[str] = mapped_column(String(20), nullable=False, default="running", server_default="running")
    host: Mapped[Optional[str]] = mapped_column(String(200), nullable=True)
    pid: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    error: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    details: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON, nullable=True)


class SchedulerLease(db.Model):
    """A named lease for leader election where advisory locks do not exist (SQLite)."""

    __tablename__ = "ml_scheduler_leases"

    name: Mapped[str] = mapped_column(String(50), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200), nullable=False)
    acquired_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow, server_default=func.now()
    )
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class MigrationLedgerEntry(db.Model):
    """How to undo one step of a schema revision (``migrations/ledger.py``); written only by migrations."""

    __tablename__ = "ml_migration_ledger"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    revision: Mapped[str] = mapped_column(String(64), nullable=False)
    action: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


# Registered with the metadata here, so Alembic and every app see the table.
from utils.ml.incidents.models import MLIncident  # noqa: E402,F401
