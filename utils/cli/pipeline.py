"""``flask ml demo-data | import-metrics | train | scan``: the anomaly pipeline from a shell.

A thin layer over :mod:`utils.ml.pipeline.demo_data`,
:mod:`utils.ml.pipeline.observations`, :mod:`utils.ml.pipeline.csv_import`
and the job runner: ``train`` and ``scan`` run the ``train_models`` and
``anomaly_scan`` jobs exactly as the API and the scheduler do (one recorded
run each, trigger ``cli``; refused while the same job runs anywhere) and print
the run's result.  Failures exit 1 with one line on stderr
(:func:`utils.cli.cli_error`).
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

import click

from utils.cli import CLI_ACTOR, dump_json, fail, format_table, ml_cli
from utils.ml.jobs import TRIGGER_CLI, JobError, run_job_now
from utils.ml.pipeline.observations import check_observed_metric_type

_TRAIN_COLUMNS = (
    ("metric_type", "metric type"), ("status", "status"), ("model_id", "model id"), ("samples", "samples"),
    ("entities", "entities"), ("labelled", "labelled"), ("accuracy", "accuracy"), ("precision", "precision"),
    ("recall", "recall"), ("seconds", "seconds"), ("note", "note"),
)
PROMOTE_HELP = ("auto: the gate compares the new version with the active one and promotes it only if it passes; "
                "never: keep it as a challenger; always: activate it whatever the gate says. A pinned type is never "
                "changed.")
_SCAN_COLUMNS = (
    ("metric_type", "metric type"), ("scanned", "scanned"), ("alerts", "alerts"), ("method", "method"),
    ("model_id", "model id"), ("source", "source"), ("load_ms", "load ms"), ("note", "note"),
)


def _run_job(name: str, **params: Any) -> tuple[Any, Optional[JobError]]:
    """Run job ``name`` through the job runner as the CLI: ``(result, None)``, or
    ``(partial result, the JobError)`` when it ran but did not do all of its work."""
    try:
        return run_job_now(name, CLI_ACTOR, trigger=TRIGGER_CLI, **params)["result"], None
    except JobError as exc:
        return exc.result, exc


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
@click.option("--realistic", is_flag=True,
              help="The evaluation simulator's hotel instead (profiles, holidays, shifts, labelled event windows; "
                   "also energy meters); --days defaults to 90 there.")
def demo_data_command(rooms: int, products: int, attendants: int, days: int, seed: Optional[int],
                      anomaly_rate: Optional[float], end: Optional[datetime], if_empty: bool, realistic: bool) -> None:
    """Insert realistic minibar observations with labelled anomalies (global and contextual)."""
    from utils.ml.pipeline.demo_data import DEFAULT_ANOMALY_RATE, DEFAULT_SEED, generate_demo_data, has_observations

    if if_empty and has_observations():
        click.echo("Observations already present: no demo data added.")
        return
    if realistic:
        _realistic(rooms, products, attendants, days, seed, anomaly_rate, end)
        return

    result = generate_demo_data(
        rooms=rooms, products=products, attendants=attendants, days=days,
        seed=DEFAULT_SEED if seed is None else seed, end=end,
        anomaly_rate=DEFAULT_ANOMALY_RATE if anomaly_rate is None else anomaly_rate,
    )
    click.echo(f"Inserted {result['observations']} observations from {result['start']} to {result['end']} "
               f"(seed {result['seed']}, {result['seconds']}s):")
    rows = [{"metric_type": name, **counts} for name, counts in result["by_metric_type"].items()]
    for line in format_table(rows, (("metric_type", "metric type"), ("observations", "observations"),
                                    ("entities", "entities"), ("global", "global anomalies"),
                                    ("contextual", "contextual anomalies"))):
        click.echo(line)


def _realistic(rooms: int, products: int, attendants: int, days: int, seed: Optional[int],
               anomaly_rate: Optional[float], end: Optional[datetime]) -> None:
    from utils.ml.pipeline.realistic_demo import generate_realistic_demo

    source = click.get_current_context().get_parameter_source("days")
    options = {"rooms": rooms, "products": products, "attendants": attendants, "seed": 1 if seed is None else seed,
               "days": 90 if source == click.core.ParameterSource.DEFAULT else days, "end": end}
    if anomaly_rate is not None:
        options["anomaly_rate"] = anomaly_rate
    result = generate_realistic_demo(**options)
    click.echo(f"Inserted {result['observations']} simulated observations from {result['start']} to "
               f"{result['end']} (seed {result['seed']}, {result['events']} labelled events, {result['seconds']}s):")
    kinds = sorted({k for v in result["by_metric_type"].values() for k in v} - {"observations", "entities", "events"})
    rows = [{"metric_type": name, **counts} for name, counts in result["by_metric_type"].items()]
    for line in format_table(rows, [("metric_type", "metric type"), ("observations", "observations"),
                                    ("entities", "entities"), ("events", "events")] + [(k, k) for k in kinds]):
        click.echo(line)


@ml_cli.command("import-metrics")
@click.argument("csv_file", type=click.Path(dir_okay=False, path_type=str))
def import_metrics_command(csv_file: str) -> None:
    """Import observations from CSV_FILE, all or nothing.

    Header row required: metric_type, entity_id, metric_value, timestamp
    (ISO 8601; no zone = UTC) and optionally extra_data (a JSON object).
    """
    from utils.ml.pipeline.csv_import import import_csv

    count = import_csv(csv_file)
    click.echo(f"Imported {count} observations from {csv_file}")


def _train_note(row: dict[str, Any]) -> Optional[str]:
    if row.get("status") in ("skipped", "unchanged"):
        return row.get("skipped")
    if row.get("promotion"):
        return f"{row['promotion']['decision']}: {row['promotion']['reason']}"
    if row.get("status") == "failed":
        return row.get("error")
    if row.get("accuracy") is None and row.get("status") == "trained":
        return "no labelled held-out observations: metrics NULL"
    return None


@ml_cli.command("train")
@click.option("--metric-type", default=None, help="Only this metric type (default: every one with data).")
@click.option("--promote", type=click.Choice(["auto", "never", "always"]), default="auto", show_default=True,
              help=PROMOTE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def train_command(metric_type: Optional[str], promote: str, as_json: bool) -> None:
    """Train one Isolation Forest per metric type on the recent window; the gate decides what becomes active.

    Same data and settings as a kept version: no new version (status
    unchanged).  Runs the train_models job (recorded in ml_job_runs, trigger
    cli); exits 1 without training while training runs in any process, and
    after printing the table when any metric type failed.
    """
    params: dict[str, Any] = {"metric_type": check_observed_metric_type(metric_type, "trained on")} \
        if metric_type else {}
    if promote != "auto":
        params["promote"] = promote
    results, failure = _run_job("train_models", **params)
    if as_json:
        click.echo(dump_json(results))
    elif not results:
        click.echo("Nothing to train: no observations in the training window.")
    else:
        for line in format_table([{**r, "note": _train_note(r)} for r in results], _TRAIN_COLUMNS):
            click.echo(line)
    if failure is not None:
        raise fail(f"{failure}; see the table above")


@ml_cli.command("scan")
@click.option("--metric-type", default=None, help="Only this metric type (default: every one with new data).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a summary.")
def scan_command(metric_type: Optional[str], as_json: bool) -> None:
    """Score observations that arrived since the last scan and record one alert per anomaly.

    Runs the anomaly_scan job (recorded in ml_job_runs, trigger cli); exits 1
    without scanning while a scan runs in any process, and after printing the
    summary when any metric type failed.
    """
    params = {"metric_type": check_observed_metric_type(metric_type, "scanned")} if metric_type else {}
    result, failure = _run_job("anomaly_scan", **params)
    if as_json:
        click.echo(dump_json(result))
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
    if failure is not None:
        raise fail(f"{failure}; see the table above")
