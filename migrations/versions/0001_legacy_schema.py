"""The legacy schema: models stored as BLOBs, as the original system had it.

On an empty database this creates ``ml_models``, ``ml_metrics`` and
``ml_alerts`` as the BLOB era had them.  On a database where the minibar
application already created them (``LEGACY.md``, states A-D), it adopts them
in place, expand-only, so that application keeps working beside us:

- it never creates over an existing table, and creates only the missing ones;
- ``ml_models.created_at`` is added, filled from ``training_date``;
- ``ml_alerts.metric_type`` (filled from ``alert_type``) and ``detected_at``
  (from ``created_at``) are added; on PostgreSQL a trigger fills
  ``metric_type`` for the rows the app keeps inserting without it;
- ``ml_metrics.metric_type`` changes from the app's enum to ``varchar(50)``
  (any ``^[a-z][a-z0-9_]{0,49}$`` name, ours included); the app's inserts and
  reads keep working, its enum type is kept;
- ``entity_id`` may be NULL (our own figures have none).

What existed is recorded in ``ml_migration_ledger`` (``migrations/ledger.py``)
with the undo of every change, so ``downgrade`` returns the tables exactly to
the state they were adopted in.

Revision ID: 0001_legacy_schema
Revises:
"""
import sqlalchemy as sa
from alembic import op

from migrations import ledger
from migrations.coexist import adopted, install_fill_trigger, snapshot
from migrations.vocab import OWN_FIGURE_TYPES, metric_for_alert_sql

revision = "0001_legacy_schema"
down_revision = None
branch_labels = None
depends_on = None

ML_TABLES = ("ml_models", "ml_metrics", "ml_alerts")


def _create_models() -> None:
    op.create_table(
        "ml_models",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("model_type", sa.String(50), nullable=False),
        sa.Column("metric_type", sa.String(50), nullable=False),
        sa.Column("model_data", sa.LargeBinary(), nullable=False),
        sa.Column("parameters", sa.JSON(), nullable=True),
        sa.Column("training_date", sa.DateTime(timezone=True), nullable=False),
        sa.Column("accuracy", sa.Float(), nullable=True),
        sa.Column("precision", sa.Float(), nullable=True),
        sa.Column("recall", sa.Float(), nullable=True),
        sa.Column("is_active", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_index("idx_ml_models_type_active", "ml_models", ["model_type", "metric_type", "is_active"])


def _create_metrics() -> None:
    op.create_table(
        "ml_metrics",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("metric_type", sa.String(50), nullable=False),
        sa.Column("entity_id", sa.Integer(), nullable=True),
        sa.Column("metric_value", sa.Float(), nullable=False),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("extra_data", sa.JSON(), nullable=True),
    )
    op.create_index("idx_ml_metrics_type_time", "ml_metrics", ["metric_type", "timestamp"])


def _create_alerts() -> None:
    op.create_table(
        "ml_alerts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("alert_type", sa.String(50), nullable=False),
        sa.Column("metric_type", sa.String(50), nullable=False),
        sa.Column("entity_id", sa.Integer(), nullable=True),
        sa.Column("metric_value", sa.Float(), nullable=False),
        sa.Column("expected_value", sa.Float(), nullable=True),
        sa.Column("deviation_percent", sa.Float(), nullable=True),
        sa.Column("severity", sa.String(20), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("is_read", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("is_false_positive", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("detected_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )


CREATORS = {"ml_models": _create_models, "ml_metrics": _create_metrics, "ml_alerts": _create_alerts}


def upgrade():
    existing = [t for t in ML_TABLES if ledger.has_table(t)]
    ledger.ensure_ledger(revision)
    if not existing:
        for name in ML_TABLES:
            CREATORS[name]()
        return
    ledger.note(revision, {"adopted": snapshot(existing)})
    for name in ML_TABLES:
        if name not in existing:
            CREATORS[name]()
            ledger.record(revision, {"op": "drop_table", "table": name})
    if "ml_models" in existing:
        _adopt_models()
    if "ml_metrics" in existing:
        _adopt_metrics()
    if "ml_alerts" in existing:
        _adopt_alerts()


def _adopt_models() -> None:
    # created_at: added empty, filled from training_date, then NOT NULL with a
    # default so the app's inserts (which never name it) still succeed.
    if ledger.add_column(revision, "ml_models", sa.Column("created_at", sa.DateTime(timezone=True), nullable=True)):
        op.execute("UPDATE ml_models SET created_at = training_date WHERE created_at IS NULL")
        ledger.set_default(revision, "ml_models", "created_at", "now()" if ledger.is_pg() else "CURRENT_TIMESTAMP")
        ledger.set_nullable(revision, "ml_models", "created_at", False)


def _adopt_metrics() -> None:
    if ledger.is_pg() and ledger.pg_type("ml_metrics", "metric_type") != "character varying(50)":
        old = ledger.pg_type("ml_metrics", "metric_type")
        own = ", ".join(f"'{t}'" for t in OWN_FIGURE_TYPES)
        ledger.alter_type(
            revision, "ml_metrics", "metric_type", "varchar(50)", "metric_type::text",
            back_using=f"metric_type::text::{old}",
            back_labels={"type": old, "table": "ml_metrics", "column": "metric_type"},
        )
        # On the way down our own figures go first: the app's ORM cannot read them.
        ledger.record(revision, {"op": "sql", "statements": [
            f"DELETE FROM ml_metrics WHERE metric_type IN ({own})"]})
    ledger.set_nullable(revision, "ml_metrics", "entity_id", True,
                        before_not_null=["DELETE FROM ml_metrics WHERE entity_id IS NULL"])


def _adopt_alerts() -> None:
    pg = ledger.is_pg()
    alert_type = "alert_type::text" if pg else "alert_type"
    if ledger.add_column(revision, "ml_alerts", sa.Column("metric_type", sa.String(50), nullable=True)):
        op.execute(f"UPDATE ml_alerts SET metric_type = {metric_for_alert_sql(alert_type)} "
                   "WHERE metric_type IS NULL")
    if ledger.add_column(revision, "ml_alerts", sa.Column("detected_at", sa.DateTime(timezone=True), nullable=True)):
        op.execute("UPDATE ml_alerts SET detected_at = created_at WHERE detected_at IS NULL")
        ledger.set_default(revision, "ml_alerts", "detected_at", "now()" if pg else "CURRENT_TIMESTAMP")
        ledger.set_nullable(revision, "ml_alerts", "detected_at", False)
    ledger.set_nullable(revision, "ml_alerts", "entity_id", True,
                        before_not_null=["DELETE FROM ml_alerts WHERE entity_id IS NULL"])
    if pg:
        install_fill_trigger(revision)


def downgrade():
    if adopted():
        ledger.undo(revision)  # back to the adopted tables, the app's rows untouched
        return
    op.drop_table("ml_alerts")
    op.drop_index("idx_ml_metrics_type_time", table_name="ml_metrics")
    op.drop_table("ml_metrics")
    op.drop_index("idx_ml_models_type_active", table_name="ml_models")
    op.drop_table("ml_models")
    ledger.undo(revision)  # the ledger itself
