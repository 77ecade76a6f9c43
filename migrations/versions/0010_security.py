"""Web security: ml_auth_failures (sign-in rate limit) and ml_revoked_sessions (sign-out).

Additive; downgrade drops only these two tables.

Revision ID: 0010_security
Revises: 0009_incidents
"""
import sqlalchemy as sa
from alembic import op

revision = "0010_security"
down_revision = "0009_incidents"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "ml_auth_failures",
        sa.Column("client", sa.String(64), primary_key=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("window_started", sa.Float(), nullable=False),
        sa.Column("locked_until", sa.Float(), nullable=False),
    )
    op.create_index("idx_ml_auth_failures_window", "ml_auth_failures", ["window_started"])
    op.create_table(
        "ml_revoked_sessions",
        sa.Column("session_id", sa.String(64), primary_key=True),
        sa.Column("expires_at", sa.Float(), nullable=False),
    )
    op.create_index("idx_ml_revoked_sessions_expires", "ml_revoked_sessions", ["expires_at"])


def downgrade():
    op.drop_table("ml_revoked_sessions")
    op.drop_table("ml_auth_failures")
