"""States A-D of LEGACY.md on PostgreSQL, from DDL written here (not from our migrations).

Checked against ``pg_dump --schema-only`` of databases built by running the
minibar app's own code (see the helper notes): same tables, columns, types,
NOT NULLs, defaults, indexes, foreign keys and enum labels (in order) for the
tables our migrations touch.  The app's other tables are reduced to what
matters here: ``kullanicilar`` (target of ``ml_alerts.resolved_by_id``) has
two columns, ``ml_features`` / ``ml_performance_logs`` (B, D) a few.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tests.legacy import formats

STATES = ("A", "B", "C", "D")

# Written here from LEGACY.md, not imported from migrations/vocab.py: the fixtures are an
# independent description of the app's databases (a test checks the two agree).
METRIC_TYPES = (
    "stok_seviye", "tuketim_miktar", "dolum_sure", "stok_bitis_tahmini", "zimmet_kullanim", "zimmet_fire",
    "doluluk_oran", "bosta_tuketim", "talep_yanit_sure", "talep_yogunluk", "qr_okutma_siklik",
    "qr_okutma_performans",
)
ALERT_TYPES = (
    "stok_anomali", "tuketim_anomali", "dolum_gecikme", "stok_bitis_uyari", "zimmet_fire_yuksek",
    "zimmet_kullanim_dusuk", "bosta_tuketim_var", "doluda_tuketim_yok", "talep_yanitlanmadi",
    "talep_yogunluk_yuksek", "qr_kullanim_dusuk",
)
SEVERITIES = ("dusuk", "orta", "yuksek", "kritik")
# What `alembic stamp heads` of the hotel app's chain leaves (11 heads, 20260319_performance_indexes among them).
HOTEL_HEADS = (
    "20260319_performance_indexes", "20251115_odalar_oda_tipi_id", "20251115_fiyat", "20251201_departures",
    "20251201_eksik_tablolar", "20251201_islem_kodu", "20251201_ml_model_path", "bagimsiz_dnd_sistemi",
    "20260303_perf_idx", "add_created_at_tedarik", "20251205_ana_depo_tedarik",
)


def _enum(name: str, labels: tuple[str, ...]) -> str:
    return f"CREATE TYPE {name} AS ENUM ({', '.join(repr(v) for v in labels)})"


# State A: the app's db.create_all() of its ML models, then update_ml_enums*.py.
BLOB_ERA = [
    _enum("ml_metric_type", METRIC_TYPES),
    _enum("ml_alert_type", ALERT_TYPES),
    _enum("ml_alert_severity", SEVERITIES),
    "CREATE TABLE kullanicilar (id serial PRIMARY KEY, kullanici_adi varchar(50) NOT NULL)",
    """CREATE TABLE ml_models (id serial PRIMARY KEY, model_type varchar(50) NOT NULL,
        metric_type varchar(50) NOT NULL, model_data bytea NOT NULL, parameters jsonb,
        training_date timestamp with time zone NOT NULL, accuracy double precision,
        "precision" double precision, recall double precision, is_active boolean NOT NULL)""",
    "CREATE INDEX idx_ml_models_type_active ON ml_models (model_type, metric_type, is_active)",
    """CREATE TABLE ml_metrics (id serial PRIMARY KEY, metric_type ml_metric_type NOT NULL,
        entity_id integer NOT NULL, metric_value double precision NOT NULL,
        "timestamp" timestamp with time zone NOT NULL, extra_data jsonb)""",
    'CREATE INDEX idx_ml_metrics_type_time ON ml_metrics (metric_type, "timestamp")',
    "CREATE INDEX idx_ml_metrics_entity ON ml_metrics (entity_id)",
    """CREATE TABLE ml_alerts (id serial PRIMARY KEY, alert_type ml_alert_type NOT NULL,
        severity ml_alert_severity NOT NULL, entity_id integer NOT NULL, metric_value double precision NOT NULL,
        expected_value double precision, deviation_percent double precision, message text NOT NULL,
        suggested_action text, created_at timestamp with time zone NOT NULL, is_read boolean NOT NULL,
        is_false_positive boolean NOT NULL, resolved_at timestamp with time zone,
        resolved_by_id integer REFERENCES kullanicilar (id))""",
    "CREATE INDEX idx_ml_alerts_created ON ml_alerts (created_at)",
    "CREATE INDEX idx_ml_alerts_entity ON ml_alerts (entity_id)",
    "CREATE INDEX idx_ml_alerts_severity_read ON ml_alerts (severity, is_read)",
    """CREATE TABLE ml_training_logs (id serial PRIMARY KEY, model_id integer REFERENCES ml_models (id),
        training_start timestamp with time zone NOT NULL, training_end timestamp with time zone,
        data_points integer, success boolean NOT NULL, error_message text, metrics jsonb)""",
    "CREATE INDEX idx_ml_training_logs_date ON ml_training_logs (training_start)",
]
# State B: add_model_path_column.py (raw SQL), add_entity_type_to_alerts.py, its later create_all.
OWN_MODEL_PATH = [
    "ALTER TABLE ml_models ADD COLUMN IF NOT EXISTS model_path VARCHAR(255)",
    "ALTER TABLE ml_models ALTER COLUMN model_data DROP NOT NULL",
    "ALTER TABLE ml_alerts ADD COLUMN IF NOT EXISTS entity_type VARCHAR(50)",
    """CREATE TABLE ml_features (id serial PRIMARY KEY, metric_type varchar(50) NOT NULL,
        entity_id integer NOT NULL, "timestamp" timestamp with time zone DEFAULT now() NOT NULL,
        mean_value double precision, std_value double precision, extra_features jsonb,
        created_at timestamp with time zone DEFAULT now())""",
    """CREATE TABLE ml_performance_logs (id serial PRIMARY KEY, operation varchar(50) NOT NULL,
        model_type varchar(50) NOT NULL, metric_type varchar(50) NOT NULL, duration_ms double precision NOT NULL,
        file_size_mb double precision, success boolean, error_message text,
        "timestamp" timestamp with time zone NOT NULL)""",
]
# State C: its Alembic revision ml_model_path_001 (down_revision None).
ALEMBIC_ML_REVISION = [
    "ALTER TABLE ml_models ADD COLUMN model_path VARCHAR(500)",
    "ALTER TABLE ml_models ALTER COLUMN model_data DROP NOT NULL",
    "CREATE INDEX idx_ml_models_path ON ml_models (model_path)",
]
VERSION_TABLE = ("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL, "
                 "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))")

DDL = {
    "A": BLOB_ERA,
    "B": BLOB_ERA + OWN_MODEL_PATH,
    "C": BLOB_ERA + ALEMBIC_ML_REVISION + [VERSION_TABLE, "INSERT INTO alembic_version VALUES ('ml_model_path_001')"],
    "D": BLOB_ERA + OWN_MODEL_PATH + [VERSION_TABLE] + [
        f"INSERT INTO alembic_version VALUES ('{head}')" for head in HOTEL_HEADS],
}


@dataclass
class LegacyState:
    """What a built state holds: its letter, where its files are, the app's row ids per table."""

    state: str
    models_dir: Path
    app_rows: dict[str, list[int]] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    @property
    def has_model_path(self) -> bool:
        return self.state != "A"

    @property
    def has_entity_type(self) -> bool:
        return self.state in ("B", "D")


BASE = datetime(2025, 11, 10, 9, 0, tzinfo=timezone.utc)


def build(url: str, state: str, models_dir: Path) -> LegacyState:
    """Create state ``state`` in the (empty) database at ``url``, with rows and files as the app leaves them."""
    engine = sa.create_engine(url)
    built = LegacyState(state, Path(models_dir).resolve())
    try:
        with engine.begin() as conn:
            for statement in DDL[state]:
                conn.execute(sa.text(statement))
            conn.execute(sa.text("INSERT INTO kullanicilar (kullanici_adi) VALUES ('admin'), ('depo')"))
            _metrics(conn, built)
            _models(conn, built)
            _alerts(conn, built)
    finally:
        engine.dispose()
    return built


def _insert(conn: sa.engine.Connection, built: LegacyState, table: str, row: dict[str, Any]) -> int:
    cols = ", ".join(f'"{c}"' for c in row)
    values = ", ".join(f":{c}" for c in row)
    new_id = conn.execute(sa.text(f"INSERT INTO {table} ({cols}) VALUES ({values}) RETURNING id"), row).scalar_one()
    built.app_rows.setdefault(table, []).append(new_id)
    return new_id


def _metrics(conn: sa.engine.Connection, built: LegacyState) -> None:
    for entity, metric in ((1, "stok_seviye"), (2, "stok_seviye"), (5, "dolum_sure")):
        for k, value in enumerate(formats.raw_values(entity, 20)):
            _insert(conn, built, "ml_metrics", {
                "metric_type": metric, "entity_id": entity, "metric_value": float(value),
                "timestamp": BASE + timedelta(hours=k), "extra_data": '{"urun_adi": "Urun %d"}' % entity})


def _model(conn: sa.engine.Connection, built: LegacyState, metric: str, data: bytes, active: bool, hours: int,
           path: Any = None, parameters: str = '{"contamination": 0.1, "n_estimators": 100, "random_state": 42}',
           ) -> int:
    row: dict[str, Any] = {"model_type": "isolation_forest", "metric_type": metric, "model_data": data,
                           "parameters": parameters, "training_date": BASE + timedelta(hours=hours),
                           "accuracy": 0.94, "precision": 0.85, "recall": 0.8, "is_active": active}
    if built.has_model_path:
        row["model_path"] = None if path is None else str(path)
    model_id = _insert(conn, built, "ml_models", row)
    _insert(conn, built, "ml_training_logs", {
        "model_id": model_id, "training_start": BASE + timedelta(hours=hours),
        "training_end": BASE + timedelta(hours=hours, seconds=4), "data_points": 120, "success": True,
        "metrics": '{"accuracy": 0.94, "precision": 0.85, "recall": 0.8}'})
    return model_id


def _models(conn: sa.engine.Connection, built: LegacyState) -> None:
    # BLOB era: two trainers at once left several active rows (the app runs its scheduler per worker).
    for i, active in enumerate((False, True, True)):
        _model(conn, built, "stok_seviye", formats.blob_forest(i), active, hours=i)
    _model(conn, built, "dolum_sure", formats.blob_forest(7), True, hours=3)
    if built.state not in ("B", "D"):
        return
    # File era: joblib dicts at absolute paths, the FILE_BASED marker; its trainer saves
    # consumption models as 'tuketim_oran'; then a failed file save fell back to a pickled bare forest.
    for metric, seed, n_features, hours in (("stok_seviye", 11, 24, 30), ("tuketim_oran", 12, 19, 31),
                                            ("dolum_sure", 13, 27, 32)):
        stamp = (BASE + timedelta(hours=hours)).strftime("%Y%m%d_%H%M%S")
        path = formats.write_file_model(built.models_dir, f"isolation_forest_{metric}_{stamp}.pkl", seed, n_features)
        built.files.append(path)
        conn.execute(sa.text("UPDATE ml_models SET is_active = false WHERE model_type = 'isolation_forest' "
                             "AND metric_type = :m AND is_active"), {"m": metric})
        features = ", ".join(f'"{n}"' for n in formats.feature_package(seed, n_features)["feature_list"])
        _model(conn, built, metric, formats.FILE_BASED, True, hours, path=path, parameters=(
            '{"contamination": 0.1, "n_estimators": 100, "random_state": 42, '
            f'"feature_list": [{features}], "has_scaler": true}}'))
    conn.execute(sa.text("UPDATE ml_models SET is_active = false WHERE metric_type = 'stok_seviye' AND is_active"))
    _model(conn, built, "stok_seviye", formats.fallback_blob(11, 24), True, hours=40)


def _alerts(conn: sa.engine.Connection, built: LegacyState) -> None:
    rows = [("stok_anomali", "kritik", 1, "urun"), ("tuketim_anomali", "orta", 204, "oda"),
            ("dolum_gecikme", "yuksek", 5, None)]
    for k, (alert_type, severity, entity, entity_type) in enumerate(rows):
        row: dict[str, Any] = {
            "alert_type": alert_type, "severity": severity, "entity_id": entity, "metric_value": 3.0 + k,
            "expected_value": 40.0, "deviation_percent": -92.5, "message": f"Urun {entity} stok seviyesi dusuk",
            "suggested_action": "Acil siparis verin.", "created_at": BASE + timedelta(hours=50 + k),
            "is_read": k == 2, "is_false_positive": False,
            "resolved_at": BASE + timedelta(hours=60) if k == 2 else None, "resolved_by_id": 1 if k == 2 else None}
        if built.has_entity_type:
            row["entity_type"] = entity_type
        _insert(conn, built, "ml_alerts", row)
