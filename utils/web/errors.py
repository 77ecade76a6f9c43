"""Every error is JSON ``{"error": "..."}`` with a 4xx/5xx status, never an HTML page."""
from __future__ import annotations

import logging

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

logger = logging.getLogger(__name__)


def error_response(message: str, status: int, **extra):
    body = {"error": message}
    body.update(extra)
    return jsonify(body), status


def init_app(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        response = exc.get_response()
        response.data = jsonify({"error": exc.description or exc.name}).get_data()
        response.content_type = "application/json"
        return response

    @app.errorhandler(Exception)
    def _unhandled(exc: Exception):
        logger.exception("unhandled error")
        return error_response("internal server error; the details are in the server log", 500)
