"""Copy every model object the database references from one store to another (``flask ml migrate-store``).

Only objects some ``ml_models`` row references are copied, under the same
key, so no row is rewritten: once the copy is complete the operator points
``ML_STORE_URL`` (or ``ML_MODELS_DIR``) at the target and restarts.

* **Verified.** The source's bytes must hash to the row's SHA-256 before they
  are copied, and the target's bytes are read back from the target itself
  (never from a cache) and hashed again after the copy.
* **Idempotent and resumable.** Each object is independent: one already in
  the target with the recorded checksum is skipped, so after a crash (of the
  process, the S3 server, the network) running the command again finishes
  the job.  An object never overwrites one already in the target.
* **Dry run.** The same checks with no write anywhere: no object, no
  directory, no cache file.
* Rows without a checksum (files the original application wrote) cannot be
  verified and are never loaded by this service: they are listed, not copied.
"""
from __future__ import annotations

from typing import Any, Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from utils.ml.store.base import ChecksumMismatchError, ModelStore, ModelStoreError
from utils.ml.store.integrity import sha256_hex
from utils.models import MLModel

STATUSES = ("copied", "would_copy", "skipped", "unverifiable", "failed")


class TargetTaken(ModelStoreError):
    """The target already has an object under the key (with other bytes): it is left as it is."""


def _only(key: str, target: ModelStore) -> Callable[[], str]:
    """A name factory for ``write_new`` that offers ``key`` once: a taken key is a refusal, not a new name."""
    offered = []

    def name() -> str:
        if offered:
            raise TargetTaken(f"{target.locate(key)} appeared in the target while it was being copied; left as it is")
        offered.append(key)
        return key
    return name


def preflight(store: ModelStore, *, write: bool) -> None:
    """Fail at once, with the store's own one-line error, when ``store`` cannot be listed (or written)."""
    if write:
        store.check_writable()
    else:
        next(iter(store.iter_files()), None)


def copy_object(source: ModelStore, target: ModelStore, key: str, checksum: str, max_bytes: int,
                dry_run: bool) -> dict[str, Any]:
    """Copy one object (see the module docstring); returns ``status`` and ``size_bytes``."""
    if target.size(key) is not None:
        # No expected_sha256: what the target really holds, not a cached copy of it.
        held = target.read(key, max_bytes)
        if sha256_hex(held) == checksum:
            return {"status": "skipped", "size_bytes": len(held)}
        raise TargetTaken(f"{target.locate(key)} already exists with other bytes; left as it is")
    data = source.read(key, max_bytes, expected_sha256=checksum)
    if sha256_hex(data) != checksum:
        raise ChecksumMismatchError(f"{source.locate(key)} does not match its recorded SHA-256; not copied")
    if dry_run:
        return {"status": "would_copy", "size_bytes": len(data)}
    target.write_new(_only(key, target), data)
    back = target.read(key, max_bytes)
    if sha256_hex(back) != checksum:
        target.delete(key)  # ours, written a moment ago: never leave a bad copy under the row's key
        raise ChecksumMismatchError(f"{target.locate(key)} read back differs from what was written; removed")
    return {"status": "copied", "size_bytes": len(data)}


def referenced_objects(session: Session) -> dict[str, dict[str, Any]]:
    """Every key a row references: its checksum and the ids of the rows using it (oldest first)."""
    rows = session.execute(
        select(MLModel.id, MLModel.model_path, MLModel.checksum_sha256)
        .where(MLModel.model_path.is_not(None)).order_by(MLModel.id)
    ).all()
    session.rollback()  # a read: end the transaction before the copying starts
    objects: dict[str, dict[str, Any]] = {}
    for row_id, key, checksum in rows:
        entry = objects.setdefault(key, {"checksums": set(), "model_ids": []})
        entry["model_ids"].append(row_id)
        if checksum:
            entry["checksums"].add(checksum)
    return objects


def migrate_store(session: Session, source: ModelStore, target: ModelStore, max_bytes: int, *,
                  dry_run: bool = False) -> dict[str, Any]:
    """Copy every referenced object from ``source`` to ``target``; one failure never stops the others.

    Returns ``objects`` (one dict per key: ``key``, ``model_ids``, ``status``
    in :data:`STATUSES`, ``size_bytes``, ``error``) and the counts per status,
    ``bytes_copied`` and ``dry_run``.
    """
    results = []
    for key, entry in referenced_objects(session).items():
        result: dict[str, Any] = {"key": key, "model_ids": entry["model_ids"], "size_bytes": 0}
        checksums = entry["checksums"]
        if not checksums:
            result.update(status="unverifiable", error="no checksum recorded (a file of the original application; "
                                                       "this service never loads it)")
        elif len(checksums) > 1:
            result.update(status="failed", error="rows using this key record different checksums")
        else:
            try:
                result.update(copy_object(source, target, key, next(iter(checksums)), max_bytes, dry_run))
            except (OSError, ModelStoreError, ValueError) as exc:
                text = str(exc).strip().splitlines()
                result.update(status="failed", error=text[0] if text else exc.__class__.__name__)
        results.append(result)
    counts = {status: sum(1 for r in results if r["status"] == status) for status in STATUSES}
    return {"objects": results, **counts, "dry_run": dry_run,
            "bytes_copied": sum(r["size_bytes"] for r in results if r["status"] == "copied")}
