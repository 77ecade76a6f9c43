"""The monitoring dashboard at ``/ml/dashboard``.

:mod:`.views` (sign-in, CSRF, the page, activation), :mod:`.data` (one
read-only query per panel), :mod:`.svg_charts` (server-rendered charts) and
:mod:`.promotion` (pins, champion vs challenger, drift).
"""
from __future__ import annotations

from utils.web.dashboard.views import bp, init_app
from utils.web.dashboard import promotion  # noqa: F401,E402 - its routes join the blueprint before registration

__all__ = ["bp", "init_app"]
