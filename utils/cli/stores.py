"""``flask ml migrate-store`` and ``flask ml retention``: moving model bytes between stores, pruning old rows.

Thin click commands over :func:`utils.ml.store.transfer.migrate_store` and
:func:`utils.ml.pipeline.retention.run_retention`; failures exit 1 with one
line on stderr (:func:`utils.cli.cli_error`).
"""
from __future__ import annotations

from typing import Any, Optional
from urllib.parse import urlparse

import click
from flask import current_app

from utils.cli import fail, ml_cli
from utils.extensions import db
from utils.ml.pipeline.retention import RetentionPolicy, run_retention
from utils.ml.store import ModelStore, open_store
from utils.ml.store.transfer import migrate_store, preflight

_LINES = {
    "copied": "✅ {key} copied ({kb:.1f} KB, SHA-256 verified in the target)",
    "would_copy": "🔎 {key} would be copied ({kb:.1f} KB)",
    "skipped": "⏭️  {key} already in the target with the recorded checksum",
    "unverifiable": "⚠️  {key} not copied: {error}",
    "failed": "❌ {key}: {error}",
}


def _open(location: str, *, create: bool) -> ModelStore:
    """A store for copying: an S3 one caches nothing (and so writes no cache file in a dry run)."""
    options: dict[str, Any] = {}
    if urlparse(location).scheme.lower() == "s3":
        options = {"cache_dir": current_app.config["ML_MODELS_DIR"], "cache_max_bytes": 0}
    return open_store(location, create=create, **options)


def _identity(store: ModelStore) -> dict[str, Any]:
    info = store.location_info()
    info.pop("cache_dir", None)
    return info


def _next_step(to: str) -> str:
    if urlparse(to).scheme.lower() == "s3":
        return (f"Next: set ML_STORE_URL={to} (and the AWS_* variables) on every service and host "
                "(app, scheduler), then restart them; rows keep their keys, nothing else changes.")
    return (f"Next: unset ML_STORE_URL and set ML_MODELS_DIR={to} on every service (a volume they share), "
            "then restart them; rows keep their keys, nothing else changes.")


@ml_cli.command("migrate-store")
@click.option("--to", "to", required=True, metavar="URL",
              help="Target store: s3://bucket/prefix, or a directory (path or file:// URL).")
@click.option("--dry-run", is_flag=True, help="Check and list what would be copied; write nothing anywhere.")
def migrate_store_command(to: str, dry_run: bool) -> None:
    """Copy every model object a row references from the current store to URL, under the same keys.

    The current store is ML_STORE_URL when set, else ML_MODELS_DIR.  Each
    object's SHA-256 is checked before and after the copy; objects already
    in the target are skipped, so a run that stopped halfway is finished by
    running it again.  Afterwards, switch ML_STORE_URL (see the last line).
    """
    config = current_app.config
    location = config.get("ML_STORE_URL") or config["ML_MODELS_DIR"]
    source = _open(location, create=False)
    target = _open(to, create=not dry_run)
    if _identity(source) == _identity(target):
        raise fail(f"--to {to!r} is the current store ({location}); nothing to copy")
    preflight(source, write=False)
    preflight(target, write=not dry_run)
    max_bytes = int(float(config["ML_MAX_MODEL_MB"]) * 1024 * 1024)
    result = migrate_store(db.session, source, target, max_bytes, dry_run=dry_run)
    for entry in result["objects"]:
        line = _LINES[entry["status"]].format(key=entry["key"], kb=entry["size_bytes"] / 1024,
                                             error=entry.get("error"))
        click.echo(line, err=entry["status"] == "failed")
    if dry_run:
        done = f"Would copy {result['would_copy']} object(s)"
    else:
        done = f"Copied {result['copied']} object(s) ({result['bytes_copied'] / 1024 / 1024:.2f} MB)"
    click.echo(f"{done} from {location} to {to}; "
               f"{result['skipped']} already there, {result['unverifiable']} without a checksum (not copied), "
               f"{result['failed']} failed.")
    if dry_run:
        click.echo("Dry run: nothing was written anywhere.")
    if result["failed"]:
        raise fail(f"{result['failed']} object(s) failed; fix the lines above and run the command again "
                   "(what was copied is skipped)")
    if not dry_run:
        click.echo(_next_step(to))


_TABLE_WORDS = {"observations": "observations (ml_metrics)", "alerts": "closed alerts of ours (ml_alerts)",
                "incidents": "incidents left without alerts (ml_incidents)",
                "job_runs": "finished job runs (ml_job_runs)"}


def retention_lines(result: Optional[dict[str, Any]]) -> list[str]:
    """One line per table of a :func:`run_retention` result (nothing when there is none)."""
    if not result:
        return []
    lines = []
    for table, words in _TABLE_WORDS.items():
        entry = result.get(table)
        if entry is None:  # a result stored by a version without this table's retention
            continue
        if not entry["retention_days"]:
            lines.append(f"🗄️  {words}: kept forever (retention 0)")
            continue
        verb = "would delete" if result["dry_run"] else "deleted"
        cutoff = entry["cutoff"]  # a datetime, or its text once a job run has stored it
        cutoff = cutoff.strftime("%Y-%m-%d %H:%M") if hasattr(cutoff, "strftime") else str(cutoff)[:16]
        lines.append(f"🗄️  {words}: {verb} {entry['rows']} older than {entry['retention_days']} days "
                     f"(before {cutoff} UTC)"
                     + ("" if result["dry_run"] else f" in {entry['batches']} batches, {entry['seconds']} s"))
    return lines


@ml_cli.command("retention")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
def retention_command(dry_run: bool) -> None:
    """Delete old observations, our closed alerts and finished job runs now, in small batches.

    The cleanup job does the same every ML_CLEANUP_INTERVAL_SECONDS.  Ages:
    ML_OBSERVATION_RETENTION_DAYS, ML_ALERT_RETENTION_DAYS,
    ML_JOB_RUN_RETENTION_DAYS (0 keeps everything).  Observations an open
    alert points at, open alerts and the hotel app's own alerts are kept.
    """
    result = run_retention(db.engine, RetentionPolicy.from_config(current_app.config), dry_run=dry_run)
    for line in retention_lines(result):
        click.echo(line)
    if dry_run:
        click.echo("Dry run: nothing was deleted.")
