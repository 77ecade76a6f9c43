"""Integrity of file-backed models: checksum, size, library versions, one active row.

Also repairs what the legacy code could leave behind: several active rows for
one (model_type, metric_type).  The newest (highest id) stays active, then a
partial unique index makes a second active row impossible.

Revision ID: 0003_model_integrity
Revises: 0002_add_model_path_column
"""
import gzip
import hashlib
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0003_model_integrity"
down_revision = "0002_add_model_path_column"
branch_labels = None
depends_on = None

VERSION_COLUMNS = ("sklearn_version", "numpy_version", "python_version")


def upgrade():
    with op.batch_alter_table("ml_models") as batch:
        batch.add_column(sa.Column("checksum_sha256", sa.String(64), nullable=True))
        batch.add_column(sa.Column("size_bytes", sa.BigInteger(), nullable=True))
        for name in VERSION_COLUMNS:
            batch.add_column(sa.Column(name, sa.String(32), nullable=True))

    models = sa.table("ml_models", sa.column("id"), sa.column("model_type"),
                      sa.column("metric_type"), sa.column("is_active"))
    newest_active = (
        sa.select(sa.func.max(models.c.id))
        .where(models.c.is_active == sa.true())
        .group_by(models.c.model_type, models.c.metric_type)
    )
    op.execute(
        models.update()
        .where(models.c.is_active == sa.true(), models.c.id.not_in(newest_active.scalar_subquery()))
        .values(is_active=False)
    )
    op.create_index(
        "uq_ml_models_one_active", "ml_models", ["model_type", "metric_type"], unique=True,
        postgresql_where=sa.text("is_active"), sqlite_where=sa.text("is_active"),
    )


def _models_dir() -> Path:
    from flask import current_app  # migrations run inside the app (Flask-Migrate)

    return Path(current_app.config["ML_MODELS_DIR"]).resolve()


def downgrade():
    # The older schema cannot verify files, so copy every file-only model back
    # into model_data first (checksum-verified): nothing is lost on the way down.
    bind = op.get_bind()
    rows = bind.execute(sa.text(
        "SELECT id, model_path, checksum_sha256 FROM ml_models "
        "WHERE model_data IS NULL AND model_path IS NOT NULL"
    )).all()
    if rows:
        root = _models_dir()
        for row_id, key, checksum in rows:
            path = (root / key).resolve()
            if not path.is_relative_to(root) or not path.is_file():
                raise RuntimeError(f"cannot downgrade: model {row_id}'s file {key!r} is missing")
            data = path.read_bytes()
            if checksum and hashlib.sha256(data).hexdigest() != checksum:
                raise RuntimeError(f"cannot downgrade: model {row_id}'s file {key!r} fails its checksum")
            if key.endswith(".gz"):
                data = gzip.decompress(data)
            bind.execute(sa.text("UPDATE ml_models SET model_data = :d WHERE id = :i"), {"d": data, "i": row_id})

    op.drop_index("uq_ml_models_one_active", table_name="ml_models")
    with op.batch_alter_table("ml_models") as batch:
        for name in reversed(VERSION_COLUMNS):
            batch.drop_column(name)
        batch.drop_column("size_bytes")
        batch.drop_column("checksum_sha256")
