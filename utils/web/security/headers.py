"""Security headers on every response of the dashboard and the API.

* ``Content-Security-Policy``: nothing may frame a page (``frame-ancestors
  'none'``), no plugin, no ``<base>``; HTML pages load scripts only when they
  carry this response's nonce (``{{ csp_nonce() }}``; the dashboard has no
  script today, so none run), styles and images only from the app itself,
  and forms post only back to it.  Other responses (JSON, CSS) allow nothing.
* ``X-Frame-Options: DENY`` for browsers without ``frame-ancestors``.
* ``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: no-referrer``.
* ``Cache-Control: no-store`` on the dashboard and the API, which answer only
  signed-in or token-bearing callers: no shared or disk cache keeps them.
* ``Strict-Transport-Security: max-age=ML_HSTS_SECONDS`` on responses to
  HTTPS requests (0: never): a browser that saw it once will not send the
  token or the session cookie over plain HTTP to this host again.  Behind a
  TLS-terminating proxy a request is HTTPS only when ``ML_TRUSTED_PROXIES``
  lets its ``X-Forwarded-Proto`` count (:mod:`.proxy`).  Not for subdomains:
  the hotel's other hosts are not ours to pin.
"""
from __future__ import annotations

import secrets

from flask import Flask, current_app, request
from werkzeug.wrappers import Response

NO_STORE_BLUEPRINTS = ("dashboard", "ml_api")
COMMON = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
NOTHING = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"


# Kept in the request's WSGI environ, not in ``g``: ``g`` belongs to the app
# context, which outlives one request wherever a context was pushed around
# several (a CLI command, a test), and a nonce must never be reused.
_NONCE_KEY = "ml.csp_nonce"


def csp_nonce() -> str:
    """This response's script nonce (created on first use)."""
    nonce = request.environ.get(_NONCE_KEY)
    if nonce is None:
        nonce = request.environ[_NONCE_KEY] = secrets.token_urlsafe(16)
    return nonce


def html_policy(nonce: str | None) -> str:
    scripts = f"'nonce-{nonce}'" if nonce else "'none'"
    return ("default-src 'none'; "
            f"script-src {scripts}; style-src 'self'; img-src 'self' data:; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")


def add_security_headers(response: Response) -> Response:
    for name, value in COMMON.items():
        response.headers.setdefault(name, value)
    if "Content-Security-Policy" not in response.headers:
        html = response.mimetype == "text/html"
        response.headers["Content-Security-Policy"] = html_policy(request.environ.get(_NONCE_KEY)) if html else NOTHING
    if request.blueprint in NO_STORE_BLUEPRINTS:
        response.headers["Cache-Control"] = "no-store"
    hsts = int(current_app.config.get("ML_HSTS_SECONDS", 0))
    if hsts > 0 and request.is_secure:
        response.headers.setdefault("Strict-Transport-Security", f"max-age={hsts}")
    return response


def init_app(app: Flask) -> None:
    app.after_request(add_security_headers)
    app.context_processor(lambda: {"csp_nonce": csp_nonce})
