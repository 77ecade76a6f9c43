"""The minibar app's statements on its ML tables, as plain SQL: what its ORM sends, run at any point.

Taken from its code (``utils/ml/*``, ``routes/ml_routes.py``, its alert
e-mail): it names only its own columns, binds enum values as plain strings
(its ORM's ``db.Enum``), never casts, orders alerts by ``severity DESC`` (the
enum's order: kritik first) and reads every column of ``ml_alerts`` for its
dashboard and e-mails.  Its ORM fails on a value outside its declared lists,
so every read here checks the values it gets back the same way.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa

from tests.legacy import formats
from tests.legacy.schema import METRIC_TYPES, SEVERITIES, LegacyState

# Its ORM declares every label of the database type but this one.
READABLE_ALERT_TYPES = ("stok_anomali", "tuketim_anomali", "dolum_gecikme", "stok_bitis_uyari",
                        "zimmet_fire_yuksek", "bosta_tuketim_var", "doluda_tuketim_yok", "talep_yanitlanmadi",
                        "talep_yogunluk_yuksek", "qr_kullanim_dusuk")
ALERT_COLUMNS = ("id", "alert_type", "severity", "entity_id", "metric_value", "expected_value", "deviation_percent",
                 "message", "suggested_action", "created_at", "is_read", "is_false_positive", "resolved_at",
                 "resolved_by_id")
MODEL_COLUMNS = ("id", "model_type", "metric_type", "model_data", "parameters", "training_date", "accuracy",
                 "precision", "recall", "is_active")


class HotelApp:
    """One deployment of the minibar app on a database in ``state``; remembers the rows it wrote."""

    def __init__(self, url: str, state: LegacyState) -> None:
        self.url = url
        self.state = state
        self.rows: dict[str, list[int]] = {t: list(ids) for t, ids in state.app_rows.items()}
        self.round = 0

    def _run(self, fn: Any) -> Any:
        engine = sa.create_engine(self.url, poolclass=sa.pool.NullPool)
        try:
            with engine.begin() as conn:
                return fn(conn)
        finally:
            engine.dispose()

    def _keep(self, table: str, new_id: int) -> int:
        self.rows.setdefault(table, []).append(new_id)
        return new_id

    # ------------------------------------------------------------------ writes
    def write(self) -> None:
        """One hour of the app: collect metrics, raise an alert, train and save a model, log it."""
        self.round += 1
        now = datetime.now(timezone.utc)
        self._run(lambda conn: self._collect(conn, now))
        self._run(lambda conn: self._alert(conn, now))
        self._run(lambda conn: self._train(conn, now))
        self._run(lambda conn: conn.execute(sa.text(
            "UPDATE ml_alerts SET is_read = true, resolved_at = :t, resolved_by_id = 1 WHERE id = :i"),
            {"t": now, "i": self.rows["ml_alerts"][0]}))

    def _collect(self, conn: sa.engine.Connection, now: datetime) -> None:
        # Its ORM binds the enum value as a string; a client may also send it typed (the cast).
        for entity, metric, value in ((1, "stok_seviye", ":metric_type"), (3, "dolum_sure", ":metric_type"),
                                      (9, "qr_okutma_performans", "CAST(:metric_type AS ml_metric_type)")):
            self._keep("ml_metrics", conn.execute(sa.text(
                "INSERT INTO ml_metrics (metric_type, entity_id, metric_value, timestamp, extra_data) "
                f"VALUES ({value}, :entity_id, :metric_value, :timestamp, :extra_data) RETURNING id"),
                {"metric_type": metric, "entity_id": entity, "metric_value": 40.0 + self.round, "timestamp": now,
                 "extra_data": '{"urun_adi": "Urun 1", "kritik_seviye": 10}'}).scalar_one())

    def _alert(self, conn: sa.engine.Connection, now: datetime) -> None:
        # Its detector first looks for an alert of the last hour on the same entity.
        conn.execute(sa.text(
            "SELECT " + ", ".join(ALERT_COLUMNS) + " FROM ml_alerts WHERE alert_type = :t AND entity_id = :e "
            "AND created_at >= :since AND is_false_positive = false LIMIT 1"),
            {"t": "stok_anomali", "e": 1, "since": now - timedelta(hours=1)}).all()
        row = {"alert_type": "stok_anomali", "severity": "kritik", "entity_id": 1, "metric_value": -3.0,
               "expected_value": 0.0, "deviation_percent": 100.0, "message": "NEGATIF STOK: Urun 1 - Mevcut stok: -3",
               "suggested_action": "ACIL: Stok hareketlerini kontrol edin.", "created_at": now, "is_read": False,
               "is_false_positive": False}
        if self.state.has_entity_type:
            row["entity_type"] = "urun"
        cols = ", ".join(row)
        self._keep("ml_alerts", conn.execute(sa.text(
            f"INSERT INTO ml_alerts ({cols}) VALUES ({', '.join(':' + c for c in row)}) RETURNING id"),
            row).scalar_one())

    def _train(self, conn: sa.engine.Connection, now: datetime) -> None:
        # Its trainer: deactivate the active model of the type, insert the new one, log the training.
        conn.execute(sa.text("UPDATE ml_models SET is_active = false WHERE model_type = :t AND metric_type = :m "
                             "AND is_active = true"), {"t": "isolation_forest", "m": "dolum_sure"})
        row: dict[str, Any] = {"model_type": "isolation_forest", "metric_type": "dolum_sure",
                               "model_data": formats.blob_forest(20), "training_date": now, "accuracy": 0.9,
                               "precision": 0.85, "recall": 0.8, "is_active": True,
                               "parameters": '{"contamination": 0.1, "n_estimators": 100, "random_state": 42}'}
        if self.state.has_model_path:
            stamp = now.strftime("%Y%m%d_%H%M%S")
            path = formats.write_file_model(self.state.models_dir,
                                            f"isolation_forest_dolum_sure_{stamp}_{self.round}.pkl", 20, 21)
            row.update(model_data=formats.FILE_BASED, model_path=str(path))
        cols = ", ".join(f'"{c}"' for c in row)
        model_id = self._keep("ml_models", conn.execute(sa.text(
            f"INSERT INTO ml_models ({cols}) VALUES ({', '.join(':' + c for c in row)}) RETURNING id"),
            row).scalar_one())
        self._keep("ml_training_logs", conn.execute(sa.text(
            "INSERT INTO ml_training_logs (model_id, training_start, training_end, data_points, success, metrics) "
            "VALUES (:m, :s, :e, 120, true, :x) RETURNING id"),
            {"m": model_id, "s": now, "e": now + timedelta(seconds=3), "x": '{"accuracy": 0.9}'}).scalar_one())

    # ------------------------------------------------------------------ reads
    def read(self) -> dict[str, Any]:
        """Its dashboard, API, e-mail and trainer reads; fails as its ORM would on a value it cannot map."""
        return self._run(self._reads)

    def _reads(self, conn: sa.engine.Connection) -> dict[str, Any]:
        cols = ", ".join(ALERT_COLUMNS)
        dashboard = conn.execute(sa.text(
            f"SELECT {cols} FROM ml_alerts WHERE is_read = false AND is_false_positive = false "
            "ORDER BY severity DESC, created_at DESC LIMIT 10")).mappings().all()
        email = conn.execute(sa.text(
            f"SELECT {cols} FROM ml_alerts WHERE created_at >= :since AND severity IN ('kritik', 'yuksek') "
            "AND is_false_positive = false ORDER BY severity DESC, created_at DESC"),
            {"since": datetime(2000, 1, 1, tzinfo=timezone.utc)}).mappings().all()
        everything = conn.execute(sa.text(f"SELECT {cols} FROM ml_alerts ORDER BY id")).mappings().all()
        by_severity = dict(conn.execute(sa.text(
            "SELECT severity, count(id) FROM ml_alerts WHERE is_false_positive = false GROUP BY severity")).all())
        by_type = dict(conn.execute(sa.text(
            "SELECT alert_type, count(id) FROM ml_alerts WHERE is_false_positive = false GROUP BY alert_type")).all())
        for alert in everything:
            self._check_alert(alert)
        ranks = [SEVERITIES.index(a["severity"]) for a in dashboard]
        assert ranks == sorted(ranks, reverse=True), f"dashboard not ordered kritik first: {ranks}"
        for severity in by_severity:
            assert severity in SEVERITIES, severity
        for alert_type in by_type:
            assert alert_type in READABLE_ALERT_TYPES, alert_type
        metrics = conn.execute(sa.text(
            "SELECT id, metric_type, entity_id, metric_value, timestamp, extra_data FROM ml_metrics "
            "WHERE metric_type = :m AND entity_id = :e AND timestamp >= :since ORDER BY timestamp"),
            {"m": "stok_seviye", "e": 1, "since": datetime(2000, 1, 1, tzinfo=timezone.utc)}).mappings().all()
        assert all(m["metric_type"] in METRIC_TYPES for m in metrics)
        model_cols = ", ".join(f'"{c}"' for c in MODEL_COLUMNS) + (", model_path" if self.state.has_model_path else "")
        active = conn.execute(sa.text(f"SELECT {model_cols} FROM ml_models WHERE is_active = true")).mappings().all()
        logs = conn.execute(sa.text(
            "SELECT id, model_id, training_start, training_end, data_points, success FROM ml_training_logs "
            "WHERE model_id = :m AND success = true ORDER BY training_end DESC"),
            {"m": self.rows["ml_models"][-1]}).all()
        return {"dashboard": dashboard, "email": email, "alerts": everything, "by_severity": by_severity,
                "by_type": by_type, "metrics": metrics, "active_models": active, "logs": logs}

    @staticmethod
    def _check_alert(alert: Any) -> None:
        # What its ORM, dashboard template and e-mail need from every row.
        assert alert["alert_type"] in READABLE_ALERT_TYPES, f"alert {alert['id']}: alert_type {alert['alert_type']!r}"
        assert alert["severity"] in SEVERITIES, f"alert {alert['id']}: severity {alert['severity']!r}"
        assert alert["message"], f"alert {alert['id']}: no message"
        assert alert["created_at"] is not None, f"alert {alert['id']}: no created_at"

    def missing_rows(self) -> dict[str, list[int]]:
        """The app's rows (ids per table) no longer in the database: must stay empty."""
        def look(conn: sa.engine.Connection) -> dict[str, list[int]]:
            gone = {}
            for table, ids in self.rows.items():
                present = set(conn.execute(sa.text(f"SELECT id FROM {table}")).scalars())
                lost = sorted(set(ids) - present)
                if lost:
                    gone[table] = lost
            return gone
        return self._run(look)
