"""Model routes: list versions, one version in full, its audit trail, activation (promotion or rollback)."""
from __future__ import annotations

from utils.extensions import db
from utils.ml.model_manager import get_model_manager
from utils.ml.store import catalog
from utils.web.api import schemas as s
from utils.web.api.framework import ApiError, actor_of, operation


MODEL_ID = {"model_id": s.RowId}


@operation("GET", "/models", response=s.ModelList, query=s.ModelQuery, tag="models",
           summary="List model versions (metadata only)")
def list_models(query: s.ModelQuery) -> s.ModelList:
    """Every kept version, newest first; filter by model_type, metric_type and active."""
    models = get_model_manager().list_models(model_type=query.model_type, metric_type=query.metric_type,
                                             active=query.active)
    db.session.rollback()
    return s.ModelList(models=models, count=len(models))


@operation("GET", "/models/<model_id>", response=s.ModelDetail, path=MODEL_ID, tag="models",
           summary="One model version: metadata, checksum, size, storage, versions, metrics")
def get_model(model_id: int) -> s.ModelDetail:
    """Never the model's bytes."""
    try:
        return s.ModelDetail.model_validate(catalog.model_detail(get_model_manager(), model_id))
    except catalog.ModelNotFoundError as exc:
        raise ApiError(404, str(exc)) from None


@operation("GET", "/models/<model_id>/activations", response=s.ActivationList, path=MODEL_ID, tag="models",
           summary="Audit trail of activations of this model's type")
def get_model_activations(model_id: int) -> s.ActivationList:
    """Every promotion and rollback of the model's (model_type, metric_type), newest first."""
    try:
        rows = catalog.model_activations(get_model_manager(), model_id)
    except catalog.ModelNotFoundError as exc:
        raise ApiError(404, str(exc)) from None
    db.session.rollback()
    return s.ActivationList(activations=rows, count=len(rows))


@operation("POST", "/models/<model_id>/activate", response=s.ActivationResult, path=MODEL_ID, tag="models",
           body=s.ActivateRequest, body_required=False, errors=(409,),
           summary="Activate a kept version (promotion or rollback)")
def activate_model(model_id: int, body: s.ActivateRequest) -> s.ActivationResult:
    """Atomic and audited (ml_model_activations); every process's detector cache sees it at once.
    409 when the version's file is missing or fails its checksum (nothing changes)."""
    try:
        result = catalog.activate(get_model_manager(), model_id, actor=actor_of(body.actor), reason=body.reason)
    except catalog.ModelNotFoundError as exc:
        raise ApiError(404, str(exc)) from None
    except catalog.ActivationRefusedError as exc:
        raise ApiError(409, str(exc)) from None
    return s.ActivationResult.model_validate(result)
