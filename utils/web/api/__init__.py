"""The JSON API under ``/api/ml/``: a thin HTTP layer over plain functions.

:mod:`.framework` declares routes (validation + OpenAPI from one declaration),
:mod:`.schemas` holds the pydantic models, :mod:`.openapi` builds the
document; the routes live by resource in :mod:`.models`, :mod:`.jobs`,
:mod:`.promotion`, :mod:`.observations`, :mod:`.alerts`, :mod:`.incidents` and :mod:`.meta` (imported here in
that order, which is the order of the document).
"""
from __future__ import annotations

from flask import Flask

# Importing a route module registers its routes; this order is the document's order.
from utils.web.api import models  # noqa: F401,I001
from utils.web.api import jobs  # noqa: F401
from utils.web.api import promotion  # noqa: F401
from utils.web.api import observations  # noqa: F401
from utils.web.api import alerts  # noqa: F401
from utils.web.api import incidents  # noqa: F401
from utils.web.api import meta  # noqa: F401
from utils.web.api.framework import API_PREFIX, MAX_BODY_BYTES, OPERATIONS, bp
from utils.web.api.meta import api_document

__all__ = ["API_PREFIX", "MAX_BODY_BYTES", "OPERATIONS", "api_document", "bp", "init_app"]


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
