"""Adopting the minibar app's model files: verified, checksummed and copied into our store.

The app's file era (``LEGACY.md`` format 2) left rows with ``model_data =
b'FILE_BASED'`` and an absolute ``model_path`` into its volume, holding a
``joblib.dump(..., compress=3)`` dict (model, scaler, feature list).  No
checksum exists anywhere, so the file is first loaded under the allow-list of
:mod:`~utils.ml.store.safe_load` (proving it is a model and nothing else),
then its exact bytes are copied into the store under a key of ours, read back
and compared, and the row records ``model_path`` = that key, ``legacy_path``
= the app's path, the checksum, the size and the input signature.

Why a copy and not a reference to the app's path: the app's own cleanup
deletes files in its volume (``Path(model_path).unlink()`` for versions past
its keep count), so a model this service lists and verifies must be a file it
owns.  The app's file is left where it is (and kept by our cleanup, which
never deletes a path a row names); ``flask db downgrade`` puts ``legacy_path``
back into ``model_path``.  The marker BLOB stays, and is never unpickled.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, Optional

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from utils.ml import events
from utils.ml.store import signature
from utils.ml.store.base import ModelManagerError, ModelStore, ModelTooLargeError
from utils.ml.store.integrity import sha256_hex
from utils.ml.store.registry import discard_if_unreferenced, generate_filename, rollback_quietly
from utils.ml.store.safe_load import restricted_loads
from utils.models import MLModel


def legacy_file_rows(session: Session) -> list[Any]:
    """Rows naming a file without a checksum of ours: the minibar app's (ours always carry one)."""
    return session.execute(
        select(MLModel.id, MLModel.model_type, MLModel.metric_type)
        .where(MLModel.model_path.is_not(None), MLModel.checksum_sha256.is_(None)).order_by(MLModel.id)
    ).all()


def candidate_paths(store: ModelStore, recorded: str) -> list[Path]:
    """Where the app's ``model_path`` may be on this host: absolute as written, or relative to its
    working directory (its default ``./ml_models``), which is our models directory's parent in the image."""
    path = Path(recorded)
    if path.is_absolute():
        return [path]
    root = store.local_root
    places = [root / path, root.parent / path] if root is not None else []
    return places + [Path.cwd() / path]


def read_legacy_file(path: Path, max_bytes: int) -> bytes:
    """The file's bytes: a regular file (a symlink is refused), at most ``max_bytes``."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as handle:
        st = os.fstat(handle.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ModelManagerError(f"{path} is not a regular file")
        if st.st_size > max_bytes:
            raise ModelTooLargeError(f"{path} is {st.st_size} bytes, over the limit of {max_bytes} bytes")
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ModelTooLargeError(f"{path} grew past {max_bytes} bytes while being read")
    return data


def _find(store: ModelStore, recorded: str) -> Optional[Path]:
    for place in candidate_paths(store, recorded):
        if place.is_file():
            return place
    return None


def adopt_one(session: Session, store: ModelStore, max_bytes: int, row_id: int, dry_run: bool,
              purge_blob: bool = False) -> dict[str, Any]:
    """Adopt row ``row_id``'s file (see the module docstring); ``purge_blob`` never drops the app's marker."""
    recorded, parameters, model_type, metric_type = session.execute(
        select(MLModel.model_path, MLModel.parameters, MLModel.model_type, MLModel.metric_type)
        .where(MLModel.id == row_id)).one()
    session.rollback()
    path = _find(store, recorded)
    if path is None:
        raise ModelManagerError(f"the minibar app's file {recorded!r} is missing; restore it or delete the row")
    data = read_legacy_file(path, max_bytes)
    try:
        model = restricted_loads(data, max_bytes)
    except Exception as exc:
        raise ModelManagerError(f"file {recorded!r} does not load as a model: {exc!r}") from exc
    sig = signature.of_object(model, parameters)
    digest = sha256_hex(data)
    if dry_run:
        return {"status": "would_adopt", "size_bytes": len(data), "checksum_sha256": digest,
                "legacy_path": recorded, "input_signature": sig}
    key = store.write_new(lambda: generate_filename(model_type, metric_type, ".pkl"), data)
    try:
        written = store.read(key, max_bytes)
        if written != data:
            raise ModelManagerError(f"copy {key!r} read back differs from {recorded!r}")
        updated = session.execute(
            update(MLModel).where(MLModel.id == row_id, MLModel.model_path == recorded,
                                  MLModel.checksum_sha256.is_(None))
            .values(model_path=key, legacy_path=recorded, checksum_sha256=digest, size_bytes=len(data),
                    input_signature=sig)
            .execution_options(synchronize_session=False)
        ).rowcount
        if updated != 1:  # another migrator adopted it first (or the app changed the row): keep theirs
            session.rollback()
            store.delete(key)
            return {"status": "skipped", "size_bytes": 0}
        session.commit()
    except BaseException:
        rollback_quietly(session)
        discard_if_unreferenced(session, store, key)
        raise
    events.emit("model_adopted", f"Adopted the minibar app's model {row_id}: {recorded} copied to {key}",
                model_id=row_id, key=key, legacy_path=recorded, size_bytes=len(data),
                input=signature.explain(sig))
    return {"status": "adopted", "size_bytes": len(data), "path": store.locate(key), "legacy_path": recorded,
            "checksum_sha256": digest, "input_signature": sig}
