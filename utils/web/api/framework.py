"""The API's operation framework: one declaration per route validates requests and documents them.

Every route is declared with :func:`operation`, which registers the Flask
view *and* its :class:`~utils.web.api.openapi.Operation`; the wrapper
validates path, query and body with the declared pydantic models, and the
same declarations generate ``GET /api/ml/openapi.json``.  Bad input raises
:class:`~utils.ml.validation.InvalidInput` (the one field-and-rule error of
the service), answered with 400 and every broken rule; other refusals raise
:class:`ApiError` with their status.

Every route needs ``Authorization: Bearer $ML_ADMIN_TOKEN``; with
``ML_ENABLED=false`` the ML routes answer 503.  Errors are always JSON
``{"error": ...}`` (validation errors add ``errors``: field and rule each),
never an HTML page, never a 500 for bad input.  Request bodies are parsed by
pydantic as JSON only: nothing from a request is ever unpickled.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional

from flask import Blueprint, Response, current_app, request
from pydantic import BaseModel, TypeAdapter, ValidationError
from sqlalchemy.exc import DBAPIError, OperationalError

from utils.db_bounds import DatabaseUnavailable
from utils.ml.validation import InvalidInput, rule_text
from utils.web.api.openapi import Operation
from utils.web.api.base import ErrorResponse, FieldError
from utils.web.auth import check_request
from utils.web.errors import unavailable_response

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
    """A refusal other than bad input (404, 409, 415, 500...), answered as JSON ``{"error": message}``."""

    def __init__(self, status: int, message: str, errors: Optional[list[dict[str, Any]]] = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors


def json_response(model: BaseModel, status: int = 200) -> Response:
    # model_dump_json, not jsonify: ISO 8601 datetimes and never a bare NaN in the output.
    return Response(model.model_dump_json(), status=status, mimetype=JSON_MIMETYPE)


def error_json(status: int, message: str, errors: Optional[list[dict[str, Any]]] = None) -> Response:
    body = ErrorResponse(error=message)
    if errors:
        body.errors = [FieldError(**e) for e in errors[:MAX_LISTED_ERRORS]]
        if len(errors) > MAX_LISTED_ERRORS:
            body.error_count = len(errors)
    return Response(body.model_dump_json(exclude_none=True), status=status, mimetype=JSON_MIMETYPE)


# ----------------------------------------------------------------- validation
def validation_errors(exc: ValidationError, root: str, strip: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """pydantic errors as ``{field, rule}``; ``strip`` drops union tags from the location."""
    out = []
    for error in exc.errors(include_url=False):
        loc = list(error["loc"])
        if loc and loc[0] in strip:
            loc = loc[1:]
        unknown = "unknown parameter" if root == "query" else "unknown field"
        out.append({"field": ".".join(str(part) for part in loc) or root, "rule": rule_text(error, unknown)})
    return out


def ingest_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """Batch errors as ``{index, field, rule}`` (location ``observations.<index>.<field>``)."""
    out = []
    for error in exc.errors(include_url=False):
        loc = list(error["loc"])
        if len(loc) >= 2 and loc[0] == "observations" and isinstance(loc[1], int):
            field = ".".join(str(part) for part in loc[2:]) or "item"
            out.append({"index": loc[1], "field": field, "rule": rule_text(error)})
        else:
            out.append({"field": ".".join(str(part) for part in loc) or "body", "rule": rule_text(error)})
    return out


def _invalid(message: str, errors: list[dict[str, Any]]) -> InvalidInput:
    first = errors[0]
    return InvalidInput(str(first.get("field")), str(first["rule"]), errors=errors, message=message)


def _summary(prefix: str, errors: list[dict[str, Any]]) -> str:
    first = errors[0]
    where = f"item {first['index']}, {first['field']}" if first.get("index") is not None else first["field"]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{prefix}: {where}: {first['rule']}{more}"


def _parse_path(adapters: dict[str, TypeAdapter], values: dict[str, str]) -> dict[str, Any]:
    parsed = {}
    for name, raw in values.items():
        try:
            value = adapters[name].validate_python(raw, strict=False)
        except ValidationError as exc:
            errors = [{"field": name, "rule": rule_text(e)} for e in exc.errors(include_url=False)]
            raise _invalid(_summary("invalid path", errors), errors) from None
        # Lax parsing reads " 1", "1.0" and "+1" as 1; only the plain digits name resource 1.
        if isinstance(value, int) and not (raw.isascii() and raw.isdigit()):
            raise ApiError(404, f"{name} {raw!r} names nothing: ids are plain digits, such as {value}")
        parsed[name] = value
    return parsed


def _parse_query(model: type[BaseModel]) -> BaseModel:
    raw: dict[str, Any] = {}
    for name, values in request.args.lists():
        # Unknown names are left for the model to report as unknown, repeated or not.
        if len(values) > 1 and name in model.model_fields:
            errors = [{"field": name, "rule": "must be given at most once"}]
            raise _invalid(_summary("invalid query", errors), errors)
        raw[name] = values[0]
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        errors = validation_errors(exc, "query")
        raise _invalid(_summary("invalid query", errors), errors) from None


def _parse_body(model: type[BaseModel], required: bool, error_builder: Callable[[ValidationError], list]) -> BaseModel:
    data = request.get_data(cache=False)
    if request.content_length is None and len(data) >= MAX_BODY_BYTES:
        # A chunked body is cut at the limit by werkzeug without an error; what
        # was read is then "malformed JSON" (400).  Reaching the limit is the error.
        raise ApiError(413, f"request body too large (the limit is {MAX_BODY_BYTES // 2**20} MB)")
    # RFC 8259 lets a parser ignore a UTF-8 byte order mark; some Windows tools send one.
    data = data.removeprefix(b"\xef\xbb\xbf")
    if not data.strip():
        if required:
            errors = [{"field": "body", "rule": "required: a JSON object"}]
            raise _invalid("request body is required: a JSON object", errors)
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
            raise _invalid(f"malformed JSON: {detail}", errors) from None
        errors = error_builder(exc)
        raise _invalid(_summary("invalid request body", errors), errors) from None


def operation(method: str, rule: str, *, response: type[BaseModel], summary: str, tag: str,
              description: str = "", query: Optional[type[BaseModel]] = None, body: Optional[type[BaseModel]] = None,
              body_required: bool = True, path: Optional[dict[str, Any]] = None, errors: tuple[int, ...] = (),
              status: int = 200, needs_ml: bool = True,
              body_errors: Callable[[ValidationError], list] = lambda exc: validation_errors(exc, "body")) -> Callable:
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
    if op is not None and op.needs_ml and not current_app.config["ML_ENABLED"]:
        return error_json(503, "the ML subsystem is disabled (ML_ENABLED=false)")
    request.max_content_length = MAX_BODY_BYTES
    return None


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError) -> Response:
    return error_json(exc.status, exc.message, exc.errors)


@bp.errorhandler(InvalidInput)
def _invalid_input(exc: InvalidInput) -> Response:
    # Bad request data, whether pydantic or a domain function found it: 400 with every broken rule.
    return error_json(400, str(exc), exc.errors)


@bp.errorhandler(OperationalError)
@bp.errorhandler(DBAPIError)
@bp.errorhandler(DatabaseUnavailable)
def _database_error(exc: Exception) -> Response:
    # The database went away, froze or refused the connection: the service is unavailable, not broken.
    return unavailable_response(exc)


def actor_of(name: Optional[str]) -> str:
    """How an API caller is recorded in audits and job runs: ``api`` or ``api:<actor>``."""
    return f"api:{name}" if name else "api"
