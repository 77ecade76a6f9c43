"""Reads of model metadata in ``ml_models``: the active version's row, describe, list, model_info.

The read side of the registry (:mod:`.registry` keeps the writes: saving a
version and *the* activation function).  No query here fetches
``model_data``: the column is deferred and left out of every SELECT, so
listing or describing versions never pulls model bytes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session, load_only

from utils.ml.store import signature
from utils.ml.store.base import ModelStore, UnsafePathError
from utils.models import MLModel
from utils.time import as_utc

META_COLUMNS = (
    MLModel.id, MLModel.model_type, MLModel.metric_type, MLModel.model_path, MLModel.parameters,
    MLModel.training_date, MLModel.accuracy, MLModel.precision, MLModel.recall, MLModel.is_active,
    MLModel.created_at, MLModel.checksum_sha256, MLModel.size_bytes, MLModel.sklearn_version,
    MLModel.numpy_version, MLModel.python_version, MLModel.input_signature, MLModel.legacy_path,
)
_models = MLModel.__table__
# A Core statement built once, run on the session's connection: the ORM's
# per-call statement building cost more than the query itself on warm loads.
_ACTIVE_META_SQL = select(
    _models.c.id, _models.c.model_path, _models.c.checksum_sha256, _models.c.sklearn_version,
    _models.c.model_data.is_not(None), _models.c.input_signature, _models.c.parameters,
).where(
    _models.c.model_type == bindparam("model_type"),
    _models.c.metric_type == bindparam("metric_type"),
    _models.c.is_active.is_(True),
)


@dataclass(frozen=True)
class ActiveMeta:
    id: int
    model_path: Optional[str]
    checksum_sha256: Optional[str]
    sklearn_version: Optional[str]
    has_blob: bool
    recorded_signature: Optional[dict[str, Any]] = None
    parameters: Optional[dict[str, Any]] = None

    @property
    def signature(self) -> Optional[dict[str, Any]]:
        """The recorded input signature, else what the row's parameters imply (None: known only once loaded).

        (The FILE_BASED marker is looked at by the BLOB loader only: metadata queries never touch model_data.)
        """
        return signature.of_row(False, self.parameters, self.recorded_signature)


def meta_query():
    # load_only keeps model_data out of the SELECT even if someone undefers it.
    return select(MLModel).options(load_only(*META_COLUMNS))


def active_meta(session: Session, model_type: str, metric_type: str) -> Optional[ActiveMeta]:
    row = session.connection().execute(
        _ACTIVE_META_SQL, {"model_type": model_type, "metric_type": metric_type}
    ).first()
    return ActiveMeta(*row) if row else None


def describe(row: MLModel, store: ModelStore) -> dict[str, Any]:
    """Every metadata field of ``row``; never the bytes."""
    size_bytes = row.size_bytes
    sig = signature.of_row(False, row.parameters, row.input_signature)
    path = None
    if row.model_path:
        try:
            path = store.locate(row.model_path)
        except UnsafePathError:
            path = None
    return {
        "id": row.id,
        "model_type": row.model_type,
        "metric_type": row.metric_type,
        "path": path,
        "storage_key": row.model_path,
        "storage": "file" if row.model_path else "database",
        "size_kb": round(size_bytes / 1024, 2) if size_bytes is not None else None,
        "size_bytes": size_bytes,
        "checksum_sha256": row.checksum_sha256,
        "parameters": row.parameters or {},
        "training_date": as_utc(row.training_date),
        "created_at": as_utc(row.created_at),
        "accuracy": row.accuracy,
        "precision": row.precision,
        "recall": row.recall,
        "is_active": bool(row.is_active),
        "sklearn_version": row.sklearn_version,
        "numpy_version": row.numpy_version,
        "python_version": row.python_version,
        # Not produced by this service (no library versions recorded: the minibar app's rows, BLOB or file).
        "legacy": row.sklearn_version is None,
        "legacy_path": row.legacy_path,
        "input_signature": sig,
        "input": signature.explain(sig),
        # False: detection skips it (incompatible_input); the next training of its metric type replaces it.
        "compatible": signature.compatible(sig),
    }


def list_models(session: Session, store: ModelStore, model_type: Optional[str] = None,
                metric_type: Optional[str] = None, active: Optional[bool] = None,
                files_only: bool = False) -> list[dict[str, Any]]:
    """Versions, newest first, optionally filtered (``files_only``: file-backed rows only)."""
    query = meta_query().order_by(MLModel.created_at.desc(), MLModel.id.desc())
    if model_type is not None:
        query = query.where(MLModel.model_type == model_type)
    if metric_type is not None:
        query = query.where(MLModel.metric_type == metric_type)
    if active is not None:
        query = query.where(MLModel.is_active.is_(active))
    if files_only:
        query = query.where(MLModel.model_path.is_not(None))
    return [describe(row, store) for row in session.execute(query).scalars()]


def model_info(session: Session, store: ModelStore, model_type: str, metric_type: str) -> Optional[dict[str, Any]]:
    """The active version's metadata (the newest if none is active), or None."""
    query = meta_query().where(MLModel.model_type == model_type, MLModel.metric_type == metric_type).order_by(
        MLModel.is_active.desc(), MLModel.created_at.desc(), MLModel.id.desc()).limit(1)
    row = session.execute(query).scalar_one_or_none()
    return describe(row, store) if row is not None else None
