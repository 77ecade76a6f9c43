"""Retention: old versions, orphan files and leftovers of interrupted writes go; the active one stays.

Rows are deleted and committed first; only then are their files removed, so a
crash leaves at worst an orphan file, never a row pointing at nothing.  Files
no row references (and temporary files) are removed once they are older than
the grace period, which covers a save between its rename and its commit.
"""
from __future__ import annotations

import time
from typing import Any, Optional

from sqlalchemy import select
from sqlalchemy.orm import Session

from utils.ml import events
from utils.ml.store.base import ModelStore, ModelStoreError, ModelValidationError
from utils.ml.store.registry import rollback_quietly
from utils.ml.validation import check_whole_number
from utils.models import MLModel


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
        select(MLModel.id, MLModel.model_type, MLModel.metric_type, MLModel.model_path, MLModel.is_active)
        .order_by(MLModel.model_type, MLModel.metric_type, MLModel.created_at.desc(), MLModel.id.desc())
    ).all()
    seen: dict[tuple[str, str], int] = {}
    doomed: list[tuple[int, Optional[str]]] = []
    kept: list[str] = []
    for row_id, model_type, metric_type, key, is_active in rows:
        rank = seen.get((model_type, metric_type), 0)
        seen[(model_type, metric_type)] = rank + 1
        if rank < keep_versions or is_active:
            if key:
                kept.append(key)
        else:
            doomed.append((row_id, key))

    if doomed:
        ids = [row_id for row_id, _ in doomed]
        # is_active guard: a version activated since we looked is not deleted.
        try:
            deleted_ids = set(session.execute(
                MLModel.__table__.delete().where(MLModel.id.in_(ids), MLModel.is_active.is_(False))
                .returning(MLModel.id)
            ).scalars())
            session.commit()
        except BaseException:
            # Nothing was deleted, so no file is touched either.
            rollback_quietly(session)
            raise
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


def remove_orphans(session: Session, store: ModelStore, grace_seconds: float, errors: list[str]) -> dict[str, int]:
    """Delete files no row references and temporary files, both older than ``grace_seconds``."""
    now = time.time()
    referenced = set(session.execute(
        select(MLModel.model_path).where(MLModel.model_path.is_not(None))
    ).scalars())
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
