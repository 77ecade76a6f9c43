"""Notification outbox: ml_notifications (additive; downgrade drops only this table).

Revision ID: 0007_notification_outbox
Revises: 0006_legacy_coexistence
"""
import sqlalchemy as sa
from alembic import op

revision = "0007_notification_outbox"
down_revision = "0006_legacy_coexistence"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "ml_notifications",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("subject", sa.String(200), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default=sa.text("'pending'")),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("held_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_owner", sa.String(120), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("digest_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("channel", "idempotency_key", name="uq_ml_notifications_channel_key"),
        sa.CheckConstraint("status IN ('pending', 'in_digest', 'delivered', 'dead')",
                           name="status"),  # becomes ck_ml_notifications_status (naming convention)
    )
    op.create_index("idx_ml_notifications_due", "ml_notifications", ["channel", "status", "next_attempt_at"])
    op.create_index("idx_ml_notifications_sent", "ml_notifications", ["channel", "status", "delivered_at"])
    op.create_index("idx_ml_notifications_digest", "ml_notifications", ["digest_id"])


def downgrade():
    # Dropping the table drops its indexes; nothing else was created here.
    op.drop_table("ml_notifications")
