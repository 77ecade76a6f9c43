"""``flask ml demo-data | import-metrics | train | scan``: the anomaly pipeline from a shell.

A thin layer over :mod:`utils.ml.demo_data`, :mod:`utils.ml.observations`,
:mod:`utils.ml.model_trainer` and :mod:`utils.ml.scan`.  Failures exit 1 with
one line on stderr (``raise fail(...)``).
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Callable, Optional

import click
from sqlalchemy.exc import SQLAlchemyError

from utils.ml.cli import fail, ml_cli
from utils.ml.cli_models import _dump_json, format_table
from utils.ml.model_manager import ModelManagerError
from utils.ml.observations import ObservationValidationError
from utils.ml.storage import ModelStoreError

_TRAIN_COLUMNS = (
    ("metric_type", "metric type"), ("status", "status"), ("model_id", "model id"), ("samples", "samples"),
    ("entities", "entities"), ("labelled", "labelled"), ("accuracy", "accuracy"), ("precision", "precision"),
    ("recall", "recall"), ("seconds", "seconds"), ("note", "note"),
)
_SCAN_COLUMNS = (
    ("metric_type", "metric type"), ("scanned", "scanned"), ("alerts", "alerts"), ("method", "method"),
    ("model_id", "model id"), ("source", "source"), ("load_ms", "load ms"), ("note", "note"),
)


def _run(action: Callable[[], Any]) -> Any:
    """Run ``action``; refusals and database errors become a one-line failure."""
    from utils.extensions import db

    try:
        return action()
    except ObservationValidationError as exc:
        raise fail(_validation_line(exc)) from exc
    except (ValueError, ModelManagerError, ModelStoreError, OSError) as exc:
        db.session.rollback()
        raise fail(str(exc)) from exc
    except SQLAlchemyError as exc:
        db.session.rollback()
        first = str(exc.orig if getattr(exc, "orig", None) is not None else exc).strip().splitlines()[0]
        raise fail(f"database error ({exc.__class__.__name__}): {first}; is the schema at head (flask db upgrade)?") \
            from exc


def _validation_line(exc: ObservationValidationError) -> str:
    """All problems on one line: ``line 3, column metric_value: must be a number; ...``."""
    parts = []
    for error in exc.errors[:10]:
        where = []
        if error.get("line") is not None:
            where.append(f"line {error['line']}")
        if error.get("column"):
            where.append(f"column {error['column']}")
        parts.append(f"{', '.join(where)}: {error['rule']}" if where else str(error["rule"]))
    more = f" (+{len(exc.errors) - 10} more)" if len(exc.errors) > 10 else ""
    return f"nothing imported: {'; '.join(parts)}{more}"


@ml_cli.command("demo-data")
@click.option("--rooms", type=click.IntRange(min=1), default=120, show_default=True, help="Rooms (tuketim_miktar).")
@click.option("--products", type=click.IntRange(min=1), default=40, show_default=True,
              help="Minibar products (stok_seviye).")
@click.option("--attendants", type=click.IntRange(min=1), default=8, show_default=True,
              help="Floor attendants (dolum_sure).")
@click.option("--days", type=click.IntRange(min=1), default=60, show_default=True, help="Days of history, up to now.")
@click.option("--seed", type=int, default=None, help="Random seed (default: the fixed demo seed).")
@click.option("--anomaly-rate", type=click.FloatRange(0.0, 0.2), default=None,
              help="Share of each metric's observations made anomalous, per kind (default 0.01).")
@click.option("--end", type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]), default=None,
              help="Last moment of the data, UTC (default: now).")
@click.option("--if-empty", is_flag=True, help="Do nothing if there are observations already (the quick start).")
def demo_data_command(rooms: int, products: int, attendants: int, days: int, seed: Optional[int],
                      anomaly_rate: Optional[float], end: Optional[datetime], if_empty: bool) -> None:
    """Insert realistic minibar observations with labelled anomalies (global and contextual)."""
    from utils.ml.demo_data import DEFAULT_ANOMALY_RATE, DEFAULT_SEED, generate_demo_data, has_observations

    if if_empty and _run(has_observations):
        click.echo("Observations already present: no demo data added.")
        return

    result = _run(lambda: generate_demo_data(
        rooms=rooms, products=products, attendants=attendants, days=days,
        seed=DEFAULT_SEED if seed is None else seed, end=end,
        anomaly_rate=DEFAULT_ANOMALY_RATE if anomaly_rate is None else anomaly_rate,
    ))
    click.echo(f"Inserted {result['observations']} observations from {result['start']} to {result['end']} "
               f"(seed {result['seed']}, {result['seconds']}s):")
    rows = [{"metric_type": name, **counts} for name, counts in result["by_metric_type"].items()]
    for line in format_table(rows, (("metric_type", "metric type"), ("observations", "observations"),
                                    ("entities", "entities"), ("global", "global anomalies"),
                                    ("contextual", "contextual anomalies"))):
        click.echo(line)


@ml_cli.command("import-metrics")
@click.argument("csv_file", type=click.Path(dir_okay=False, path_type=str))
def import_metrics_command(csv_file: str) -> None:
    """Import observations from CSV_FILE, all or nothing.

    Header row required: metric_type, entity_id, metric_value, timestamp
    (ISO 8601; no zone = UTC) and optionally extra_data (a JSON object).
    """
    from utils.ml.observations import import_csv

    count = _run(lambda: import_csv(csv_file))
    click.echo(f"Imported {count} observations from {csv_file}")


def _train_note(row: dict[str, Any]) -> Optional[str]:
    if row.get("status") == "skipped":
        return row.get("skipped")
    if row.get("status") == "failed":
        return row.get("error")
    if row.get("accuracy") is None and row.get("status") == "trained":
        return "no labelled held-out observations: metrics NULL"
    return None


@ml_cli.command("train")
@click.option("--metric-type", default=None, help="Only this metric type (default: every one with data).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def train_command(metric_type: Optional[str], as_json: bool) -> None:
    """Train one Isolation Forest per metric type on the recent window and activate it."""
    from utils.ml.model_trainer import train_models

    results = _run(lambda: train_models(metric_type=metric_type, actor="cli"))
    if as_json:
        click.echo(_dump_json(results))
    elif not results:
        click.echo("Nothing to train: no observations in the training window.")
    else:
        for line in format_table([{**r, "note": _train_note(r)} for r in results], _TRAIN_COLUMNS):
            click.echo(line)
    if results and all(r.get("status") == "failed" for r in results):
        raise fail(f"training failed for every metric type: {results[0].get('error')}")


@ml_cli.command("scan")
@click.option("--metric-type", default=None, help="Only this metric type (default: every one with new data).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a summary.")
def scan_command(metric_type: Optional[str], as_json: bool) -> None:
    """Score observations that arrived since the last scan and record one alert per anomaly."""
    from utils.ml.scan import run_scan

    result = _run(lambda: run_scan(metric_type=metric_type))
    if as_json:
        click.echo(_dump_json(result))
    else:
        click.echo(f"Scanned {result['scanned']} observations, {result['alerts']} new alerts "
                   f"({result['seconds']}s).")
        rows = []
        for name, summary in result["metric_types"].items():
            note = summary.get("error") or "; ".join(summary.get("fallback_reasons") or []) or None
            rows.append({**summary, "metric_type": name, "note": note})
        if rows:
            for line in format_table(rows, _SCAN_COLUMNS):
                click.echo(line)
    if result.get("errors"):
        raise fail(f"scan failed for {result['errors']} metric type(s); see the table above")
