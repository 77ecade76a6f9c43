"""``flask ml list | info | cleanup | migrate | activate``: the model store from a shell.

A thin layer: every command calls one function and prints what it returns;
``cleanup`` runs the ``cleanup_models`` job through the job runner (recorded
with trigger ``cli``, refused while it runs anywhere) and ``activate`` is the
API's and the dashboard's activation.  Failures exit 1 with one line on
stderr (:func:`utils.cli.cli_error`).  ``migrate_models_to_filesystem.py``
runs :data:`migrate_command` itself, so the script and ``flask ml migrate``
share their options, their output and their error handling.
"""
from __future__ import annotations

import json
import warnings
from typing import Any, Callable, Optional

import click
import sklearn
from sklearn.exceptions import InconsistentVersionWarning
from flask import current_app

from utils.cli import CLI_ACTOR, cell, dump_json, fail, format_table, ml_cli
from utils.cli.stores import retention_lines
from utils.extensions import db
from utils.ml.jobs import TRIGGER_CLI, JobError, run_job_now
from utils.ml.model_manager import ModelManager, get_model_manager
from utils.ml.store import ModelStoreError, catalog
from utils.ml.store.signature import compatible, explain

_LIST_COLUMNS = (
    ("id", "id"), ("model_type", "model type"), ("metric_type", "metric type"), ("is_active", "active"),
    ("storage", "storage"), ("size_kb", "size KB"), ("accuracy", "accuracy"), ("created_at", "created (UTC)"),
    ("storage_key", "file"), ("input", "input"), ("flags", "flags"),
)


def _flags(model: dict[str, Any]) -> str:
    """``legacy`` (the minibar app's row) and ``incompatible`` (detection cannot compute its input)."""
    return ", ".join(([] if not model.get("legacy") else ["legacy"])
                     + ([] if model.get("compatible", True) else ["incompatible"]))


def _manager(create_directory: bool = True) -> ModelManager:
    try:
        if not create_directory:
            # A private manager that never creates the models directory (dry runs).
            return ModelManager(db, models_dir=current_app.config["ML_MODELS_DIR"], create_directory=False)
        return get_model_manager(current_app._get_current_object())
    except (OSError, ModelStoreError, ValueError) as exc:
        raise fail(f"models directory {current_app.config['ML_MODELS_DIR']!r} is unusable: {exc}") from exc


@ml_cli.command("list")
@click.option("--model-type", default=None, help="Only this model type.")
@click.option("--metric-type", default=None, help="Only this metric type.")
@click.option("--active-only", is_flag=True, help="Only the active version of each type.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_command(model_type: Optional[str], metric_type: Optional[str], active_only: bool, as_json: bool) -> None:
    """List every model version (file-backed and legacy BLOB rows), newest first."""
    models = _manager().list_models(model_type, metric_type, active=True if active_only else None)
    if as_json:
        click.echo(dump_json(models))
        return
    if not models:
        click.echo("No models.")
        return
    for line in format_table([dict(m, flags=_flags(m)) for m in models], _LIST_COLUMNS):
        click.echo(line)


@ml_cli.command("info")
@click.option("--model-type", default="isolation_forest", show_default=True, help="Model type.")
@click.option("--metric-type", required=True, help="Metric type, e.g. stok_seviye.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info_command(model_type: str, metric_type: str, as_json: bool) -> None:
    """Show the active version of one (model type, metric type)."""
    info = _manager().get_model_info(model_type, metric_type)
    if info is None:
        raise fail(f"no model for model_type={model_type!r} metric_type={metric_type!r}")
    if as_json:
        click.echo(dump_json(info))
        return
    width = max(len(k) for k in info)
    for key, value in info.items():
        click.echo(f"{key.ljust(width)}  {cell(value) if not isinstance(value, dict) else json.dumps(value)}")


@ml_cli.command("cleanup")
@click.option("--keep", type=click.IntRange(min=1), default=None,
              help="Versions kept per (model type, metric type); default ML_KEEP_VERSIONS.")
def cleanup_command(keep: Optional[int]) -> None:
    """Delete old versions (never the active one) and orphan files, then report.

    Runs the cleanup_models job (recorded in ml_job_runs, trigger cli); exits 1
    without doing anything while a cleanup runs in any process.
    """
    keep = keep if keep is not None else int(current_app.config["ML_KEEP_VERSIONS"])
    _manager()  # a models directory that cannot be used is named as such, before any run is recorded
    failure: Optional[JobError] = None
    try:
        result = run_job_now("cleanup_models", CLI_ACTOR, trigger=TRIGGER_CLI, keep_versions=keep)["result"]
    except JobError as exc:  # it ran, and some files could not be removed: report them, then fail
        result, failure = exc.result, exc
    click.echo(f"🗑️  Deleted {result['deleted_count']} old versions (kept {keep} per type), "
               f"{result['orphans_deleted']} orphan and {result['temp_files_deleted']} temporary files; "
               f"freed {result['freed_space_mb']} MB")
    if result.get("kept_legacy"):
        click.echo(f"📜 Kept {result['kept_legacy']} old legacy versions (the minibar app's rows are never deleted)")
    if result.get("kept_referenced"):
        click.echo(f"🔗 Kept {len(result['kept_referenced'])} old versions the minibar app's ml_training_logs "
                   f"reference (never deleted): {', '.join(map(str, result['kept_referenced']))}")
    disk = result.get("disk") or {}
    if disk:
        click.echo(f"💽 Disk: {disk['used_gb']} of {disk['total_gb']} GB used ({disk['percent']}%)")
    for line in retention_lines(result.get("retention")):
        click.echo(line)
    for error in result["errors"]:
        click.echo(f"❌ {error}", err=True)
    if failure is not None:
        raise fail(f"cleanup finished with {len(result['errors'])} error(s)")


@ml_cli.command("activate")
@click.argument("model_id", type=click.IntRange(min=1))
@click.option("--reason", default="activated from the command line", show_default=True,
              help="Recorded in the activation audit trail.")
def activate_command(model_id: int, reason: str) -> None:
    """Make MODEL_ID the active version of its type (rollback or promotion).

    The activation the API and the dashboard use: the file is verified
    first, the audit trail records the version it replaces, and the version
    that is already active stays so without a new audit row.  The version is
    pinned: training no longer changes the type until `flask ml unpin`.
    """
    result = catalog.activate(_manager(), model_id, actor=CLI_ACTOR, reason=reason)
    pinned = f"; pinned (training will not replace it until: flask ml unpin --metric-type {result['metric_type']})"
    if not result["changed"]:
        click.echo(f"Model {model_id} already is the active version of {result['model_type']}/"
                   f"{result['metric_type']}; nothing changed{pinned}")
        return
    previous = result["from_model_id"]
    click.echo(f"✅ Model {model_id} is now active for {result['model_type']}/{result['metric_type']}"
               f" (previously {previous if previous is not None else 'none'}){pinned}")


# ------------------------------------------------------------------ migrate
def _input(m: dict[str, Any]) -> str:
    sig = m.get("input_signature")
    return f"; input: {explain(sig)}{'' if compatible(sig) else ', incompatible: detection falls back'}"


_STATUS_LINES: dict[str, Callable[[dict[str, Any]], str]] = {
    "migrated": lambda m: f"✅ model {m['id']} {m['model_type']}/{m['metric_type']} -> {m['path']} "
                          f"({m['size_bytes'] / 1024:.1f} KB{', BLOB purged' if m.get('blob_purged') else ''}"
                          f"{_input(m)})",
    "would_migrate": lambda m: f"🔎 model {m['id']} {m['model_type']}/{m['metric_type']} would be migrated "
                               f"({m['size_bytes'] / 1024:.1f} KB{_input(m)})",
    "adopted": lambda m: f"📥 model {m['id']} {m['model_type']}/{m['metric_type']} adopted: {m['legacy_path']} "
                         f"copied to {m['path']} ({m['size_bytes'] / 1024:.1f} KB{_input(m)})",
    "would_adopt": lambda m: f"🔎 model {m['id']} {m['model_type']}/{m['metric_type']} would be adopted: "
                             f"{m['legacy_path']} ({m['size_bytes'] / 1024:.1f} KB{_input(m)})",
    "purged": lambda m: f"🧹 model {m['id']} {m['model_type']}/{m['metric_type']} BLOB purged "
                        f"({m['size_bytes'] / 1024:.1f} KB; file verified: {m['path']})",
    "would_purge": lambda m: f"🔎 model {m['id']} {m['model_type']}/{m['metric_type']} BLOB would be purged "
                             f"({m['size_bytes'] / 1024:.1f} KB)",
    "skipped": lambda m: f"⏭️  model {m['id']} {m['model_type']}/{m['metric_type']} skipped (already migrated)",
    "failed": lambda m: f"❌ model {m['id']} {m['model_type']}/{m['metric_type']} failed: {m['error']}",
}


def migration_report(result: dict[str, Any]) -> list[str]:
    """Per-model lines, then the seed's summary (migrated / failed / skipped / total size)."""
    lines = [_STATUS_LINES[m["status"]](m) for m in result["models"]]
    if result["dry_run"]:
        lines.append("Dry run: nothing was written to the database or the models directory.")
        lines.append(f"🔎 Would migrate: {result['migrated']} models")
    else:
        lines.append(f"✅ Migrated: {result['migrated']} models")
    lines.append(f"📥 {'Would adopt' if result['dry_run'] else 'Adopted'}: {result.get('adopted', 0)} "
                 "files of the minibar app (copied into the models directory)")
    lines.append(f"❌ Failed: {result['failed']} models")
    lines.append(f"⏭️  Skipped: {result['skipped']} models (already migrated)")
    if result.get("purge_blobs"):
        lines.append(f"🧹 {'Would purge' if result['dry_run'] else 'Purged'}: {result['purged']} BLOBs "
                     "of already migrated models")
    lines.append(f"💾 Total size: {result['total_size_bytes'] / (1024 * 1024):.2f} MB "
                 f"({result['total_size_bytes']} bytes)")
    return lines


@ml_cli.command("migrate")
@click.option("--dry-run", is_flag=True, help="Report what would be migrated; write nothing anywhere.")
@click.option("--purge-blobs", is_flag=True,
              help="Set model_data to NULL once the file is verified, also for models migrated earlier "
                   "(default: keep the BLOB as the fallback).")
def migrate_command(dry_run: bool, purge_blobs: bool) -> None:
    """Copy every legacy model to a verified file and record its path, checksum and input.

    BLOB rows are copied byte for byte; the minibar app's files (FILE_BASED
    rows) are adopted: loaded under the allow-list, copied into the models
    directory.  Also available as: python migrate_models_to_filesystem.py.
    Run it with --dry-run first.  Exits 0 when every row was migrated,
    adopted or already done; 1 if any failed (the others are done all the same).
    """
    # A dry run changes nothing on disk either: not even a missing models directory.
    manager = _manager(create_directory=not dry_run)
    # scikit-learn warns once per class of every legacy model: one line says it all.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InconsistentVersionWarning)
        result = manager.migrate_from_database(dry_run=dry_run, purge_blobs=purge_blobs)
    for line in migration_report(result):
        click.echo(line)
    saved = sorted({str(w.message.original_sklearn_version) for w in caught
                    if issubclass(w.category, InconsistentVersionWarning)})
    if saved:
        click.echo(f"⚠️  legacy models were saved with scikit-learn {', '.join(saved)}; this service runs "
                   f"{sklearn.__version__} (they load; retrain to replace them)")
    if result["failed"]:
        raise fail(f"{result['failed']} model(s) failed to migrate; see the lines above")
