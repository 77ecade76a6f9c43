"""The original application's models: BLOBs in ``ml_models.model_data``, and its files.

Two uses: the fallback load of an active row's BLOB (:func:`load_from_database`),
and the one-way copy of every legacy model to a verified file
(:func:`migrate_from_database`, what ``migrate_models_to_filesystem.py`` and
``flask ml migrate`` run).  A BLOB without a checksum of ours is unpickled
only under the allow-list of :mod:`~utils.ml.store.safe_load`; a migrated
row's checksum is of the identical file bytes, so it is verified too.  The
minibar app's ``FILE_BASED`` marker is never unpickled: its file is adopted
(:mod:`~utils.ml.store.adopt`).  Every migrated or adopted row records its
input signature (:mod:`~utils.ml.store.signature`).
"""
from __future__ import annotations

import gzip
import time
from typing import Any, Callable

from sqlalchemy import func, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, undefer

from utils.ml import events
from utils.ml.store import signature
from utils.ml.store.adopt import adopt_one, legacy_file_rows
from utils.ml.store.base import ModelManagerError, ModelStore, ModelTooLargeError
from utils.ml.store.integrity import LoadOutcome, finish_load, sha256_hex, verify_file, warn_version
from utils.ml.store.registry import discard_if_unreferenced, generate_filename, rollback_quietly
from utils.ml.store.safe_load import FILE_BASED, restricted_loads
from utils.models import MLModel

INCOMPATIBLE = "incompatible_input"


def load_from_database(session: Session, model_type: str, metric_type: str, max_bytes: int) -> LoadOutcome:
    """Unpickle the active row's BLOB (verified when a checksum applies); the legacy path."""
    started = time.perf_counter()
    key = (model_type, metric_type)
    try:
        row = session.execute(
            select(MLModel).options(undefer(MLModel.model_data)).where(
                MLModel.model_type == model_type, MLModel.metric_type == metric_type,
                MLModel.is_active.is_(True),
            )
        ).scalar_one_or_none()
    except SQLAlchemyError as exc:
        rollback_quietly(session)
        return finish_load(None, None, "none", "database_unavailable", started, key, str(exc))
    if row is None:
        return finish_load(None, None, "none", "no_active_model", started, key)
    data, model_id = row.model_data, row.id
    # Do not keep the BLOB attached to the session's identity map.
    session.expire(row, ["model_data"])
    if data is None:
        return finish_load(None, model_id, "none", "no_blob", started, key, f"model {model_id} has no BLOB")
    implied = signature.of_row(signature.is_marker(data), row.parameters, row.input_signature)
    if not signature.compatible(implied):  # never unpickled (the FILE_BASED marker is no model at all)
        return finish_load(None, model_id, "none", INCOMPATIBLE, started, key,
                           signature.incompatible_detail(model_id, implied))
    if len(data) > max_bytes:
        return finish_load(None, model_id, "none", "too_large", started, key,
                           f"BLOB of model {model_id} is {len(data)} bytes, over {max_bytes}")
    if row.checksum_sha256 and not (row.model_path or "").endswith(".gz"):
        if sha256_hex(data) != row.checksum_sha256:
            return finish_load(None, model_id, "none", "checksum_mismatch", started, key,
                               f"BLOB of model {model_id} does not match its recorded SHA-256")
    try:
        # A BLOB is vouched for by no one but the database: model classes only.
        model = restricted_loads(data, max_bytes)
    except Exception as exc:
        return finish_load(None, model_id, "none", "unpickle_error", started, key,
                           f"BLOB of model {model_id} could not be unpickled: {exc!r}")
    sig = row.input_signature or signature.of_object(model, row.parameters)
    if not signature.compatible(sig):
        return finish_load(None, model_id, "none", INCOMPATIBLE, started, key,
                           signature.incompatible_detail(model_id, sig))
    warn_version(model_id, row.sklearn_version)
    return finish_load(model, model_id, "database", None, started, key)


def migrate_from_database(session: Session, store: ModelStore, max_bytes: int, dry_run: bool = False,
                          purge_blobs: bool = False) -> dict[str, Any]:
    """Copy every legacy BLOB model to a file and record its key and checksum.

    Each BLOB is checked to unpickle, written atomically, read back and
    compared byte for byte; the BLOB stays (the fallback) unless
    ``purge_blobs``, which also drops the BLOBs of rows migrated earlier
    once their file verifies (``purged``).  Rows that already have a file
    are otherwise skipped; a failing row is reported in ``errors`` and does
    not stop the others.  A dry run writes nothing, to the database or to
    disk.  Keys: the contract's ``migrated``, ``failed``, ``skipped``,
    ``errors``, plus ``purged``, ``total_size_bytes``, ``total_size_mb``,
    ``dry_run``, ``purge_blobs`` and ``models`` (one entry per row handled).
    """
    candidates = session.execute(
        select(MLModel.id, MLModel.model_type, MLModel.metric_type)
        .where(MLModel.model_data.is_not(None), MLModel.model_path.is_(None)).order_by(MLModel.id)
    ).all()
    # The minibar app's files (a path, no checksum of ours): adopted, never counted as migrated.
    adoptable = legacy_file_rows(session)
    # Already migrated rows that still carry their BLOB: purged on request
    # (after re-verifying the file), otherwise skipped.
    purgeable = session.execute(
        select(MLModel.id, MLModel.model_type, MLModel.metric_type)
        # An adopted row's BLOB is the app's FILE_BASED marker, its value: never purged.
        .where(MLModel.model_data.is_not(None), MLModel.model_path.is_not(None), MLModel.legacy_path.is_(None),
               MLModel.checksum_sha256.is_not(None))
        .order_by(MLModel.id)
    ).all() if purge_blobs else []
    skipped = session.execute(
        select(func.count()).select_from(MLModel).where(MLModel.model_path.is_not(None))
    ).scalar_one() - len(purgeable) - len(adoptable)
    session.rollback()  # end the read transaction before long work
    result: dict[str, Any] = {"migrated": 0, "adopted": 0, "failed": 0, "skipped": skipped, "errors": [],
                              "purged": 0,
                              "total_size_bytes": 0, "dry_run": dry_run, "purge_blobs": purge_blobs,
                              "models": []}
    steps: list[tuple[Any, Callable[..., dict[str, Any]]]] = \
        [(row, _migrate_one) for row in candidates] + [(row, adopt_one) for row in adoptable] + \
        [(row, _purge_one) for row in purgeable]
    for (row_id, model_type, metric_type), step in steps:
        line = {"id": row_id, "model_type": model_type, "metric_type": metric_type}
        try:
            line.update(step(session, store, max_bytes, row_id, dry_run=dry_run, purge_blob=purge_blobs))
        except Exception as exc:  # one bad row must not stop the rest
            rollback_quietly(session)
            result["failed"] += 1
            message = f"model {row_id} ({model_type}/{metric_type}): {exc}"
            result["errors"].append(message)
            line.update({"status": "failed", "error": str(exc)})
            events.emit("model_migration_failed", message, model_id=row_id, error=str(exc))
        else:
            if line["status"] == "skipped":
                result["skipped"] += 1
            elif line["status"] in ("purged", "would_purge"):
                result["purged"] += 1
            elif line["status"] in ("adopted", "would_adopt"):
                result["adopted"] += 1
                result["total_size_bytes"] += line["size_bytes"]
            else:
                result["migrated"] += 1
                result["total_size_bytes"] += line["size_bytes"]
        result["models"].append(line)
    result["total_size_mb"] = round(result["total_size_bytes"] / (1024 * 1024), 3)
    if not dry_run and (result["migrated"] or result["purged"] or result["adopted"]):
        events.emit("models_migrated", f"Migrated {result['migrated']} models from database to filesystem, "
                    f"adopted {result['adopted']} legacy files",
                    migrated=result["migrated"], adopted=result["adopted"], failed=result["failed"],
                    skipped=result["skipped"], purged=result["purged"])
    return result


def _purge_one(session: Session, store: ModelStore, max_bytes: int, row_id: int, dry_run: bool,
               purge_blob: bool = True) -> dict[str, Any]:
    """Drop the BLOB of an already migrated row once its file proves identical."""
    key, checksum, blob = session.execute(
        select(MLModel.model_path, MLModel.checksum_sha256, MLModel.model_data).where(MLModel.id == row_id)
    ).one()
    session.rollback()
    data, problem = verify_file(store, key, checksum, max_bytes)
    if problem:
        raise ModelManagerError(f"BLOB kept: {problem}")
    if (gzip.decompress(data) if key.endswith(".gz") else data) != blob:
        raise ModelManagerError(f"BLOB kept: it differs from file {key!r}")
    if dry_run:
        return {"status": "would_purge", "size_bytes": len(blob)}
    updated = session.execute(
        update(MLModel).where(MLModel.id == row_id, MLModel.model_path == key).values(model_data=None)
        .execution_options(synchronize_session=False)
    ).rowcount
    if updated != 1:
        session.rollback()
        raise ModelManagerError("BLOB kept: the row changed while it was being purged")
    session.commit()
    events.emit("model_blob_purged", f"Purged the BLOB of model {row_id} (file {key} verified)",
                model_id=row_id, key=key, size_bytes=len(blob))
    return {"status": "purged", "size_bytes": len(blob), "path": store.locate(key)}


def _migrate_one(session: Session, store: ModelStore, max_bytes: int, row_id: int, dry_run: bool,
                 purge_blob: bool) -> dict[str, Any]:
    data, parameters = session.execute(
        select(MLModel.model_data, MLModel.parameters).where(MLModel.id == row_id)).one()
    session.rollback()
    data = bytes(data)
    if data == FILE_BASED:
        raise ModelManagerError("the FILE_BASED marker without a model_path: the minibar app's file is unknown")
    if len(data) > max_bytes:
        raise ModelTooLargeError(f"BLOB is {len(data)} bytes, over the limit of {max_bytes} bytes")
    try:
        model = restricted_loads(data, max_bytes)  # model classes only: nobody vouches for these bytes
    except Exception as exc:
        raise ModelManagerError(f"BLOB does not unpickle: {exc!r}") from exc
    sig = signature.of_object(model, parameters)
    digest = sha256_hex(data)
    if dry_run:
        return {"status": "would_migrate", "size_bytes": len(data), "checksum_sha256": digest,
                "input_signature": sig}

    meta = session.execute(select(MLModel.model_type, MLModel.metric_type).where(MLModel.id == row_id)).one()
    # Byte-identical copy of the BLOB (never recompressed), so the BLOB
    # and the file verify against the same checksum.
    key = store.write_new(lambda: generate_filename(meta.model_type, meta.metric_type, ".pkl"), data)
    try:
        # No expected_sha256: this read must check what the store really holds, not a cached copy.
        written = store.read(key, max_bytes)
        if written != data or sha256_hex(written) != digest:
            raise ModelManagerError(f"file {key!r} read back differs from the BLOB")
        restricted_loads(written, max_bytes)
        values: dict[str, Any] = {"model_path": key, "checksum_sha256": digest, "size_bytes": len(data),
                                  "input_signature": sig}
        if purge_blob:
            values["model_data"] = None
        updated = session.execute(
            update(MLModel).where(MLModel.id == row_id, MLModel.model_path.is_(None)).values(**values)
            .execution_options(synchronize_session=False)
        ).rowcount
        if updated != 1:
            # Another migrator got there first: keep its file, drop ours.
            session.rollback()
            store.delete(key)
            return {"status": "skipped", "size_bytes": 0}
        session.commit()
    except BaseException:
        rollback_quietly(session)
        discard_if_unreferenced(session, store, key)
        raise
    events.emit("model_migrated", f"Migrated model {row_id} to {key}", model_id=row_id, key=key,
                size_bytes=len(data), model_type=meta.model_type, metric_type=meta.metric_type)
    return {"status": "migrated", "size_bytes": len(data), "path": store.locate(key),
            "checksum_sha256": digest, "blob_purged": purge_blob, "input_signature": sig}
