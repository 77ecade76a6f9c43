"""The OpenAPI 3.1 document of the JSON API, generated, never hand-written.

Each route of ``utils.web.api`` is declared once as an :class:`Operation`
(method, rule, the pydantic models of its query, body and response, and the
error statuses it can answer).  The same declaration drives request
validation in the view wrapper and, here, the document: component schemas
come from pydantic's JSON Schema generation (draft 2020-12, which OpenAPI 3.1
adopts as is).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import models_json_schema

from utils.web.api.base import ErrorResponse

REF_TEMPLATE = "#/components/schemas/{model}"
SECURITY_SCHEME = "bearerAuth"

ERROR_DESCRIPTIONS = {
    400: "Invalid input: malformed JSON, a broken rule (each listed in `errors` with field and rule)",
    401: "Missing or wrong `Authorization: Bearer` token (the reason is in `error`)",
    404: "No such resource",
    409: "Conflict: the model file failed verification, or the same job is already running",
    413: "Request body too large",
    415: "Content-Type is not application/json",
    429: "Too many wrong tokens from this client address: locked out for `Retry-After` seconds, right token or not",
    500: "The job ran and failed; the run is recorded as failed in ml_job_runs with its traceback",
    503: "ML_ADMIN_TOKEN not configured, ML subsystem disabled (ML_ENABLED=false) or database unavailable",
}


@dataclass(frozen=True)
class Operation:
    """One route of the API, as the code validates it and the document describes it."""

    method: str
    rule: str  # Flask rule, e.g. "/api/ml/models/<model_id>"
    endpoint: str
    summary: str
    response: type[BaseModel]
    description: str = ""
    tag: str = "ml"
    status: int = 200
    query: Optional[type[BaseModel]] = None
    body: Optional[type[BaseModel]] = None
    body_required: bool = True
    path_params: dict[str, Any] = field(default_factory=dict)  # name -> annotated type
    errors: tuple[int, ...] = ()
    needs_ml: bool = True  # answered with 503 when ML_ENABLED is false

    @property
    def openapi_path(self) -> str:
        return re.sub(r"<(?:[a-z_]+:)?([A-Za-z_][A-Za-z0-9_]*)>", r"{\1}", self.rule)

    @property
    def error_statuses(self) -> list[int]:
        statuses = {401, 429, 503, *self.errors}
        if self.query or self.body or self.path_params:
            statuses.add(400)
        if self.path_params:
            statuses.add(404)
        if self.body:
            statuses.update({413, 415})
        return sorted(statuses)


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter is absent rather than null: drop the null branch pydantic adds for Optional."""
    schema = dict(schema)
    if "default" in schema and schema["default"] is None:
        del schema["default"]
    branches = schema.get("anyOf")
    if branches:
        kept = [b for b in branches if b != {"type": "null"}]
        if len(kept) == 1:
            schema.pop("anyOf")
            schema = {**kept[0], **schema}
        else:
            schema["anyOf"] = kept
    return schema


def _query_parameters(model: type[BaseModel], components: dict[str, Any]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=REF_TEMPLATE)
    components.update(schema.get("$defs", {}))
    required = set(schema.get("required", []))
    parameters = []
    for name, prop in schema["properties"].items():
        prop = _without_null(prop)
        parameter: dict[str, Any] = {"name": name, "in": "query", "required": name in required, "schema": prop}
        if "description" in prop:
            parameter["description"] = prop["description"]
        parameters.append(parameter)
    return parameters


def _path_parameters(op: Operation) -> list[dict[str, Any]]:
    parameters = []
    for name, annotation in op.path_params.items():
        schema = TypeAdapter(annotation).json_schema(ref_template=REF_TEMPLATE)
        parameters.append({"name": name, "in": "path", "required": True, "schema": schema,
                           "description": schema.get("description", name)})
    return parameters


def _json_content(ref: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": ref}}


def _component_schemas(operations: list[Operation]) -> tuple[dict, dict[str, Any]]:
    """Schemas of every body (validation mode) and response (serialization mode) model."""
    wanted: list[tuple[type[BaseModel], str]] = [(ErrorResponse, "serialization")]
    for op in operations:
        if op.body is not None:
            wanted.append((op.body, "validation"))
        wanted.append((op.response, "serialization"))
    unique = list(dict.fromkeys(wanted))
    refs, top = models_json_schema(unique, ref_template=REF_TEMPLATE)
    return refs, top.get("$defs", {})


def _close_pattern_objects(node: Any) -> None:
    """``dict[ConstrainedKey, V]`` becomes ``patternProperties``, which alone lets any key that
    does not match through; pydantic refuses such keys, so the document says so too."""
    if isinstance(node, dict):
        if "patternProperties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for value in node.values():
            _close_pattern_objects(value)
    elif isinstance(node, list):
        for value in node:
            _close_pattern_objects(value)


def build_document(operations: list[Operation], *, title: str, version: str, description: str = "") -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``operations``."""
    refs, components = _component_schemas(operations)
    error_ref = refs[(ErrorResponse, "serialization")]
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        parameters = _path_parameters(op)
        if op.query is not None:
            parameters += _query_parameters(op.query, components)
        responses: dict[str, Any] = {
            str(op.status): {"description": op.summary, "content": _json_content(refs[(op.response, "serialization")])}
        }
        for status in op.error_statuses:
            responses[str(status)] = {"description": ERROR_DESCRIPTIONS[status], "content": _json_content(error_ref)}
        responses["401"]["headers"] = {
            "WWW-Authenticate": {"description": "the scheme to use: Bearer", "schema": {"type": "string"}}
        }
        responses["429"]["headers"] = {
            "Retry-After": {"description": "seconds until this address may try again", "schema": {"type": "integer"}}
        }
        entry: dict[str, Any] = {
            "operationId": op.endpoint,
            "summary": op.summary,
            "tags": [op.tag],
            "security": [{SECURITY_SCHEME: []}],
            "responses": responses,
        }
        if op.description:
            entry["description"] = op.description
        if parameters:
            entry["parameters"] = parameters
        if op.body is not None:
            entry["requestBody"] = {"required": op.body_required,
                                    "content": _json_content(refs[(op.body, "validation")])}
        paths.setdefault(op.openapi_path, {})[op.method.lower()] = entry
    _close_pattern_objects(components)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "security": [{SECURITY_SCHEME: []}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                SECURITY_SCHEME: {"type": "http", "scheme": "bearer",
                                  "description": "the value of ML_ADMIN_TOKEN"},
            },
        },
    }
