"""Scans page through one metric type's observations by id: index (metric_type, id).

``run_scan`` reads ``WHERE metric_type = :t AND id > :watermark ORDER BY id
LIMIT :batch`` and ``max(id)`` per metric type; without this index PostgreSQL
walks the primary key and filters, which on a million rows of mixed metric
types costs a full scan per batch.

Revision ID: 0005_scan_index
Revises: 0004_pipeline_tables
"""
from alembic import op

revision = "0005_scan_index"
down_revision = "0004_pipeline_tables"
branch_labels = None
depends_on = None


def upgrade():
    op.create_index("idx_ml_metrics_type_id", "ml_metrics", ["metric_type", "id"])


def downgrade():
    op.drop_index("idx_ml_metrics_type_id", table_name="ml_metrics")
