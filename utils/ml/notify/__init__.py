"""Notifications that reach people: an outbox, a webhook and e-mail, rate limits with digests.

Producers call :func:`enqueue` (or the wrappers in :mod:`.producers`) inside
their own transaction; the leader process calls :func:`deliver_pending`
every ``ML_NOTIFY_DELIVER_INTERVAL_SECONDS``.  Delivery is at-least-once and
every message carries its idempotency key.  :func:`init_app` reads and
checks the settings (a bad one raises a one-line ``ValueError`` at start-up),
and registers the ``job_failed`` producer on :mod:`utils.ml.events`.

Settings are the ``ML_NOTIFY_*`` rows of the service's settings table
(:mod:`utils.settings`), read into ``app.config`` by ``create_app``; string
values a test config put there are parsed here.  ``app.config["ML_NOTIFY"]``
(a dict from :func:`settings.load`), when present, wins.
"""
from __future__ import annotations

import os

from flask import Flask

from utils.ml import events
from utils.ml.notify import models  # noqa: F401 - the ORM must know the table
from utils.ml.notify import settings as notify_settings
from utils.ml.notify.check import notify_test
from utils.ml.notify.cli import notify_test_command, register_cli
from utils.ml.notify.delivery import DeliveryReport, deliver_pending
from utils.ml.notify.outbox import EXTENSION, KINDS, SEVERITIES, NotificationError, NotifyState, enqueue
from utils.ml.notify.producers import notify_drift, notify_gate_decision, notify_incident, on_event
from utils.ml.notify.webhook import verify_signature

__all__ = [
    "DeliveryReport", "KINDS", "NotificationError", "SEVERITIES", "deliver_pending", "enqueue", "init_app",
    "notify_drift", "notify_gate_decision", "notify_incident", "notify_test", "notify_test_command",
    "register_cli", "verify_signature",
]


def settings_for(app: Flask) -> dict:
    """The typed settings for ``app`` (see the module docstring for where they come from)."""
    if "ML_NOTIFY" in app.config:
        return dict(app.config["ML_NOTIFY"])
    # create_app put the typed values of the settings table here; a test
    # config may override some with strings, which are parsed (and the rules
    # between settings checked) now.
    given = {name: app.config[name] for name in notify_settings.BY_NAME if name in app.config}
    missing = {name: os.environ[name] for name in notify_settings.BY_NAME
               if name not in app.config and name in os.environ}
    return notify_settings.load({**missing, **given})


def init_app(app: Flask) -> None:
    """Load and check the settings, keep them on the app, register the ``job_failed`` producer and
    ``flask ml notify-test``."""
    app.extensions[EXTENSION] = NotifyState(settings=settings_for(app))
    events.add_listener(on_event)
    register_cli(app)  # flask ml notify-test
