"""The monitoring dashboard at ``/ml/dashboard``.

:mod:`.views` (sign-in, CSRF, the page, activation), :mod:`.data` (one
read-only query per panel) and :mod:`.svg_charts` (server-rendered charts).
"""
from __future__ import annotations

from utils.web.dashboard.views import bp, init_app

__all__ = ["bp", "init_app"]
