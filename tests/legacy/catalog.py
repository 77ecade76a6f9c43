"""What a PostgreSQL database's ML schema is, read from its catalog, to compare before and after."""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa

ML_TABLES = ("ml_models", "ml_metrics", "ml_alerts", "ml_training_logs", "ml_features", "ml_performance_logs",
             "kullanicilar")


def fingerprint(url: str) -> dict[str, Any]:
    """Columns (type, NOT NULL, default), indexes, constraints, triggers of the app's tables, and ml_* enums."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    tables = list(ML_TABLES)
    try:
        with engine.connect() as conn:
            columns = conn.execute(sa.text(
                "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, "
                "pg_get_expr(d.adbin, d.adrelid) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
                "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
                "WHERE c.relname = ANY(:t) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY 1, 2"),
                {"t": tables}).all()
            indexes = conn.execute(sa.text(
                "SELECT tablename, indexdef FROM pg_indexes WHERE tablename = ANY(:t) ORDER BY 1, 2"),
                {"t": tables}).all()
            constraints = conn.execute(sa.text(
                "SELECT c.relname, k.conname, pg_get_constraintdef(k.oid) FROM pg_constraint k "
                "JOIN pg_class c ON c.oid = k.conrelid WHERE c.relname = ANY(:t) ORDER BY 1, 2"),
                {"t": tables}).all()
            triggers = conn.execute(sa.text(
                "SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                "WHERE c.relname = ANY(:t) AND NOT t.tgisinternal ORDER BY 1, 2"), {"t": tables}).all()
            enums = conn.execute(sa.text(
                "SELECT t.typname, array_agg(e.enumlabel ORDER BY e.enumsortorder) FROM pg_type t "
                "JOIN pg_enum e ON e.enumtypid = t.oid WHERE t.typname LIKE 'ml\\_%' GROUP BY 1 ORDER BY 1")).all()
            present = conn.execute(sa.text(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")).scalars().all()
    finally:
        engine.dispose()
    return {
        "tables": [t for t in present if t != "ml_alembic_version"],
        "columns": [tuple(r) for r in columns], "indexes": [tuple(r) for r in indexes],
        "constraints": [tuple(r) for r in constraints], "triggers": [tuple(r) for r in triggers],
        "enums": {name: list(labels) for name, labels in enums},
    }


def orm_differences(url: str, models_dir: Any) -> list:
    """Alembic's autogenerate comparison of our ORM with the database: types and server defaults too.

    Only our tables count: the hotel app's own tables (``kullanicilar``,
    ``ml_training_logs``, ...) and its foreign key from ``ml_alerts`` to its
    users exist only where it does, and are not ours to create or compare.
    """
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from tests import dbutil
    from utils.extensions import db
    from utils.migration_lock import VERSION_TABLE

    def ours(obj: Any, name: str, type_: str, reflected: bool, compare_to: Any) -> bool:
        if type_ == "table":
            return name in db.metadata.tables
        if type_ == "foreign_key_constraint":
            return obj.referred_table.name in db.metadata.tables
        return True

    app = dbutil.make_app(url, models_dir)
    try:
        with app.app_context(), db.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={
                "compare_type": True, "compare_server_default": True, "version_table": VERSION_TABLE,
                "include_object": ours})
            return compare_metadata(context, db.metadata)
    finally:
        dbutil.dispose(app)
