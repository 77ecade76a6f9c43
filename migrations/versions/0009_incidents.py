"""Incidents: ml_incidents, and a nullable ml_alerts.incident_id (additive; downgrade drops only these).

``ml_alerts`` is shared with the hotel app, which inserts rows naming none of
our columns: the new column is nullable with no default, so its inserts and
reads are unchanged.  Not a foreign key on purpose (as ``model_id``): the
alert keeps its incident number whatever retention does to either table, and
adding it needs no rebuild of the hotel app's table on SQLite.

Revision ID: 0009_incidents
Revises: 0008_alert_observation_set_null
"""
import sqlalchemy as sa
from alembic import op

revision = "0009_incidents"
down_revision = "0008_alert_observation_set_null"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "ml_incidents",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("metric_type", sa.String(50), nullable=False),
        sa.Column("entity_id", sa.Integer(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("alert_count", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("peak_score", sa.Float(), nullable=True),
        sa.Column("peak_value", sa.Float(), nullable=True),
        sa.Column("peak_observation_id", sa.Integer(), nullable=True),
        sa.Column("method", sa.String(40), nullable=True),
        sa.Column("model_id", sa.Integer(), nullable=True),
        sa.Column("is_false_positive", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("false_positive_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("severity IN ('low', 'medium', 'high', 'critical')", name="severity"),
    )
    op.create_index("idx_ml_incidents_entity_end", "ml_incidents", ["metric_type", "entity_id", "ended_at"])
    op.create_index("idx_ml_incidents_started", "ml_incidents", ["started_at"])
    with op.batch_alter_table("ml_alerts") as batch:
        batch.add_column(sa.Column("incident_id", sa.Integer(), nullable=True))
        batch.create_index("idx_ml_alerts_incident", ["incident_id"])


def downgrade():
    with op.batch_alter_table("ml_alerts") as batch:
        batch.drop_index("idx_ml_alerts_incident")
        batch.drop_column("incident_id")
    op.drop_table("ml_incidents")
