"""Reading the settings table (:mod:`utils.settings`) from an environment, and the rules between settings.

Contract: :func:`load_settings` returns the app's configuration (every
``scope="app"`` row by its config key, plus :data:`utils.settings.FIXED`),
:func:`load_server_settings` the web server's rows (``PORT``,
``GUNICORN_*``).  A variable that is unset or blank takes the row's default
(a :class:`~utils.settings.Derived` one computed from the rows read before
it); any other value goes through the row's parser.  Both raise
:class:`~utils.settings_parsers.ConfigError` on the first bad value or
broken rule between settings (:func:`_check_together`), whose ``line`` is
what the operator sees, and read nothing but the mapping they are given.
This module builds on :mod:`utils.settings`, which imports it only lazily
(in its ``main``), so there is no import cycle.
"""
from __future__ import annotations

from typing import Any, Collection, Iterable, Mapping

from utils import settings_notify as N
from utils.settings import FIXED, SETTINGS, Derived, Setting, default_of
from utils.settings_parsers import ConfigError


def _load(settings: Iterable[Setting], environ: Mapping[str, str], given: Collection[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for setting in settings:
        if setting.config_key in given:
            continue
        raw = environ.get(setting.env)
        if raw is None or raw.strip() == "":
            default = setting.default
            values[setting.config_key] = default.compute(values) if isinstance(default, Derived) else default
        else:
            values[setting.config_key] = setting.parse(setting.env, raw)
    return values


# Observations must outlive the training window by four whole weeks: the
# oldest observation of a window still has weeks of history before it (what a
# time-of-week baseline needs).  Closed alerts carry the false-positive labels
# training reads over its window.
_RETENTION_MARGIN_DAYS = {"ML_OBSERVATION_RETENTION_DAYS": 28, "ML_ALERT_RETENTION_DAYS": 0}


def _check_together(values: Mapping[str, Any], environ: Mapping[str, str]) -> None:
    """Rules between settings (each read from ``environ``); raises :class:`ConfigError`."""
    if any(key.startswith("ML_NOTIFY_") for key in values):
        # Keys a test config supplies itself are checked by utils.ml.notify.settings_for.
        notify = {s.env: values.get(s.env, s.default) for s in SETTINGS if s.env.startswith("ML_NOTIFY_")}
        try:
            N.check_together(notify, environ)
        except N.NotifyConfigError as exc:
            raise ConfigError(exc.name, exc.raw, exc.rule, N.shown(exc.name, exc.raw)) from None
    window = values.get("ML_TRAIN_WINDOW_DAYS", default_of("ML_TRAIN_WINDOW_DAYS"))
    for key, margin in _RETENTION_MARGIN_DAYS.items():
        days = values.get(key)
        if days and days < window + margin:
            raise ConfigError(key, environ.get(key, str(days)),
                              f"must be 0 (keep everything) or at least ML_TRAIN_WINDOW_DAYS"
                              f"{f' + {margin}' if margin else ''} ({window + margin})")


def load_settings(environ: Mapping[str, str], *, given: Collection[str] = ()) -> dict[str, Any]:
    """The app's configuration from ``environ``: every app setting by its config key, plus :data:`FIXED`.

    ``given`` names config keys the caller supplies itself (a test config):
    they are neither read nor checked.  Raises :class:`ConfigError` on the
    first bad value.
    """
    values = dict(FIXED)
    values.update(_load((s for s in SETTINGS if s.scope == "app"), environ, given))
    _check_together(values, environ)
    return values


def load_server_settings(environ: Mapping[str, str]) -> dict[str, Any]:
    """The web server's settings (``PORT``, ``GUNICORN_*``); raises :class:`ConfigError`."""
    return _load((s for s in SETTINGS if s.scope == "server"), environ, ())
