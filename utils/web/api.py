"""The JSON API under ``/api/ml/``: a thin HTTP layer over plain functions.

Every route is declared with :func:`operation`, which registers the Flask
view *and* its :class:`~utils.web.openapi.Operation`; the wrapper validates
path, query and body with the declared pydantic models, and the same
declarations generate ``GET /api/ml/openapi.json``.

Every route needs ``Authorization: Bearer $ML_ADMIN_TOKEN``; with
``ML_ENABLED=false`` the ML routes answer 503.  Errors are always JSON
``{"error": ...}`` (validation errors add ``errors``: field and rule each),
never an HTML page, never a 500 for bad input.  Request bodies are parsed by
pydantic as JSON only: nothing from a request is ever unpickled.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional

from flask import Blueprint, Flask, Response, current_app, request
from pydantic import BaseModel, TypeAdapter, ValidationError
from sqlalchemy.exc import DBAPIError, OperationalError

from utils.extensions import db
from utils.ml import alerts as alert_store
from utils.ml import model_catalog
from utils.ml.model_manager import get_model_manager
from utils.ml.observations import ObservationValidationError, ingest_observations
from utils.web import schemas as s
from utils.web.auth import check_request
from utils.web.openapi import Operation, build_document

API_PREFIX = "/api/ml"
API_VERSION = "1.0.0"
# 10,000 observations with generous extra_data stay far below this.
MAX_BODY_BYTES = 32 * 1024 * 1024
# A response lists at most this many broken rules (error_count has them all).
MAX_LISTED_ERRORS = 100
JSON_MIMETYPE = "application/json"

bp = Blueprint("ml_api", __name__, url_prefix=API_PREFIX)
OPERATIONS: list[Operation] = []
_BY_ENDPOINT: dict[str, Operation] = {}


class ApiError(Exception):
    """An error answered as JSON ``{"error": message, "errors": [...]}`` with ``status``."""

    def __init__(self, status: int, message: str, errors: Optional[list[dict[str, Any]]] = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors


def json_response(model: BaseModel, status: int = 200) -> Response:
    # model_dump_json, not jsonify: ISO 8601 datetimes and never a bare NaN in the output.
    return Response(model.model_dump_json(), status=status, mimetype=JSON_MIMETYPE)


def error_json(status: int, message: str, errors: Optional[list[dict[str, Any]]] = None) -> Response:
    body = s.ErrorResponse(error=message)
    if errors:
        body.errors = [s.FieldError(**e) for e in errors[:MAX_LISTED_ERRORS]]
        if len(errors) > MAX_LISTED_ERRORS:
            body.error_count = len(errors)
    return Response(body.model_dump_json(exclude_none=True), status=status, mimetype=JSON_MIMETYPE)


# ----------------------------------------------------------------- validation
def _rule(error: dict[str, Any], unknown: str = "unknown field") -> str:
    message = str(error.get("msg", "invalid"))
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix):]
    if error.get("type") == "extra_forbidden":
        return unknown
    if error.get("type") == "string_pattern_mismatch":
        pattern = (error.get("ctx") or {}).get("pattern")
        return f"must match {pattern}" if pattern else message
    return message


def _validation_errors(exc: ValidationError, root: str, strip: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """pydantic errors as ``{field, rule}``; ``strip`` drops union tags from the location."""
    out = []
    for error in exc.errors(include_url=False):
        loc = list(error["loc"])
        if loc and loc[0] in strip:
            loc = loc[1:]
        unknown = "unknown parameter" if root == "query" else "unknown field"
        out.append({"field": ".".join(str(part) for part in loc) or root, "rule": _rule(error, unknown)})
    return out


def _ingest_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """Batch errors as ``{index, field, rule}`` (location ``observations.<index>.<field>``)."""
    out = []
    for error in exc.errors(include_url=False):
        loc = list(error["loc"])
        if len(loc) >= 2 and loc[0] == "observations" and isinstance(loc[1], int):
            field = ".".join(str(part) for part in loc[2:]) or "item"
            out.append({"index": loc[1], "field": field, "rule": _rule(error)})
        else:
            out.append({"field": ".".join(str(part) for part in loc) or "body", "rule": _rule(error)})
    return out


def _summary(prefix: str, errors: list[dict[str, Any]]) -> str:
    first = errors[0]
    where = f"item {first['index']}, {first['field']}" if first.get("index") is not None else first["field"]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{prefix}: {where}: {first['rule']}{more}"


def _parse_path(adapters: dict[str, TypeAdapter], values: dict[str, str]) -> dict[str, Any]:
    parsed = {}
    for name, raw in values.items():
        try:
            parsed[name] = adapters[name].validate_python(raw, strict=False)
        except ValidationError as exc:
            errors = [{"field": name, "rule": _rule(e)} for e in exc.errors(include_url=False)]
            raise ApiError(400, _summary("invalid path", errors), errors) from None
    return parsed


def _parse_query(model: type[BaseModel]) -> BaseModel:
    raw: dict[str, Any] = {}
    for name, values in request.args.lists():
        # Unknown names are left for the model to report as unknown, repeated or not.
        if len(values) > 1 and name in model.model_fields:
            errors = [{"field": name, "rule": "must be given at most once"}]
            raise ApiError(400, _summary("invalid query", errors), errors)
        raw[name] = values[0]
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        errors = _validation_errors(exc, "query")
        raise ApiError(400, _summary("invalid query", errors), errors) from None


def _parse_body(model: type[BaseModel], required: bool, error_builder: Callable[[ValidationError], list]) -> BaseModel:
    data = request.get_data(cache=False)
    # RFC 8259 lets a parser ignore a UTF-8 byte order mark; some Windows tools send one.
    data = data.removeprefix(b"\xef\xbb\xbf")
    if not data.strip():
        if required:
            errors = [{"field": "body", "rule": "required: a JSON object"}]
            raise ApiError(400, "request body is required: a JSON object", errors)
        return model()
    mimetype = request.mimetype or ""
    if mimetype != JSON_MIMETYPE and not mimetype.endswith("+json"):
        raise ApiError(415, f"Content-Type must be application/json (got {mimetype or 'none'!r})")
    try:
        # JSON only, strictly typed: "1" is not a number and nothing is unpickled.
        return model.model_validate_json(data, strict=True)
    except ValidationError as exc:
        malformed = [e for e in exc.errors(include_url=False) if e["type"] == "json_invalid"]
        if malformed:
            detail = str(malformed[0]["msg"]).removeprefix("Invalid JSON: ")
            errors = [{"field": "body", "rule": f"must be valid JSON ({detail})"}]
            raise ApiError(400, f"malformed JSON: {detail}", errors) from None
        errors = error_builder(exc)
        raise ApiError(400, _summary("invalid request body", errors), errors) from None



def operation(method: str, rule: str, *, response: type[BaseModel], summary: str, tag: str,
              description: str = "", query: Optional[type[BaseModel]] = None, body: Optional[type[BaseModel]] = None,
              body_required: bool = True, path: Optional[dict[str, Any]] = None, errors: tuple[int, ...] = (),
              status: int = 200, needs_ml: bool = True,
              body_errors: Callable[[ValidationError], list] = lambda exc: _validation_errors(exc, "body")) -> Callable:
    """Register a view and its OpenAPI operation.

    The view receives the validated path values by name, ``query=`` and
    ``body=`` (pydantic instances) when declared, and returns a response model
    instance (sent with ``status``) or a ``(model, status)`` tuple.
    """

    def decorator(view: Callable[..., Any]) -> Callable[..., Any]:
        op = Operation(method=method, rule=API_PREFIX + rule, endpoint=view.__name__, summary=summary,
                       description=description or (view.__doc__ or "").strip(), tag=tag, status=status,
                       response=response, query=query, body=body, body_required=body_required,
                       path_params=dict(path or {}), errors=errors, needs_ml=needs_ml)
        OPERATIONS.append(op)
        _BY_ENDPOINT[f"{bp.name}.{op.endpoint}"] = op
        adapters = {name: TypeAdapter(annotation) for name, annotation in op.path_params.items()}

        @functools.wraps(view)
        def handler(**path_values: str) -> Response:
            kwargs = _parse_path(adapters, path_values)
            if query is not None:
                kwargs["query"] = _parse_query(query)
            if body is not None:
                kwargs["body"] = _parse_body(body, body_required, body_errors)
            result = view(**kwargs)
            model, code = result if isinstance(result, tuple) else (result, status)
            return json_response(model, code)

        bp.add_url_rule(rule, endpoint=view.__name__, view_func=handler, methods=[method])
        return view

    return decorator


# ------------------------------------------------------------------- guards
@bp.before_request
def _guard() -> Optional[Response]:
    """Auth first (nothing is told to a caller without the token), then ML_ENABLED, then body size."""
    refused = check_request()
    if refused is not None:
        return refused
    op = _BY_ENDPOINT.get(request.endpoint or "")
    if op is not None and op.needs_ml and not current_app.config.get("ML_ENABLED", True):
        return error_json(503, "the ML subsystem is disabled (ML_ENABLED=false)")
    request.max_content_length = MAX_BODY_BYTES
    return None


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError) -> Response:
    return error_json(exc.status, exc.message, exc.errors)


@bp.errorhandler(OperationalError)
@bp.errorhandler(DBAPIError)
def _database_error(exc: DBAPIError) -> Response:
    # The database went away (or refused the connection): the service is unavailable, not broken.
    try:
        db.session.rollback()
    except Exception:  # the connection may be gone for good; the pool will replace it
        pass
    current_app.logger.warning("database error in %s: %s", request.path, exc.__class__.__name__)
    return error_json(503, f"database unavailable: {str(exc.orig or exc).splitlines()[0][:200]}")


def _actor(name: Optional[str]) -> str:
    return f"api:{name}" if name else "api"


# ------------------------------------------------------------------- models
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
        return s.ModelDetail.model_validate(model_catalog.model_detail(get_model_manager(), model_id))
    except model_catalog.ModelNotFoundError as exc:
        raise ApiError(404, str(exc)) from None


@operation("GET", "/models/<model_id>/activations", response=s.ActivationList, path=MODEL_ID, tag="models",
           summary="Audit trail of activations of this model's type")
def get_model_activations(model_id: int) -> s.ActivationList:
    """Every promotion and rollback of the model's (model_type, metric_type), newest first."""
    try:
        rows = model_catalog.model_activations(get_model_manager(), model_id)
    except model_catalog.ModelNotFoundError as exc:
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
        result = model_catalog.activate(get_model_manager(), model_id, actor=_actor(body.actor), reason=body.reason)
    except model_catalog.ModelNotFoundError as exc:
        raise ApiError(404, str(exc)) from None
    except model_catalog.ActivationRefusedError as exc:
        raise ApiError(409, str(exc)) from None
    return s.ActivationResult.model_validate(result)


# --------------------------------------------------------------------- jobs
def _run_job(name: str, body: s.JobRequest | s.CleanupRequest) -> s.JobResult:
    from utils.ml import jobs  # the scheduler's module: same functions, same cross-process busy check

    actor = _actor(body.actor)
    try:
        outcome = jobs.run_job_now(name, actor, **body.params())
    except jobs.JobBusyError as exc:
        raise ApiError(409, str(exc)) from None
    except ApiError:
        raise
    except Exception as exc:  # recorded as failed in ml_job_runs (with the traceback) by run_job_now
        db.session.rollback()
        raise ApiError(500, f"job {name} failed: {exc.__class__.__name__}: {str(exc)[:300]} "
                            "(the traceback is in ml_job_runs and the server log)") from None
    return s.JobResult.model_validate({**outcome, "actor": actor})


@operation("POST", "/train", response=s.JobResult, body=s.JobRequest, body_required=False, errors=(409, 500),
           tag="jobs", summary="Train the models now (the same job the scheduler runs)")
def train(body: s.JobRequest) -> s.JobResult:
    """409 while training is already running in any process."""
    return _run_job("train_models", body)


@operation("POST", "/scan", response=s.JobResult, body=s.JobRequest, body_required=False, errors=(409, 500),
           tag="jobs", summary="Scan new observations for anomalies now")
def scan(body: s.JobRequest) -> s.JobResult:
    """409 while a scan is already running in any process."""
    return _run_job("anomaly_scan", body)


@operation("POST", "/cleanup", response=s.JobResult, body=s.CleanupRequest, body_required=False, errors=(409, 500),
           tag="jobs", summary="Delete old model versions now (keeps ML_KEEP_VERSIONS and the active one)")
def cleanup(body: s.CleanupRequest) -> s.JobResult:
    """409 while a cleanup is already running in any process."""
    return _run_job("cleanup_models", body)


# ------------------------------------------------------------ observations
@operation("POST", "/metrics", response=s.IngestResult, body=s.IngestRequest, status=201, tag="observations",
           body_errors=_ingest_errors, summary="Ingest up to 10,000 observations, all or nothing")
def ingest_metrics(body: s.IngestRequest) -> s.IngestResult:
    """Every item is validated before any is written; errors name the item index, the field and the rule."""
    items = [obs.model_dump() for obs in body.observations]
    try:
        inserted = ingest_observations(items, max_items=s.MAX_BATCH)
    except ObservationValidationError as exc:
        raise ApiError(400, f"invalid observations: {exc}", exc.errors) from None
    return s.IngestResult(inserted=inserted)


@operation("POST", "/detect", response=s.DetectResult, body=s.DetectRequest, tag="observations",
           body_errors=lambda exc: _validation_errors(exc, "body", strip=s.DETECT_TAGS),
           summary="Score values or observations now, saying which method answered")
def detect(body: s.DetectRequest) -> s.DetectResult:
    """File model, else the database BLOB, else a robust Z-score; nothing is stored."""
    from utils.ml.anomaly_detector import AnomalyDetector

    request_body = body.root
    if isinstance(request_body, s.DetectValues):
        values: list[Any] = list(request_body.values)
        timestamps: list[Any] = [None] * len(values)
    else:
        values = [{"metric_value": o.metric_value, "entity_id": o.entity_id} for o in request_body.observations]
        timestamps = [o.timestamp for o in request_body.observations]
    result = AnomalyDetector(db).detect_anomalies_with_fallback(request_body.metric_type, values).to_dict()
    db.session.rollback()
    for index, row in enumerate(result["results"]):
        row["index"] = index
        if timestamps[index] is not None:
            row["timestamp"] = timestamps[index]
    result["metric_type"] = request_body.metric_type
    return s.DetectResult.model_validate(result)


# ------------------------------------------------------------------- alerts
ALERT_ID = {"alert_id": s.RowId}


@operation("GET", "/alerts", response=s.AlertPageOut, query=s.AlertQuery, tag="alerts",
           summary="List alerts, newest first, filtered and paginated")
def list_alerts(query: s.AlertQuery) -> s.AlertPageOut:
    """Filters: metric_type, method, is_read, is_false_positive, since/until (detected_at, inclusive)."""
    filters = alert_store.AlertFilters(
        metric_type=query.metric_type, method=query.method, is_read=query.is_read,
        is_false_positive=query.is_false_positive, since=query.since, until=query.until,
    )
    page = alert_store.list_alerts(filters, page=query.page, per_page=query.per_page)
    return s.AlertPageOut(alerts=page.items, page=page.page, per_page=page.per_page, total=page.total,
                          pages=page.pages)


def _alert_action(action: Callable[[int], dict[str, Any]], alert_id: int) -> s.Alert:
    try:
        return s.Alert.model_validate(action(alert_id))
    except alert_store.AlertNotFoundError as exc:
        raise ApiError(404, str(exc)) from None


@operation("POST", "/alerts/<alert_id>/read", response=s.Alert, path=ALERT_ID, tag="alerts",
           summary="Mark an alert read")
def mark_alert_read(alert_id: int) -> s.Alert:
    """Idempotent: the first read_at is kept."""
    return _alert_action(alert_store.mark_read, alert_id)


@operation("POST", "/alerts/<alert_id>/false-positive", response=s.Alert, path=ALERT_ID, tag="alerts",
           summary="Mark an alert a false positive (and read)")
def mark_alert_false_positive(alert_id: int) -> s.Alert:
    """Idempotent."""
    return _alert_action(alert_store.mark_false_positive, alert_id)


# --------------------------------------------------------------- document
class OpenApiDocument(s.ResponseModel):
    """The OpenAPI 3.1 document (free-form JSON)."""

    model_config = {"extra": "allow"}
    openapi: str


@operation("GET", "/openapi.json", response=OpenApiDocument, tag="meta", needs_ml=False,
           summary="This API's OpenAPI 3.1 document, generated from the models that validate requests")
def openapi_document() -> OpenApiDocument:
    """Served even when ML_ENABLED is false: it describes the API, it does not use it."""
    return OpenApiDocument.model_validate(api_document())


@functools.lru_cache(maxsize=1)
def api_document() -> dict[str, Any]:
    """The generated OpenAPI document (built once per process: the routes do not change)."""
    return build_document(
        OPERATIONS, title="Minibar ML API", version=API_VERSION,
        description="Model management, training, scans, observations and alerts of the minibar ML service. "
                    "Every route needs `Authorization: Bearer $ML_ADMIN_TOKEN`.",
    )


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
