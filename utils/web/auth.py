"""The admin bearer token: one check shared by the JSON API and the dashboard.

``ML_ADMIN_TOKEN`` guards hotel data, so tokens are compared in constant time
(``hmac.compare_digest``) and every refusal says why, without echoing the
token that was sent.  When no token is configured the protected routes refuse
with 503: the server, not the caller, is misconfigured.
"""
from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Optional

from flask import Response, current_app, request

from utils.web.errors import error_response


NOT_CONFIGURED = (
    "ML_ADMIN_TOKEN is not configured on this server; set it in the environment to use this endpoint"
)
# RFC 6750: a 401 names the scheme the client should use.
WWW_AUTHENTICATE = 'Bearer realm="ml"'


@dataclass(frozen=True)
class AuthFailure:
    """Why a request was refused: the HTTP status and a one-line reason."""

    status: int
    reason: str


def token_matches(candidate: Optional[str], configured: Optional[str]) -> bool:
    """True when ``candidate`` equals the configured token (constant time; never true when unset)."""
    if not configured or candidate is None:
        return False
    # Bytes, because compare_digest refuses non-ASCII str; surrogatepass never loses a character.
    return hmac.compare_digest(
        candidate.encode("utf-8", "surrogatepass"), configured.encode("utf-8", "surrogatepass")
    )


def bearer_failure(authorization: Optional[str], configured: Optional[str]) -> Optional[AuthFailure]:
    """None when ``authorization`` carries the configured bearer token, else the refusal."""
    if not configured:
        return AuthFailure(503, NOT_CONFIGURED)
    if authorization is None or not authorization.strip():
        return AuthFailure(401, "missing Authorization header; send 'Authorization: Bearer <ML_ADMIN_TOKEN>'")
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        # Name the scheme only when it looks like one: a bare token must not be echoed back.
        if credentials and len(scheme) <= 20 and scheme.isalnum():
            return AuthFailure(401, f"Authorization scheme must be Bearer (got {scheme!r})")
        return AuthFailure(401, "Authorization scheme must be Bearer: send 'Authorization: Bearer <ML_ADMIN_TOKEN>'")
    credentials = credentials.strip()
    if not credentials:
        return AuthFailure(401, "Authorization header has no token after 'Bearer'")
    if not token_matches(credentials, configured):
        return AuthFailure(401, "invalid bearer token")
    return None


def failure_response(failure: AuthFailure) -> Response:
    """The JSON refusal, with ``WWW-Authenticate`` on a 401."""
    response, status = error_response(failure.reason, failure.status)
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = WWW_AUTHENTICATE
    return response


def check_request() -> Optional[Response]:
    """For ``before_request`` hooks: None when the current request is authorised, else the refusal."""
    failure = bearer_failure(request.headers.get("Authorization"), current_app.config.get("ML_ADMIN_TOKEN"))
    return failure_response(failure) if failure else None

