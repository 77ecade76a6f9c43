"""The legacy schema: models stored as BLOBs, as the original system had it.

An existing production database already *is* at this revision: stamp it with
``flask db stamp 0001_legacy_schema`` (or let ``flask db upgrade`` detect it,
see ``migrations/README``) and upgrade in place.

Revision ID: 0001_legacy_schema
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "0001_legacy_schema"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
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


def downgrade():
    op.drop_table("ml_alerts")
    op.drop_index("idx_ml_metrics_type_time", table_name="ml_metrics")
    op.drop_table("ml_metrics")
    op.drop_index("idx_ml_models_type_active", table_name="ml_models")
    op.drop_table("ml_models")
