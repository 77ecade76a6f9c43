"""Promotion: ml_gate_decisions, ml_model_pins, ml_drift_reports (additive; downgrade drops only these).

Revision ID: 0011_promotion
Revises: 0010_security
"""
import sqlalchemy as sa
from alembic import op

revision = "0011_promotion"
down_revision = "0010_security"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "ml_gate_decisions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("model_type", sa.String(50), nullable=False),
        sa.Column("metric_type", sa.String(50), nullable=False),
        sa.Column("challenger_id", sa.Integer(), nullable=True),
        sa.Column("champion_id", sa.Integer(), nullable=True),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=True),
        sa.Column("actor", sa.String(100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_index("idx_ml_gate_decisions_type_time", "ml_gate_decisions", ["model_type", "metric_type", "created_at"])
    op.create_index("ix_ml_gate_decisions_challenger_id", "ml_gate_decisions", ["challenger_id"])
    op.create_table(
        "ml_model_pins",
        sa.Column("model_type", sa.String(50), primary_key=True),
        sa.Column("metric_type", sa.String(50), primary_key=True),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("actor", sa.String(100), nullable=False),
        sa.Column("reason", sa.String(200), nullable=True),
        sa.Column("pinned_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "ml_drift_reports",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("model_type", sa.String(50), nullable=False),
        sa.Column("metric_type", sa.String(50), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("reference_samples", sa.Integer(), nullable=False),
        sa.Column("recent_samples", sa.Integer(), nullable=False),
        sa.Column("psi", sa.Float(), nullable=False),
        sa.Column("ks", sa.Float(), nullable=False),
        sa.Column("features", sa.JSON(), nullable=False),
        sa.Column("drifted", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("triggered", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("job_run_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_index("idx_ml_drift_reports_type_time", "ml_drift_reports", ["metric_type", "created_at"])


def downgrade():
    op.drop_table("ml_drift_reports")
    op.drop_table("ml_model_pins")
    op.drop_table("ml_gate_decisions")
