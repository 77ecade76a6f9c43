"""What an operator asks about model versions: one version in full, the activation
audit trail, and activation with refusals the API, the CLI and the dashboard share.

Plain functions over :class:`~utils.ml.model_manager.ModelManager`; they need
an application context.  Nothing here reads model bytes except the checksum
verification an activation does.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from sqlalchemy import select

from utils.ml.store.base import ModelManagerError, ModelNotFoundError, ModelValidationError
from utils.ml.validation import MAX_ROW_ID
from utils.models import MLModel, ModelActivation
from utils.time import as_utc

if TYPE_CHECKING:  # the facade imports this module's neighbours, not the other way round
    from utils.ml.model_manager import ModelManager

DEFAULT_ACTIVATIONS = 20

__all__ = ["ActivationRefusedError", "ModelNotFoundError", "activate", "activation_to_dict", "list_activations",
           "model_activations", "model_detail"]


class ActivationRefusedError(RuntimeError):
    """The version exists but cannot be activated (its file failed verification...)."""


def _row(manager: "ModelManager", model_id: int) -> MLModel:
    row = manager.session.get(MLModel, model_id) if 1 <= model_id <= MAX_ROW_ID else None
    if row is None:
        raise ModelNotFoundError(model_id)
    return row


def activation_to_dict(row: ModelActivation) -> dict[str, Any]:
    return {
        "id": row.id,
        "model_type": row.model_type,
        "metric_type": row.metric_type,
        "from_model_id": row.from_model_id,
        "to_model_id": row.to_model_id,
        "actor": row.actor,
        "reason": row.reason,
        "activated_at": as_utc(row.activated_at),
    }


def list_activations(manager: "ModelManager", *, model_type: Optional[str] = None,
                     metric_type: Optional[str] = None, limit: int = DEFAULT_ACTIVATIONS) -> list[dict[str, Any]]:
    """The audit trail, newest first, optionally for one (model_type, metric_type)."""
    query = select(ModelActivation).order_by(ModelActivation.activated_at.desc(), ModelActivation.id.desc())
    if model_type is not None:
        query = query.where(ModelActivation.model_type == model_type)
    if metric_type is not None:
        query = query.where(ModelActivation.metric_type == metric_type)
    return [activation_to_dict(row) for row in manager.session.execute(query.limit(limit)).scalars()]


def model_activations(manager: "ModelManager", model_id: int, limit: int = 100) -> list[dict[str, Any]]:
    """Activations of the model's (model_type, metric_type): every promotion and rollback around it."""
    row = _row(manager, model_id)
    return list_activations(manager, model_type=row.model_type, metric_type=row.metric_type, limit=limit)


def model_detail(manager: "ModelManager", model_id: int) -> dict[str, Any]:
    """Everything about one version: metadata, checksum, size, storage, library versions,
    its sibling versions and the latest activations of its type.  Never the bytes."""
    row = _row(manager, model_id)
    detail = manager.describe(row)
    has_blob = bool(manager.session.execute(
        select(MLModel.model_data.is_not(None)).where(MLModel.id == model_id)
    ).scalar())
    file_size = manager.store.size(row.model_path) if row.model_path else None
    detail.update(
        metrics={"accuracy": row.accuracy, "precision": row.precision, "recall": row.recall},
        storage_location={
            "backend": detail["storage"],
            "models_dir": str(manager.models_dir) if manager.models_dir is not None else None,
            "key": row.model_path,
            "path": detail["path"],
            "file_exists": (file_size is not None) if row.model_path else None,
            "file_size_bytes": file_size,
            "has_blob": has_blob,
            # Which store holds the bytes (local directory or S3 bucket and key); never credentials.
            "store": manager.store.location_info(row.model_path) if row.model_path else None,
        },
        library_versions={"sklearn": row.sklearn_version, "numpy": row.numpy_version, "python": row.python_version},
        versions=[
            {key: version[key] for key in ("id", "is_active", "created_at", "training_date", "accuracy",
                                           "size_bytes", "storage")}
            for version in manager.list_models(model_type=row.model_type, metric_type=row.metric_type)
        ],
        activations=list_activations(manager, model_type=row.model_type, metric_type=row.metric_type),
    )
    manager.session.rollback()  # end the read transaction
    return detail


def activate(manager: "ModelManager", model_id: int, actor: str, reason: Optional[str] = None) -> dict[str, Any]:
    """Make ``model_id`` the active version of its type (promotion, or rollback to an older one), and pin it.

    The manual path (API, CLI, dashboard): :meth:`ModelManager.activate_model`
    does the activation (verified, atomic, audited; the active version again
    is a no-op, ``changed`` false), then the version is pinned
    (:mod:`utils.ml.promotion.pins`): training stops changing the type until
    someone unpins it.  The result carries ``pinned`` (the pin).  Raises
    :class:`ModelNotFoundError`, or :class:`ActivationRefusedError` naming why
    the version cannot be activated; bad arguments raise ModelValidationError.
    """
    from utils.ml.promotion.pins import pin

    try:
        result = manager.activate_model(model_id, actor=actor, reason=reason)
    except (ModelNotFoundError, ModelValidationError):
        raise
    except ModelManagerError as exc:
        raise ActivationRefusedError(str(exc)) from exc
    result["pinned"] = pin(manager.session, model_id, actor, reason)
    return result
