"""Reversible schema steps whose undo is recorded in the database itself.

A revision that adopts or reconciles a schema it did not create cannot know,
when it is written, what each database already had: the minibar app's tables
come in several states (``LEGACY.md``), our own earlier releases in another.
So each step looks first, changes only what is missing or different, and
writes the exact undo into ``ml_migration_ledger``.  ``downgrade`` replays the
undo of its revision, newest first: nothing that existed before is dropped,
and every column type, NOT NULL and default goes back to what it was.

Undo actions are plain JSON: ``drop_column``, ``drop_index``, ``drop_table``,
``drop_type``, ``drop_trigger``, ``alter_column`` (type / NOT NULL / default),
``sql`` (data statements) and ``enum_labels`` (labels a column needs before it
becomes that enum again; PostgreSQL only adds labels, it cannot drop them).
"""
from __future__ import annotations

import json
import logging
from typing import Any, Optional

import sqlalchemy as sa
from alembic import op

LEDGER = "ml_migration_ledger"
logger = logging.getLogger("alembic.env")


def bind() -> sa.engine.Connection:
    return op.get_bind()


def is_pg() -> bool:
    return bind().dialect.name == "postgresql"


def has_table(name: str) -> bool:
    return sa.inspect(bind()).has_table(name)


def columns(table: str) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in sa.inspect(bind()).get_columns(table)}


def index_names(table: str) -> set[str]:
    return {i["name"] for i in sa.inspect(bind()).get_indexes(table)}


def pg_type(table: str, column: str) -> str:
    """The column's type as PostgreSQL spells it (``character varying(50)``, ``ml_metric_type``...)."""
    return bind().execute(sa.text(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = CAST(:t AS regclass) AND attname = :c"), {"t": table, "c": column}).scalar_one()


def pg_default(table: str, column: str) -> Optional[str]:
    return bind().execute(sa.text(
        "SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d JOIN pg_attribute a "
        "ON a.attrelid = d.adrelid AND a.attnum = d.adnum "
        "WHERE d.adrelid = CAST(:t AS regclass) AND a.attname = :c"), {"t": table, "c": column}).scalar()


def pg_enum_labels(name: str) -> Optional[list[str]]:
    """The labels of enum type ``name`` in order, or None when there is no such type."""
    rows = bind().execute(sa.text(
        "SELECT e.enumlabel FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid "
        "WHERE t.typname = :n ORDER BY e.enumsortorder"), {"n": name}).scalars().all()
    exists = bind().execute(sa.text("SELECT 1 FROM pg_type WHERE typname = :n"), {"n": name}).scalar()
    return list(rows) if exists else None


# ------------------------------------------------------------------ the ledger table
def ensure_ledger(revision: str) -> None:
    """Create the ledger if it is missing; the revision that created it drops it last on its way down."""
    if has_table(LEDGER):
        return
    op.create_table(
        LEDGER,
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("revision", sa.String(64), nullable=False),
        sa.Column("action", sa.JSON(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    record(revision, {"op": "drop_table", "table": LEDGER})


def record(revision: str, undo: dict[str, Any]) -> None:
    """Remember how to undo one step of ``revision``."""
    bind().execute(sa.text(f"INSERT INTO {LEDGER} (revision, action) VALUES (:r, :a)"),
                   {"r": revision, "a": json.dumps(undo)})


def note(revision: str, what: dict[str, Any]) -> None:
    """Record a fact (``op: note``): nothing to undo, kept for operators and tests."""
    record(revision, {"op": "note", **what})


def recorded(revision: str) -> list[dict[str, Any]]:
    if not has_table(LEDGER):
        return []
    rows = bind().execute(sa.text(f"SELECT action FROM {LEDGER} WHERE revision = :r ORDER BY id"),
                          {"r": revision}).scalars().all()
    return [json.loads(r) if isinstance(r, str) else r for r in rows]


def undo(revision: str) -> None:
    """Replay the recorded undo of ``revision``, newest first, then forget it."""
    actions = recorded(revision)
    for action in reversed(actions):
        if action["op"] == "drop_table" and action["table"] == LEDGER:
            continue  # the ledger goes last: the actions are read from it
        _apply(action)
    if has_table(LEDGER):
        bind().execute(sa.text(f"DELETE FROM {LEDGER} WHERE revision = :r"), {"r": revision})
    if any(a["op"] == "drop_table" and a["table"] == LEDGER for a in actions):
        op.drop_table(LEDGER)


# ------------------------------------------------------------------ reversible steps
def add_column(revision: str, table: str, column: sa.Column) -> bool:
    """Add ``column`` unless the table has it; True when it was added."""
    if column.name in columns(table):
        return False
    with op.batch_alter_table(table) as batch:
        batch.add_column(column)
    record(revision, {"op": "drop_column", "table": table, "column": column.name})
    return True


def create_index(revision: str, name: str, table: str, cols: list[str], **kw: Any) -> bool:
    if name in index_names(table):
        return False
    op.create_index(name, table, cols, **kw)
    record(revision, {"op": "drop_index", "table": table, "name": name})
    return True


def create_enum(revision: str, name: str, labels: tuple[str, ...]) -> None:
    """PostgreSQL: create enum ``name`` if missing, else add the labels it lacks (labels are never removed)."""
    existing = pg_enum_labels(name)
    if existing is None:
        quoted = ", ".join(f"'{label}'" for label in labels)
        op.execute(f"CREATE TYPE {name} AS ENUM ({quoted})")
        record(revision, {"op": "drop_type", "name": name})
        return
    for label in labels:
        if label not in existing:
            op.execute(f"ALTER TYPE {name} ADD VALUE IF NOT EXISTS '{label}'")
            note(revision, {"added_label": label, "type": name})


def set_nullable(revision: str, table: str, column: str, nullable: bool,
                 before_not_null: Optional[list[str]] = None) -> None:
    """Change NOT NULL; the undo runs ``before_not_null`` (SQL) first when it has to re-add NOT NULL."""
    info = columns(table)[column]
    if bool(info["nullable"]) == nullable:
        return
    with op.batch_alter_table(table) as batch:
        batch.alter_column(column, existing_type=info["type"], nullable=nullable)
    undo_action: dict[str, Any] = {"op": "alter_column", "table": table, "column": column,
                                   "nullable": not nullable}
    if nullable and before_not_null:
        undo_action["before"] = before_not_null
    record(revision, undo_action)


def set_default(revision: str, table: str, column: str, default_sql: str) -> None:
    """Give ``column`` a server default; the undo puts back the previous one (or none)."""
    if is_pg():
        previous = pg_default(table, column)
        if previous == default_sql:
            return
        op.execute(f'ALTER TABLE {table} ALTER COLUMN "{column}" SET DEFAULT {default_sql}')
    else:
        info = columns(table)[column]
        previous = info.get("default")
        if previous is not None:
            return
        with op.batch_alter_table(table) as batch:
            batch.alter_column(column, existing_type=info["type"], existing_nullable=info["nullable"],
                               server_default=sa.text(default_sql))
    record(revision, {"op": "alter_column", "table": table, "column": column, "default": previous,
                      "set_default": True})


def alter_type(revision: str, table: str, column: str, new_type: str, using: str,
               back_using: str, back_labels: Optional[dict[str, Any]] = None) -> bool:
    """PostgreSQL: change a column's type (``USING``); the undo restores the old type with ``back_using``."""
    old_type = pg_type(table, column)
    if old_type == new_type:
        return False
    op.execute(f'ALTER TABLE {table} ALTER COLUMN "{column}" TYPE {new_type} USING {using}')
    action: dict[str, Any] = {"op": "alter_column", "table": table, "column": column,
                              "type": old_type, "using": back_using}
    record(revision, action)
    if back_labels:  # recorded after, so it runs before the type change on the way down
        record(revision, {"op": "enum_labels", **back_labels})
    return True


def data(revision: str, statements: list[str], undo_statements: list[str]) -> None:
    """Run data statements now; record the statements that undo them."""
    for statement in statements:
        op.execute(statement)
    if undo_statements:
        record(revision, {"op": "sql", "statements": undo_statements})


# ------------------------------------------------------------------ replay
def _apply(action: dict[str, Any]) -> None:
    kind = action["op"]
    if kind == "note":
        return
    if kind == "drop_column":
        with op.batch_alter_table(action["table"]) as batch:
            batch.drop_column(action["column"])
    elif kind == "drop_index":
        op.drop_index(action["name"], table_name=action["table"])
    elif kind == "drop_table":
        op.drop_table(action["table"])
    elif kind == "drop_type":
        op.execute(f"DROP TYPE IF EXISTS {action['name']}")
    elif kind == "drop_trigger":
        op.execute(f"DROP TRIGGER IF EXISTS {action['trigger']} ON {action['table']}")
        op.execute(f"DROP FUNCTION IF EXISTS {action['function']}()")
    elif kind == "sql":
        for statement in action["statements"]:
            op.execute(statement)
    elif kind == "enum_labels":
        _ensure_labels(action)
    elif kind == "alter_column":
        _alter_back(action)
    else:  # pragma: no cover - a ledger written by a newer release
        raise RuntimeError(f"cannot undo unknown ledger action {action!r}")


def _ensure_labels(action: dict[str, Any]) -> None:
    """Add every value the column holds to the enum it is about to become (committed first)."""
    labels = set(pg_enum_labels(action["type"]) or [])
    present = bind().execute(sa.text(
        f'SELECT DISTINCT "{action["column"]}" FROM {action["table"]}')).scalars().all()
    missing = sorted(str(v) for v in present if v is not None and str(v) not in labels)
    if not missing:
        return
    logger.warning("adding %s to enum %s so that %s.%s can return to it", missing, action["type"],
                   action["table"], action["column"])
    with op.get_context().autocommit_block():  # a new label cannot be used in the transaction that adds it
        for label in missing:
            op.execute(f"ALTER TYPE {action['type']} ADD VALUE IF NOT EXISTS '{label}'")


def _alter_back(action: dict[str, Any]) -> None:
    table, column = action["table"], action["column"]
    for statement in action.get("before", []):
        op.execute(statement)
    if "type" in action:
        op.execute(f'ALTER TABLE {table} ALTER COLUMN "{column}" TYPE {action["type"]} USING {action["using"]}')
    if "nullable" in action:
        info = columns(table)[column]
        with op.batch_alter_table(table) as batch:
            batch.alter_column(column, existing_type=info["type"], nullable=action["nullable"])
    if action.get("set_default"):
        previous = action["default"]
        if is_pg():
            clause = "DROP DEFAULT" if previous is None else f"SET DEFAULT {previous}"
            op.execute(f'ALTER TABLE {table} ALTER COLUMN "{column}" {clause}')
        else:
            info = columns(table)[column]
            with op.batch_alter_table(table) as batch:
                batch.alter_column(column, existing_type=info["type"], existing_nullable=info["nullable"],
                                   server_default=None if previous is None else sa.text(previous))
