"""``GET /api/ml/openapi.json``: the document generated from the declarations that validate requests."""
from __future__ import annotations

import functools
from typing import Any

from utils.web.api import schemas as s
from utils.web.api.framework import API_VERSION, OPERATIONS, operation
from utils.web.api.openapi import build_document


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
