"""The web security layer: authentication rate limit, revocable sessions, security headers.

:mod:`.ratelimit` (failed tokens and sign-ins per client address, shared by
every worker through ``ml_auth_failures``), :mod:`.sessions` (sign-out ends a
session on the server, ``ml_revoked_sessions``), :mod:`.headers` (CSP and the
other response headers, HSTS on HTTPS), :mod:`.proxy` (the client address and
scheme behind a reverse proxy) and :mod:`.models` (the two tables).
"""
from __future__ import annotations

from flask import Flask

from utils.web.security import models  # noqa: F401  (the ORM must know the tables)
from utils.web.security import headers, proxy


def init_app(app: Flask) -> None:
    proxy.init_app(app)
    headers.init_app(app)
