"""One schema at head, whatever the database came from, and the hotel app still at home in it.

Three kinds of database reach this revision: created by this chain, created
by an earlier release of this service (same tables, JSON columns, English
alert words), or adopted from the minibar app (``LEGACY.md``).  Each step
looks first and changes only what differs, recording its undo in the ledger
(``migrations/ledger.py``), so all three end with the same tables, columns,
types and indexes, and the downgrade returns each to what it had:

- ``parameters`` / ``extra_data`` are ``jsonb`` on PostgreSQL, as the app made them;
- ``ml_alerts`` carries the app's columns (``entity_type``, ``suggested_action``,
  ``created_at``, ``resolved_at``, ``resolved_by_id``) and its indexes; ``message``
  is never NULL (default empty; the app's e-mail slices it); ``metric_type`` may be omitted (a trigger fills it from
  ``alert_type`` on PostgreSQL, for the app's inserts);
- ``alert_type`` and ``severity`` hold only the app's words: on PostgreSQL its
  own enum types ``ml_alert_type`` / ``ml_alert_severity`` (created when missing),
  which also keep its ``ORDER BY severity`` meaning kritik > yuksek > orta > dusuk;
  rows an earlier release wrote (``anomaly``, ``low``...) are translated;
- server defaults match on every column both kinds share.

Revision ID: 0006_legacy_coexistence
Revises: 0005_scan_index
"""
import sqlalchemy as sa
from alembic import op

from migrations import ledger
from migrations.coexist import install_fill_trigger
from migrations.vocab import (
    APP_ALERT_TYPES,
    APP_SEVERITIES,
    UNREADABLE_ALERT_TYPES,
    alert_type_for_metric_sql,
    metric_for_alert_sql,
    severity_from_english_sql,
    severity_to_english_sql,
)

revision = "0006_legacy_coexistence"
down_revision = "0005_scan_index"
branch_labels = None
depends_on = None


def upgrade():
    ledger.ensure_ledger(revision)
    ledger.note(revision, {"applied_with_ledger": True})
    pg = ledger.is_pg()
    now = "now()" if pg else "CURRENT_TIMESTAMP"
    if pg:
        _jsonb("ml_models", "parameters")
        _jsonb("ml_metrics", "extra_data")
    ledger.set_default(revision, "ml_models", "is_active", "true" if pg else "1")
    ledger.set_default(revision, "ml_metrics", "timestamp", now)
    ledger.create_index(revision, "idx_ml_metrics_entity", "ml_metrics", ["entity_id"])

    _app_alert_columns(now)
    _vocabulary(pg)
    ledger.set_default(revision, "ml_alerts", "is_read", "false" if pg else "0")
    ledger.set_default(revision, "ml_alerts", "is_false_positive", "false" if pg else "0")
    ledger.create_index(revision, "idx_ml_alerts_severity_read", "ml_alerts", ["severity", "is_read"])
    ledger.create_index(revision, "idx_ml_alerts_created", "ml_alerts", ["created_at"])
    ledger.create_index(revision, "idx_ml_alerts_entity", "ml_alerts", ["entity_id"])
    if pg:
        install_fill_trigger(revision)


def _jsonb(table: str, column: str) -> None:
    if ledger.pg_type(table, column) == "json":
        ledger.alter_type(revision, table, column, "jsonb", f"{column}::jsonb", back_using=f"{column}::json")


def _app_alert_columns(now: str) -> None:
    ledger.add_column(revision, "ml_alerts", sa.Column("entity_type", sa.String(50), nullable=True))
    ledger.add_column(revision, "ml_alerts", sa.Column("suggested_action", sa.Text(), nullable=True))
    if ledger.add_column(revision, "ml_alerts", sa.Column("created_at", sa.DateTime(timezone=True), nullable=True)):
        op.execute("UPDATE ml_alerts SET created_at = detected_at WHERE created_at IS NULL")
    ledger.set_default(revision, "ml_alerts", "created_at", now)
    ledger.set_nullable(revision, "ml_alerts", "created_at", False)
    ledger.add_column(revision, "ml_alerts", sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True))
    ledger.add_column(revision, "ml_alerts", sa.Column("resolved_by_id", sa.Integer(), nullable=True))
    # The app's dashboard and e-mails print every alert's message (its e-mail slices it: None would fail).
    if ledger.columns("ml_alerts")["message"]["nullable"]:
        op.execute("UPDATE ml_alerts SET message = metric_type || ': ' || CAST(metric_value AS VARCHAR(40)) "
                   "WHERE message IS NULL")
        ledger.set_nullable(revision, "ml_alerts", "message", False)
    ledger.set_default(revision, "ml_alerts", "message", "''::text" if ledger.is_pg() else "''")
    alert_type = "alert_type::text" if ledger.is_pg() else "alert_type"
    ledger.set_nullable(revision, "ml_alerts", "metric_type", True, before_not_null=[
        f"UPDATE ml_alerts SET metric_type = {metric_for_alert_sql(alert_type)} WHERE metric_type IS NULL"])


def _vocabulary(pg: bool) -> None:
    readable = ", ".join(f"'{t}'" for t in APP_ALERT_TYPES if t not in UNREADABLE_ALERT_TYPES)
    severities = ", ".join(f"'{s}'" for s in APP_SEVERITIES)
    # Rows an earlier release wrote (alert_type 'anomaly', English severities) in the app's words;
    # the undo gives them back the words that release reads.
    if not pg or ledger.pg_type("ml_alerts", "alert_type") != "ml_alert_type":
        ledger.data(revision,
                    [f"UPDATE ml_alerts SET alert_type = {alert_type_for_metric_sql('metric_type')} "
                     f"WHERE alert_type NOT IN ({readable})"],
                    ["UPDATE ml_alerts SET alert_type = 'anomaly' WHERE method IS NOT NULL"])
    if not pg or ledger.pg_type("ml_alerts", "severity") != "ml_alert_severity":
        ledger.data(revision,
                    [f"UPDATE ml_alerts SET severity = {severity_from_english_sql('severity')} "
                     f"WHERE severity NOT IN ({severities})"],
                    [f"UPDATE ml_alerts SET severity = {severity_to_english_sql('severity')} "
                     "WHERE method IS NOT NULL"])
    if not pg:
        return  # SQLite keeps VARCHAR; the ORM's Enum checks the words on the way in
    ledger.create_enum(revision, "ml_alert_type", APP_ALERT_TYPES)
    ledger.create_enum(revision, "ml_alert_severity", APP_SEVERITIES)
    ledger.alter_type(revision, "ml_alerts", "alert_type", "ml_alert_type", "alert_type::ml_alert_type",
                      back_using="alert_type::text")
    ledger.alter_type(revision, "ml_alerts", "severity", "ml_alert_severity", "severity::ml_alert_severity",
                      back_using="severity::text")


def downgrade():
    ledger.undo(revision)
