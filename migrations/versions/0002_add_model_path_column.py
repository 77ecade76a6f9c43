"""Add model_path column to ml_models table (the seed's step).

Models move to files; ``model_data`` becomes nullable so file-backed rows need
no BLOB, while legacy rows keep theirs as the fallback.

An adopted database may have ``model_path`` already: ``varchar(255)`` (the
app's own script) or ``varchar(500)`` with ``idx_ml_models_path`` (its Alembic
revision ``ml_model_path_001``).  Only what is missing is added, a shorter
column is widened to 500 (no rewrite), and the ledger records it, so the
downgrade leaves the app's column and index as they were.

Revision ID: 0002_add_model_path_column
Revises: 0001_legacy_schema
"""
import sqlalchemy as sa
from alembic import op

from migrations import ledger

revision = "0002_add_model_path_column"
down_revision = "0001_legacy_schema"
branch_labels = None
depends_on = None

PATH_LENGTH = 500


def upgrade():
    ledger.ensure_ledger(revision)
    ledger.note(revision, {"applied_with_ledger": True})
    ledger.add_column(revision, "ml_models", sa.Column("model_path", sa.String(PATH_LENGTH), nullable=True))
    length = getattr(ledger.columns("ml_models")["model_path"]["type"], "length", None)
    if ledger.is_pg() and length is not None and length < PATH_LENGTH:
        ledger.alter_type(revision, "ml_models", "model_path", f"varchar({PATH_LENGTH})", "model_path",
                          back_using="model_path")
        # The undo narrows again: refuse (clearly) rather than truncate a longer path.
        ledger.record(revision, {"op": "sql", "statements": [_refuse_longer_than(length)]})
    ledger.set_nullable(revision, "ml_models", "model_data", True)
    ledger.create_index(revision, "idx_ml_models_path", "ml_models", ["model_path"])


def _refuse_longer_than(length: int) -> str:
    # PostgreSQL only (the only place a shorter column is adopted): fail, naming the rule.
    return (f"DO $$ BEGIN IF EXISTS (SELECT 1 FROM ml_models WHERE length(model_path) > {length}) THEN "
            f"RAISE EXCEPTION 'cannot downgrade: an ml_models.model_path is longer than {length} characters, "
            f"the length of the adopted column'; END IF; END $$")


def downgrade():
    # Revision 0003's downgrade has already copied every file-only model back
    # into model_data; a row still without bytes would be lost here, so stop.
    bind = op.get_bind()
    actions = ledger.recorded(revision)
    if not actions or any(a.get("nullable") is False and a.get("column") == "model_data" for a in actions):
        missing = bind.execute(sa.text("SELECT id FROM ml_models WHERE model_data IS NULL")).scalars().all()
        if missing:
            raise RuntimeError(
                f"cannot downgrade: ml_models rows {missing} have no model_data; "
                "restore their files or delete the rows first"
            )
    if actions:
        ledger.undo(revision)
        return
    # Applied by a release before the ledger existed: it created all three itself.
    with op.batch_alter_table("ml_models") as batch:
        batch.drop_index("idx_ml_models_path")
        batch.alter_column("model_data", existing_type=sa.LargeBinary(), nullable=False)
        batch.drop_column("model_path")
