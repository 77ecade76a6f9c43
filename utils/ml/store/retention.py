"""Retention: old versions, orphan files and leftovers of interrupted writes go; the active one stays.

Rows are deleted and committed first; only then are their files removed, so a
crash leaves at worst an orphan file, never a row pointing at nothing.  Files
no row references (and temporary files) are removed once they are older than
the grace period, which covers a save between its rename and its commit.

Only versions this service saved (library versions recorded) are ever
deleted: a legacy row (the minibar app's BLOB or file era, migrated or not) is
that app's record of what it trained, which its dashboard lists and its own
cleanup prunes; it counts towards the versions kept and is reported in
``kept_legacy``.

On a database shared with the minibar app, ``ml_training_logs.model_id``
references ``ml_models(id)`` (no ON DELETE).  A version one of its training
logs references is kept whole (row, BLOB, file) and reported in
``kept_referenced``: deleting it is what the foreign key forbids, nulling the
log's ``model_id`` would rewrite the app's training history, and deleting
only the file would leave a row that can neither be loaded nor be copied back
by ``flask db downgrade``.  Those versions are the app's; ours are never
referenced and are pruned as usual.  Files a row names by an absolute path
(the app's ``model_path``, an adopted file's ``legacy_path``) are never orphans.
"""
from __future__ import annotations

import time
from typing import Any, Optional

from pathlib import Path

from sqlalchemy import column, exists, inspect, or_, select
from sqlalchemy import table as sa_table
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from utils.ml import events
from utils.ml.store.base import ModelStore, ModelStoreError, ModelValidationError
from utils.ml.store.registry import rollback_quietly
from utils.ml.validation import check_whole_number
from utils.models import MLModel

TRAINING_LOGS = "ml_training_logs"  # the minibar app's table, where it exists


def check_disk_space(store: ModelStore, warn_percent: float) -> dict[str, float]:
    """Disk figures of the store: total_gb, used_gb, free_gb, percent (event past ``warn_percent``)."""
    usage = store.disk_usage() or {}
    if usage and usage["percent"] >= warn_percent:
        events.emit(
            "disk_space_low",
            f"Disk usage {usage['percent']}% (threshold: {warn_percent}%)",
            **usage,
            threshold=warn_percent,
        )
    return usage


def cleanup_old_models(session: Session, store: ModelStore, keep_versions: int, *, orphan_grace_seconds: float,
                       disk_warn_percent: float) -> dict[str, Any]:
    """Keep the newest ``keep_versions`` per type (and always the active one); see the module docstring.

    Returns the contract's ``deleted_count``, ``freed_space_mb`` and
    ``kept_models``, plus ``files_deleted``, ``orphans_deleted``,
    ``temp_files_deleted``, ``errors`` (files that could not be removed) and ``disk``.
    """
    check_whole_number("keep_versions", keep_versions, 1, error=ModelValidationError)
    started = time.perf_counter()
    rows = session.execute(
        select(MLModel.id, MLModel.model_type, MLModel.metric_type, MLModel.model_path, MLModel.is_active,
               MLModel.sklearn_version.is_(None))
        .order_by(MLModel.model_type, MLModel.metric_type, MLModel.created_at.desc(), MLModel.id.desc())
    ).all()
    seen: dict[tuple[str, str], int] = {}
    doomed: list[tuple[int, Optional[str]]] = []
    kept: list[str] = []
    kept_legacy = 0
    for row_id, model_type, metric_type, key, is_active, legacy in rows:
        rank = seen.get((model_type, metric_type), 0)
        seen[(model_type, metric_type)] = rank + 1
        if legacy and not (rank < keep_versions or is_active):
            kept_legacy += 1  # the minibar app's (or its BLOB era's) version: its record, never ours to delete
        if rank < keep_versions or is_active or legacy:
            if key:
                kept.append(key)
        else:
            doomed.append((row_id, key))

    kept_referenced: list[int] = []
    if doomed:
        deleted_ids, kept_referenced = _delete_rows(session, [row_id for row_id, _ in doomed])
        kept.extend(key for row_id, key in doomed if row_id in kept_referenced and key)
        doomed = [(row_id, key) for row_id, key in doomed if row_id in deleted_ids]

    freed = 0
    errors: list[str] = []
    files_deleted = 0
    # Legacy rows may share a file name: never delete a file a kept row still uses.
    doomed_keys = [key for _, key in doomed if key]
    still_used = set(session.execute(
        select(MLModel.model_path).where(MLModel.model_path.in_(doomed_keys))
    ).scalars()) if doomed_keys else set()
    session.rollback()
    for row_id, key in doomed:
        if not key or key in still_used:
            continue
        try:
            released = store.delete(key)
        except (OSError, ModelStoreError) as exc:
            errors.append(f"model {row_id} file {key}: {exc}")
            continue
        if released is not None:  # a file that was already gone is not "deleted" by us
            freed += released
            files_deleted += 1

    orphans = remove_orphans(session, store, orphan_grace_seconds, errors)
    freed += orphans["bytes"]
    result = {
        "deleted_count": len(doomed),
        "freed_space_mb": round(freed / (1024 * 1024), 3),
        "kept_models": sorted(kept),
        "files_deleted": files_deleted,
        "kept_referenced": kept_referenced,
        "kept_legacy": kept_legacy,
        "orphans_deleted": orphans["orphans"],
        "temp_files_deleted": orphans["temp"],
        "errors": errors,
        "disk": check_disk_space(store, disk_warn_percent),
    }
    events.emit(
        "cleanup_done",
        f"Cleaned {len(doomed)} old models, freed {result['freed_space_mb']}MB",
        deleted_count=len(doomed), freed_space_mb=result["freed_space_mb"],
        orphans_deleted=orphans["orphans"], errors=len(errors),
        ms=round((time.perf_counter() - started) * 1000, 2),
    )
    for error in errors:
        events.emit("cleanup_error", error, error=error)
    return result


def _training_logs_table(session: Session) -> bool:
    """True where the minibar app's ``ml_training_logs`` exists (its FK points at ml_models)."""
    return inspect(session.connection()).has_table(TRAINING_LOGS)


def _delete_rows(session: Session, ids: list[int]) -> tuple[set[int], list[int]]:
    """Delete the inactive rows of ``ids`` no training log references; ``(deleted, kept_referenced)``.

    The NOT EXISTS and the DELETE are one statement; should the app insert a log
    for one of them in between anyway (the FK then refuses the whole DELETE),
    the statement is simply run again, up to three times.
    """
    table = MLModel.__table__
    # is_active guard: a version activated since we looked is not deleted.
    condition = [table.c.id.in_(ids), table.c.is_active.is_(False)]
    logs = _training_logs_table(session)
    if logs:
        log_table = sa_table(TRAINING_LOGS, column("model_id"))
        condition.append(~exists().where(log_table.c.model_id == table.c.id))
    for attempt in range(3):
        try:
            deleted = set(session.execute(table.delete().where(*condition).returning(table.c.id)).scalars())
            referenced: list[int] = []
            if logs:
                log_table = sa_table(TRAINING_LOGS, column("model_id"))
                referenced = sorted(set(session.execute(
                    select(log_table.c.model_id).where(log_table.c.model_id.in_(ids))).scalars()) - deleted)
            session.commit()
            return deleted, referenced
        except IntegrityError:
            rollback_quietly(session)  # nothing was deleted, so no file is touched either
            if attempt == 2:
                raise
        except BaseException:
            rollback_quietly(session)
            raise
    raise AssertionError("unreachable")


def _referenced_keys(session: Session, store: ModelStore) -> set[str]:
    """Keys rows use, plus the keys of absolute paths (the app's model_path, legacy_path) inside the store."""
    rows = session.execute(select(MLModel.model_path, MLModel.legacy_path)
                           .where(or_(MLModel.model_path.is_not(None), MLModel.legacy_path.is_not(None)))).all()
    keys: set[str] = set()
    root = store.local_root
    for path in (p for row in rows for p in row if p):
        keys.add(path)
        if root is not None and Path(path).is_absolute():
            try:
                keys.add(Path(path).resolve().relative_to(root).as_posix())
            except ValueError:
                pass  # outside our directory: never ours to sweep
    return keys


def remove_orphans(session: Session, store: ModelStore, grace_seconds: float, errors: list[str]) -> dict[str, int]:
    """Delete files no row references and temporary files, both older than ``grace_seconds``."""
    now = time.time()
    referenced = _referenced_keys(session, store)
    counts = {"orphans": 0, "temp": 0, "bytes": 0}
    for kind, files in (("orphans", store.iter_files()), ("temp", store.iter_temp_files())):
        for stored in files:
            if (kind == "orphans" and stored.key in referenced) or now - stored.modified_at < grace_seconds:
                continue
            try:
                released = store.delete(stored.key)
            except (OSError, ModelStoreError) as exc:
                errors.append(f"{'orphan' if kind == 'orphans' else 'temp file'} {stored.key}: {exc}")
                continue
            if released is not None:  # gone since the listing (another cleanup): not ours to count
                counts["bytes"] += released
                counts[kind] += 1
    return counts
