"""Fixtures in the flaskr style: ``app``, ``client``, ``runner``.

``app`` is parametrised over both databases the service supports: every test
that uses it runs on real PostgreSQL and on SQLite.  When PostgreSQL is not
reachable, its cases are skipped locally and *fail* under ``CI=true``.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests import dbutil  # noqa: E402

BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def pg_available() -> None:
    problem = dbutil.pg_problem()
    if problem:
        message = f"PostgreSQL is required at {dbutil.PG_ADMIN_URL}: {problem}"
        if dbutil.IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


@pytest.fixture(scope="session")
def pg_template(pg_available, tmp_path_factory):
    """A PostgreSQL database at ``head``, cloned by each test."""
    name = dbutil.create_pg_database(prefix="mltmpl")
    dbutil.migrate(dbutil.pg_url(name), tmp_path_factory.mktemp("tmpl_models"))
    yield name
    dbutil.drop_pg_database(name)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sqlite_tmpl") / "template.sqlite3"
    dbutil.migrate(dbutil.sqlite_url(path), tmp_path_factory.mktemp("tmpl_models"))
    return path


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def database_url(backend, request, tmp_path):
    """A fresh, fully migrated database of the current backend."""
    if backend == "postgresql":
        template = request.getfixturevalue("pg_template")
        name = dbutil.create_pg_database(template=template)
        yield dbutil.pg_url(name)
        dbutil.drop_pg_database(name)
    else:
        template = request.getfixturevalue("sqlite_template")
        yield dbutil.copy_sqlite(template, tmp_path / "test.sqlite3")


@pytest.fixture
def empty_database_url(backend, request, tmp_path):
    """A fresh database with no tables at all (for migration tests)."""
    if backend == "postgresql":
        request.getfixturevalue("pg_available")
        name = dbutil.create_pg_database()
        yield dbutil.pg_url(name)
        dbutil.drop_pg_database(name)
    else:
        yield dbutil.sqlite_url(tmp_path / "empty.sqlite3")


@pytest.fixture(scope="session")
def legacy_templates(pg_available, tmp_path_factory):
    """The minibar app's databases (LEGACY.md states A-D): state -> (template database, what it holds).

    Each built on first use, once per session, shared by every legacy test module (clone it per test).
    """
    from tests.legacy import schema

    built: dict[str, tuple[str, "schema.LegacyState"]] = {}

    def get(state: str) -> tuple[str, schema.LegacyState]:
        if state not in built:
            name = dbutil.create_pg_database(prefix=f"mllegacy{state.lower()}")
            built[state] = (name, schema.build(dbutil.pg_url(name), state, tmp_path_factory.mktemp(f"volume_{state}")))
        return built[state]

    yield get
    for name, _ in built.values():
        dbutil.drop_pg_database(name)


@pytest.fixture
def models_dir(tmp_path) -> Path:
    path = tmp_path / "ml_models"
    path.mkdir(mode=0o755)
    return path


@pytest.fixture
def app(database_url, models_dir):
    application = dbutil.make_app(database_url, models_dir)
    yield application
    dbutil.dispose(application)


@pytest.fixture
def app_ctx(app):
    with app.app_context():
        yield app


@pytest.fixture
def pg_app_ctx(pg_template, models_dir):
    """An app context on a fresh PostgreSQL database of its own (whatever ``database_url`` is)."""
    name = dbutil.create_pg_database(template=pg_template)
    application = dbutil.make_app(dbutil.pg_url(name), models_dir)
    with application.app_context():
        yield application
    dbutil.dispose(application)
    dbutil.drop_pg_database(name)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def auth_headers(app) -> dict[str, str]:
    return {"Authorization": f"Bearer {app.config['ML_ADMIN_TOKEN']}"}


def pytest_report_header(config):
    return [f"postgresql admin url: {dbutil.PG_ADMIN_URL} (CI={os.environ.get('CI', '')})"]
