"""Throw-away databases for tests: real PostgreSQL and real SQLite files.

Each test gets its own database, cloned from a template that ``flask db
upgrade`` built once per session (PostgreSQL ``CREATE DATABASE ... TEMPLATE``,
SQLite a file copy), so every test starts from the real migrated schema.
"""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Optional

import sqlalchemy as sa

PG_ADMIN_URL = os.environ.get("TEST_PG_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def pg_url(dbname: str) -> str:
    return sa.engine.make_url(PG_ADMIN_URL).set(database=dbname).render_as_string(hide_password=False)


def pg_problem() -> Optional[str]:
    """None when PostgreSQL answers on the admin URL, else why not."""
    try:
        engine = sa.create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:
        return f"{exc.__class__.__name__}: {str(exc).splitlines()[0]}"


def _admin(sql: str) -> None:
    engine = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(sql))
    finally:
        engine.dispose()


def create_pg_database(template: Optional[str] = None, prefix: str = "mlt") -> str:
    """Create an empty (or template-cloned) database; return its name."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    clause = f' TEMPLATE "{template}"' if template else ""
    _admin(f'CREATE DATABASE "{name}"{clause}')
    return name


def drop_pg_database(name: str) -> None:
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def migrate(url: str, models_dir: Path, revision: str = "head") -> None:
    """Run ``flask db upgrade`` (the real migration chain) against ``url``."""
    from flask_migrate import upgrade

    app = make_app(url, models_dir)
    with app.app_context():
        upgrade(revision=revision)
    dispose(app)


def make_app(url: str, models_dir: Path, **overrides: Any):
    from app import create_app

    config = {
        "TESTING": True,
        "SQLALCHEMY_DATABASE_URI": url,
        "ML_MODELS_DIR": str(models_dir),
        "ML_ADMIN_TOKEN": "test-admin-token-0123456789",
        "ML_SCHEDULER_ENABLED": False,
        # The seed's 1, 2, 4 s backoff, scaled down so fault tests run fast.
        "ML_LOAD_RETRY_DELAYS": (0.01, 0.02, 0.04),
        "SECRET_KEY": "test-secret",
        # Many tests send wrong tokens on purpose; tests/test_auth_ratelimit.py sets the real limit.
        "ML_AUTH_MAX_FAILURES": 100000,
    }
    config.update(overrides)
    return create_app(config)


def dispose(app) -> None:
    from utils.extensions import db

    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def copy_sqlite(template: Path, target: Path) -> str:
    shutil.copyfile(template, target)
    return sqlite_url(target)
