"""Detection pipeline: alert provenance, scan watermarks, job runs, leases, audit.

Revision ID: 0004_pipeline_tables
Revises: 0003_model_integrity
"""
import sqlalchemy as sa
from alembic import op

revision = "0004_pipeline_tables"
down_revision = "0003_model_integrity"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("ml_alerts") as batch:
        batch.add_column(sa.Column("anomaly_score", sa.Float(), nullable=True))
        batch.add_column(sa.Column("method", sa.String(40), nullable=True))
        batch.add_column(sa.Column("model_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("observation_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("read_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("false_positive_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_index("ix_ml_alerts_model_id", ["model_id"])
        batch.create_index("idx_ml_alerts_type_time", ["metric_type", "detected_at"])
        # The same observation never raises two alerts: the database says so.
        batch.create_unique_constraint("uq_ml_alerts_observation_id", ["observation_id"])
        batch.create_foreign_key(
            "fk_ml_alerts_observation_id_ml_metrics", "ml_metrics", ["observation_id"], ["id"], ondelete="CASCADE"
        )

    op.create_index("idx_ml_metrics_type_entity_time", "ml_metrics", ["metric_type", "entity_id", "timestamp"])

    op.create_table(
        "ml_scan_watermarks",
        sa.Column("metric_type", sa.String(50), primary_key=True),
        sa.Column("last_observation_id", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "ml_model_activations",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("model_type", sa.String(50), nullable=False),
        sa.Column("metric_type", sa.String(50), nullable=False),
        sa.Column("from_model_id", sa.Integer(), nullable=True),
        sa.Column("to_model_id", sa.Integer(), nullable=False),
        sa.Column("actor", sa.String(100), nullable=False),
        sa.Column("reason", sa.String(200), nullable=True),
        sa.Column("activated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "ml_job_runs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("job_name", sa.String(50), nullable=False),
        sa.Column("scheduled_for", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(20), nullable=False, server_default="running"),
        sa.Column("host", sa.String(200), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("details", sa.JSON(), nullable=True),
        sa.UniqueConstraint("job_name", "scheduled_for", name="uq_ml_job_runs_job_tick"),
    )
    op.create_table(
        "ml_scheduler_leases",
        sa.Column("name", sa.String(50), primary_key=True),
        sa.Column("holder", sa.String(200), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade():
    op.drop_table("ml_scheduler_leases")
    op.drop_table("ml_job_runs")
    op.drop_table("ml_model_activations")
    op.drop_table("ml_scan_watermarks")
    op.drop_index("idx_ml_metrics_type_entity_time", table_name="ml_metrics")
    with op.batch_alter_table("ml_alerts") as batch:
        batch.drop_constraint("fk_ml_alerts_observation_id_ml_metrics", type_="foreignkey")
        batch.drop_constraint("uq_ml_alerts_observation_id", type_="unique")
        batch.drop_index("idx_ml_alerts_type_time")
        batch.drop_index("ix_ml_alerts_model_id")
        for name in ("false_positive_at", "read_at", "observation_id", "model_id", "method", "anomaly_score"):
            batch.drop_column(name)
