"""Application factory of the minibar ML service.

``create_app(test_config=None)`` reads the settings (:mod:`utils.settings`)
from the environment each time it is called, ``test_config`` overriding
them, and configures logging for a real (non-testing) app.  Importing this
module builds nothing: the module-level ``app`` that ``gunicorn app:app`` and
``FLASK_APP=app:app`` use is created on first access, once per process.
"""
from __future__ import annotations

import importlib
import os
import threading
from typing import Any, Mapping, Optional

from flask import Flask

from utils import db_bounds, db_deadline
from utils.extensions import db, migrate
from utils.settings import BASE_DIR, ConfigError
from utils.settings_load import load_settings

# One module per concern, each with an ``init_app(app)`` hook (flaskr style).
# Order matters only for logging, which is configured first.
COMPONENTS = (
    "utils.logging_setup",
    "utils.web.errors",
    "utils.web.security",
    "utils.web.health",
    "utils.ml.model_manager",
    "utils.cli",
    "utils.web.monitoring",
    "utils.web.api",
    "utils.web.dashboard",
    "utils.ml.jobs.scheduler",
    "utils.ml.notify",
    "utils.ml.promotion",
)


def _engine_options(config: Mapping[str, Any]) -> dict[str, Any]:
    if config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        # Writers wait for each other instead of failing with "database is locked".
        return {"connect_args": {"timeout": 30}}
    return db_bounds.engine_options(config)


def create_app(test_config: Optional[Mapping[str, Any]] = None) -> Flask:
    """Build the app from the settings in ``os.environ``, overridden by ``test_config``.

    Raises :class:`utils.settings.ConfigError` naming the first bad setting.
    """
    test_config = dict(test_config or {})
    app = Flask(__name__, instance_path=str(BASE_DIR / "instance"))
    app.config.update(load_settings(os.environ, given=test_config.keys()))
    app.config.update(test_config)
    db_bounds.configure(app.config)
    app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", _engine_options(app.config))
    os.makedirs(app.instance_path, exist_ok=True)

    db.init_app(app)
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql"):
        db_deadline.install_wait_callback()
        with app.app_context():
            db_bounds.attach(db.engine)
    # Batch mode lets the same migration scripts alter tables on SQLite.
    migrate.init_app(app, db, directory=str(BASE_DIR / "migrations"), render_as_batch=True)

    # Import the models so Alembic and the ORM see every table.
    importlib.import_module("utils.models")
    for name in COMPONENTS:
        importlib.import_module(name).init_app(app)
    return app


_app_lock = threading.Lock()


def __getattr__(name: str) -> Any:
    """The module-level ``app`` (``gunicorn app:app``, ``FLASK_APP=app:app``), created on first use, once.

    A bad setting ends a command-line process with the one line the CLI
    error handler gives it (``config error: ...``, exit status 2).
    """
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with _app_lock:
        if "app" not in globals():
            try:
                globals()["app"] = create_app()
            except ConfigError as exc:
                from utils.cli import cli_error

                raise cli_error(exc) from None
    return globals()["app"]
