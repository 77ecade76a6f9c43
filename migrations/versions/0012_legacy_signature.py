"""ml_models.input_signature and legacy_path: what a model takes as input, where an adopted file came from.

``input_signature`` (JSON, nullable) records what a model expects, so that
detection uses a model only when this service can compute its input:
``{"kind": "raw_value"}`` (a bare estimator on the value column, the BLOB
era), ``{"kind": "pipeline", ...}`` (our saved pipeline) or
``{"kind": "aggregate_features", "n_features": N, "features": [...]}`` (the
minibar app's file era: per-entity aggregates this service does not compute).

``legacy_path`` (nullable) keeps the absolute path a minibar-app row had in
``model_path`` when ``flask ml migrate`` adopted its file (copied into the
store; ``model_path`` then holds our key).  The downgrade puts those paths
back into ``model_path``, and on an adopted database gives the app's BLOB rows
that ``flask ml migrate`` copied their NULL ``model_path`` back, so the app's
rows read as they were adopted.

Both nullable, no default: the hotel app's inserts (which name neither) keep working.

Revision ID: 0012_legacy_signature
Revises: 0011_promotion
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from migrations.coexist import adopted

revision = "0012_legacy_signature"
down_revision = "0011_promotion"
branch_labels = None
depends_on = None


def upgrade():
    json_type = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
    with op.batch_alter_table("ml_models") as batch:
        batch.add_column(sa.Column("input_signature", json_type, nullable=True))
        batch.add_column(sa.Column("legacy_path", sa.String(500), nullable=True))


def downgrade():
    # An adopted row goes back to the path the minibar app wrote (its file is still there:
    # adoption copies, and cleanup never deletes a file a legacy_path names).
    op.execute("UPDATE ml_models SET model_path = legacy_path WHERE legacy_path IS NOT NULL")
    if adopted():
        # The app's BLOB rows we copied to files: back to "no path", as it wrote them.  Its code
        # reads model_path as a file path first and would not find our key (the BLOB is still there).
        op.get_bind().execute(sa.text(
            "UPDATE ml_models SET model_path = NULL WHERE legacy_path IS NULL AND sklearn_version IS NULL "
            "AND model_path IS NOT NULL AND model_data IS NOT NULL AND model_data <> :marker"),
            {"marker": b"FILE_BASED"})
    with op.batch_alter_table("ml_models") as batch:
        batch.drop_column("legacy_path")
        batch.drop_column("input_signature")
