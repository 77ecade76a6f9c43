"""``flask ml pins | unpin | compare | drift``: promotion and drift from a shell.

Thin over :mod:`utils.ml.promotion`; ``drift`` runs the ``drift_check`` job
through the job runner (trigger cli), exactly as the API and the scheduler do.
"""
from __future__ import annotations

from typing import Any, Optional

import click

from utils.cli import CLI_ACTOR, dump_json, fail, format_table, ml_cli
from utils.ml.jobs import TRIGGER_CLI, JobError, run_job_now
from utils.ml.pipeline.features import MODEL_TYPE


@ml_cli.command("pins")
def pins_command() -> None:
    """List pinned types: training never changes their active version until unpinned."""
    from utils.extensions import db
    from utils.ml.promotion.pins import list_pins

    rows = list_pins(db.session)
    db.session.rollback()
    if not rows:
        click.echo("No pinned type: training promotes through the gate.")
        return
    for line in format_table([{**r, "pinned_at": r["pinned_at"].isoformat(timespec="seconds")} for r in rows], (
            ("model_type", "model type"), ("metric_type", "metric type"), ("model_id", "model id"),
            ("actor", "pinned by"), ("pinned_at", "at"), ("reason", "why"))):
        click.echo(line)


@ml_cli.command("unpin")
@click.option("--metric-type", required=True, help="The type to unpin.")
@click.option("--model-type", default=MODEL_TYPE, show_default=True)
@click.option("--reason", default=None, help="Recorded in the promotion audit.")
def unpin_command(metric_type: str, model_type: str, reason: Optional[str]) -> None:
    """Remove a type's pin: the next training's gate may promote again."""
    from utils.extensions import db
    from utils.ml.promotion.pins import unpin

    if unpin(db.session, model_type, metric_type, CLI_ACTOR, reason):
        click.echo(f"{model_type}/{metric_type} unpinned: automatic promotion resumes")
    else:
        click.echo(f"{model_type}/{metric_type} had no pin; nothing changed")


def _side(gate: dict[str, Any], name: str) -> str:
    side = gate.get(name) or {}
    text = f"alert rate {side.get('alert_rate')}"
    if side.get("f1") is not None:
        text += f", precision {side.get('precision')}, recall {side.get('recall')}, F1 {side.get('f1')}"
    return text


@ml_cli.command("compare")
@click.option("--metric-type", required=True)
@click.option("--model-type", default=MODEL_TYPE, show_default=True)
@click.option("--challenger-id", type=click.IntRange(min=1), default=None,
              help="Default: the newest kept version that is not active.")
@click.option("--days", type=click.IntRange(1, 90), default=None, help="Default: ML_GATE_WINDOW_DAYS.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (histograms included).")
def compare_command(metric_type: str, model_type: str, challenger_id: Optional[int], days: Optional[int],
                    as_json: bool) -> None:
    """Champion vs challenger on the last days: rates, P/R/F1 with labels, overlap, score shift."""
    from utils.ml.model_manager import get_model_manager
    from utils.ml.promotion.compare import compare

    result = compare(get_model_manager(), metric_type, model_type=model_type, challenger_id=challenger_id, days=days)
    if as_json:
        click.echo(dump_json(result))
        return
    click.echo(f"{model_type}/{metric_type}: champion {result['champion_id']} vs challenger "
               f"{result['challenger_id']}, {result['observations']} observations in the last {result['days']} days")
    if result["pin"]:
        click.echo(f"pinned to {result['pin']['model_id']} by {result['pin']['actor']}: {result['pin']['reason']}")
    if result["problem"]:
        click.echo(f"no comparison: {result['problem']}")
        return
    gate = result["gate"]
    click.echo(f"  champion:   {_side(gate, 'champion')}")
    click.echo(f"  challenger: {_side(gate, 'challenger')}")
    if "agreement" in gate:
        click.echo(f"  agreement {gate['agreement']} ({gate['flagged_both']} of {gate['flagged_either']} flagged), "
                   f"score shift KS {gate['score_shift_ks']}")
    click.echo(f"  gate: {'passes' if gate['passed'] else 'fails'} ({gate['method']}): {'; '.join(gate['notes'])}")


@ml_cli.command("drift")
@click.option("--metric-type", default=None, help="Only this metric type (default: every active model's).")
@click.option("--json", "as_json", is_flag=True)
def drift_command(metric_type: Optional[str], as_json: bool) -> None:
    """Measure drift now (PSI/KS against each champion's training window); a drift triggers one retraining."""
    params = {"metric_type": metric_type} if metric_type else {}
    try:
        result, failure = run_job_now("drift_check", CLI_ACTOR, trigger=TRIGGER_CLI, **params)["result"], None
    except JobError as exc:
        result, failure = exc.result, exc
    if as_json:
        click.echo(dump_json(result))
    else:
        rows = [{"metric_type": name, **entry, "note": entry.get("skipped") or entry.get("error")
                 or entry.get("note") or entry.get("retraining")} for name, entry in result["metric_types"].items()]
        if not rows:
            click.echo("No active model: nothing to measure.")
        for line in format_table(rows, (("metric_type", "metric type"), ("model_id", "model"), ("psi", "PSI"),
                                        ("ks", "KS"), ("drifted", "drifted"), ("triggered", "retrained"),
                                        ("job_run_id", "run"), ("note", "note"))):
            click.echo(line)
    if failure is not None:
        raise fail(f"{failure}; see the table above")
