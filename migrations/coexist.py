"""What the adopting and reconciling revisions share about the hotel app's tables."""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from migrations import ledger
from migrations.vocab import metric_for_alert_sql

FILL_TRIGGER = "ml_alerts_fill_metric_type"


def snapshot(tables: list[str]) -> dict:
    """What the adopted tables had: columns (type, NOT NULL, default), indexes, and the app's enum types."""
    shot: dict = {"tables": {}, "types": {}}
    for table in tables:
        cols = {}
        for name, info in ledger.columns(table).items():
            cols[name] = {
                "type": ledger.pg_type(table, name) if ledger.is_pg() else str(info["type"]),
                "nullable": bool(info["nullable"]),
                "default": ledger.pg_default(table, name) if ledger.is_pg() else info.get("default"),
            }
        shot["tables"][table] = {"columns": cols, "indexes": sorted(ledger.index_names(table))}
    if ledger.is_pg():
        for name in ("ml_metric_type", "ml_alert_type", "ml_alert_severity"):
            shot["types"][name] = ledger.pg_enum_labels(name)
    return shot


def install_fill_trigger(rev: str) -> None:
    """PostgreSQL: fill ``metric_type`` (and ``detected_at`` from ``created_at``) for the app's inserts.

    The hotel app inserts alerts with its own columns only; without this its
    rows would have no metric type and be invisible to our filters.  A row
    that names its metric type (ours) is left as it is.
    """
    exists = ledger.bind().execute(sa.text(
        "SELECT 1 FROM pg_trigger WHERE tgname = :n AND NOT tgisinternal"), {"n": FILL_TRIGGER}).scalar()
    if exists:
        return
    op.execute(f"""
        CREATE OR REPLACE FUNCTION {FILL_TRIGGER}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.metric_type IS NULL THEN
                NEW.metric_type := {metric_for_alert_sql('NEW.alert_type::text')};
                NEW.detected_at := COALESCE(NEW.created_at, NEW.detected_at);
            END IF;
            RETURN NEW;
        END $$""")
    op.execute(f"CREATE TRIGGER {FILL_TRIGGER} BEFORE INSERT ON ml_alerts "
               f"FOR EACH ROW EXECUTE FUNCTION {FILL_TRIGGER}()")
    ledger.record(rev, {"op": "drop_trigger", "table": "ml_alerts", "trigger": FILL_TRIGGER,
                        "function": FILL_TRIGGER})


def adopted() -> bool:
    """True when revision 0001 adopted tables the minibar app had created."""
    return any(a["op"] == "note" and "adopted" in a for a in ledger.recorded("0001_legacy_schema"))
