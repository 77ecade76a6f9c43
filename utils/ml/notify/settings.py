"""Notification settings: the ``ML_NOTIFY_*`` rows of the service's one settings table.

The rows (variable, parser, default, meaning) live in :data:`utils.settings.SETTINGS`;
the parsers and the rules between settings in :mod:`utils.settings_notify`.
:func:`load` turns an environment-style mapping into typed values keyed by
the same names (defaults filled in), or raises ``ValueError`` with one line:
``NAME='value': rule`` (secrets shown as ``<hidden, N characters>``).  An
empty string counts as unset.  :func:`load` also accepts already-typed
values (what ``create_app`` put in ``app.config``): only strings are parsed.
"""
from __future__ import annotations

from typing import Any, Mapping

from utils import settings as service_settings
from utils.settings_notify import SEVERITIES, NotifyConfigError, check_together, shown

__all__ = ["BY_NAME", "SETTINGS", "SEVERITIES", "NotifyConfigError", "channels", "load", "markdown_table", "shown"]

PREFIX = "ML_NOTIFY_"
SETTINGS: tuple[service_settings.Setting, ...] = tuple(
    s for s in service_settings.SETTINGS if s.env.startswith(PREFIX))
BY_NAME = {s.env: s for s in SETTINGS}


def load(environ: Mapping[str, Any]) -> dict[str, Any]:
    """Typed notification settings from ``environ`` (strings are parsed, other values kept).

    Returns every ``ML_NOTIFY_*`` name.  Raises ``ValueError`` (a
    :class:`utils.settings.ConfigError` or :class:`NotifyConfigError`) with
    exactly one line naming the variable, its value (hidden for secrets) and
    the rule; the first bad variable wins.
    """
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = environ.get(setting.env)
        if raw is None or (isinstance(raw, str) and raw.strip() == ""):
            values[setting.env] = setting.default
        elif isinstance(raw, str):
            values[setting.env] = setting.parse(setting.env, raw)
        else:
            values[setting.env] = raw
    check_together(values, {k: v for k, v in environ.items() if isinstance(v, str)})
    return values


def channels(values: Mapping[str, Any]) -> tuple[str, ...]:
    """The configured channels, in delivery order."""
    found = []
    if values.get("ML_NOTIFY_WEBHOOK_URL"):
        found.append("webhook")
    if values.get("ML_NOTIFY_SMTP_HOST"):
        found.append("email")
    return tuple(found)


def markdown_table() -> str:
    """The README rows (variable, default, meaning), generated from :data:`SETTINGS`."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for s in SETTINGS:
        default = "unset" if s.default in (None, ()) else str(s.default).lower() if isinstance(s.default, bool) \
            else f"{s.default:g}" if isinstance(s.default, float) else str(s.default)
        rows.append(f"| `{s.env}` | {default if default == 'unset' else f'`{default}`'} | {s.doc} |")
    return "\n".join(rows)

