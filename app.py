"""Application factory of the minibar ML service.

``gunicorn app:app`` serves the module-level ``app``; ``flask`` finds it too.
Tests call ``create_app(test_config)`` with their own settings.
"""
from __future__ import annotations

import importlib
import os
from typing import Any, Mapping, Optional

from flask import Flask

from config import BASE_DIR, Config
from utils.extensions import db, migrate

# One module per concern, each with an ``init_app(app)`` hook (flaskr style).
# Order matters only for logging, which is configured first.
COMPONENTS = (
    "utils.logging_setup",
    "utils.web.errors",
    "utils.web.health",
    "utils.ml.model_manager",
    "utils.ml.cli",
    "utils.ml.metrics",
    "utils.web.api",
    "utils.web.dashboard",
    "utils.ml.scheduler",
)


def _engine_options(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        # Writers wait for each other instead of failing with "database is locked".
        return {"connect_args": {"timeout": 30}}
    return {"pool_pre_ping": True, "pool_recycle": 1800}


def create_app(test_config: Optional[Mapping[str, Any]] = None) -> Flask:
    """Build the app from :class:`config.Config`, overridden by ``test_config``."""
    app = Flask(__name__, instance_path=str(BASE_DIR / "instance"))
    app.config.from_object(Config)
    if test_config:
        app.config.update(test_config)
    app.config.setdefault(
        "SQLALCHEMY_ENGINE_OPTIONS", _engine_options(app.config["SQLALCHEMY_DATABASE_URI"])
    )
    os.makedirs(app.instance_path, exist_ok=True)

    db.init_app(app)
    # Batch mode lets the same migration scripts alter tables on SQLite.
    migrate.init_app(app, db, directory=str(BASE_DIR / "migrations"), render_as_batch=True)

    # Import the models so Alembic and the ORM see every table.
    importlib.import_module("utils.models")
    for name in COMPONENTS:
        importlib.import_module(name).init_app(app)
    return app


app = create_app()
