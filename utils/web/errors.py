"""Every error is JSON ``{"error": "..."}`` with a 4xx/5xx status, never an HTML page
(the signed-in dashboard gets its own error page instead).

A database that is down, frozen or out of connections is *unavailable*, not
broken: every route answers 503 with ``Retry-After``, never 500
(:func:`is_database_unavailable` says which errors count).
"""
from __future__ import annotations

import logging
from typing import Optional

from flask import Flask, jsonify, make_response, render_template, request
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from werkzeug.exceptions import HTTPException

from utils.db_bounds import DatabaseUnavailable

logger = logging.getLogger(__name__)

# What a client should wait before retrying (about one breaker period).
RETRY_AFTER_SECONDS = 5
_UNAVAILABLE = (DatabaseUnavailable, OperationalError, InterfaceError, PoolTimeoutError)


def error_response(message: str, status: int, **extra):
    body = {"error": message}
    body.update(extra)
    return jsonify(body), status


def database_unavailable_cause(exc: BaseException) -> Optional[BaseException]:
    """The database-unavailable error behind ``exc`` (itself, or anywhere in its cause/context chain)."""
    seen = 0
    current: Optional[BaseException] = exc
    while current is not None and seen < 10:
        if isinstance(current, _UNAVAILABLE):
            return current
        current = current.__cause__ or current.__context__
        seen += 1
    return None


def is_database_unavailable(exc: BaseException) -> bool:
    return database_unavailable_cause(exc) is not None


def unavailable_response(exc: BaseException):
    """503 (JSON, or the dashboard's page) for a database-unavailable error; logs one line."""
    from utils.extensions import db

    try:
        db.session.rollback()
    except Exception:  # the connection may be gone for good; the pool will replace it
        pass
    cause = database_unavailable_cause(exc) or exc
    detail = (str(getattr(cause, "orig", None) or cause).strip().splitlines() or [""])[0][:200]
    logger.warning("database unavailable in %s: %s", request.path, cause.__class__.__name__)
    if request.blueprint == "dashboard":
        out = make_response(render_template(
            "dashboard/error.html", title="Database unavailable",
            message="The database does not answer right now; nothing was changed. Try again in a few seconds."), 503)
    else:
        out = make_response(error_response(f"database unavailable: {detail}", 503))
    out.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return out


def init_app(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        response = exc.get_response()
        response.data = jsonify({"error": exc.description or exc.name}).get_data()
        response.content_type = "application/json"
        return response

    @app.errorhandler(Exception)
    def _unhandled(exc: Exception):
        if is_database_unavailable(exc):
            return unavailable_response(exc)
        logger.exception("unhandled error")
        return error_response("internal server error; the details are in the server log", 500)
