"""Add model_path column to ml_models table (the seed's step).

Models move to files; ``model_data`` becomes nullable so file-backed rows need
no BLOB, while legacy rows keep theirs as the fallback.

Revision ID: 0002_add_model_path_column
Revises: 0001_legacy_schema
"""
import sqlalchemy as sa
from alembic import op

revision = "0002_add_model_path_column"
down_revision = "0001_legacy_schema"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("ml_models") as batch:
        batch.add_column(sa.Column("model_path", sa.String(500), nullable=True))
        batch.alter_column("model_data", existing_type=sa.LargeBinary(), nullable=True)
        batch.create_index("idx_ml_models_path", ["model_path"])


def downgrade():
    # Revision 0003's downgrade has already copied every file-only model back
    # into model_data; a row still without bytes would be lost here, so stop.
    bind = op.get_bind()
    missing = bind.execute(sa.text("SELECT id FROM ml_models WHERE model_data IS NULL")).scalars().all()
    if missing:
        raise RuntimeError(
            f"cannot downgrade: ml_models rows {missing} have no model_data; "
            "restore their files or delete the rows first"
        )
    with op.batch_alter_table("ml_models") as batch:
        batch.drop_index("idx_ml_models_path")
        batch.alter_column("model_data", existing_type=sa.LargeBinary(), nullable=False)
        batch.drop_column("model_path")
