"""The admin bearer token: one check shared by the JSON API and the dashboard.

``ML_ADMIN_TOKEN`` guards hotel data, so tokens are compared in constant time
(``hmac.compare_digest``) and every refusal says why, without echoing the
token that was sent.  When no token is configured the protected routes refuse
with 503: the server, not the caller, is misconfigured.

A request whose token was compared and was wrong counts as a failure of its
client address (:mod:`utils.web.security.ratelimit`); an address over the
limit gets 429 with ``Retry-After`` before its token is even looked at.
"""
from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Optional

from flask import Response, current_app, request

from utils.web.errors import error_response
from utils.web.security import ratelimit


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
    guess: bool = False  # a token was compared and was wrong: counts toward the rate limit


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
        return AuthFailure(401, "invalid bearer token", guess=True)
    return None


def failure_response(failure: AuthFailure) -> Response:
    """The JSON refusal, with ``WWW-Authenticate`` on a 401."""
    response, status = error_response(failure.reason, failure.status)
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = WWW_AUTHENTICATE
    return response


def too_many_response(retry_after: int) -> Response:
    """429 for a locked-out client address, with ``Retry-After`` in seconds."""
    response, status = error_response(
        f"too many failed authentications from this address; try again in {retry_after} s", 429)
    response.status_code = status
    response.headers["Retry-After"] = str(retry_after)
    return response


def check_request() -> Optional[Response]:
    """For ``before_request`` hooks: None when the current request is authorised, else the refusal.

    Only a request that presents a token touches the database (the lockout
    check); a database error propagates, so the caller answers 503.
    """
    failure = bearer_failure(request.headers.get("Authorization"), current_app.config.get("ML_ADMIN_TOKEN"))
    if failure is not None and not failure.guess:
        return failure_response(failure)
    client = ratelimit.current_client()
    wait = ratelimit.retry_after(client)
    if wait is not None:
        return too_many_response(wait)
    if failure is None:
        return None
    wait = ratelimit.record_failure(client)
    return too_many_response(wait) if wait is not None else failure_response(failure)
