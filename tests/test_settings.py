"""Settings: one table read when an app is created; a bad value is one line and exit status 2.

The parsers are checked on their own (pure functions over a mapping); the
entry points (``flask ml list``, the migrate script, gunicorn, the quick
start) as the real processes an operator starts, with a bad value in their
environment.  No database is touched: a bad setting must stop everything
before that.
"""
from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from tests import dbutil
from tests.procutil import ROOT, VENV_BIN, base_env, copy_tree
from utils import settings
from utils.settings import ConfigError
from utils.settings_load import load_server_settings, load_settings

BAD_VALUES = [
    ("ML_KEEP_VERSIONS", "abc", "config error: ML_KEEP_VERSIONS='abc': expected a whole number"),
    ("ML_KEEP_VERSIONS", "0", "config error: ML_KEEP_VERSIONS='0': must be at least 1"),
    ("ML_ENABLED", "maybe", "config error: ML_ENABLED='maybe': expected true or false"),
    ("ML_MAX_MODEL_MB", "ten", "config error: ML_MAX_MODEL_MB='ten': expected a number"),
    ("ML_MAX_MODEL_MB", "nan", "config error: ML_MAX_MODEL_MB='nan': expected a finite number"),
    ("ML_CONTAMINATION", "0.9", "config error: ML_CONTAMINATION='0.9': must be at most 0.49"),
    ("ML_LOAD_RETRY_DELAYS", "1,two,4",
     "config error: ML_LOAD_RETRY_DELAYS='1,two,4': expected comma-separated numbers (expected a number)"),
    ("ML_DASHBOARD_SESSION_HOURS", "0", "config error: ML_DASHBOARD_SESSION_HOURS='0': must be at least 0.01"),
    ("ML_LOG_FORMAT", "xml", "config error: ML_LOG_FORMAT='xml': expected one of json, text"),
    ("ML_TRUSTED_PROXIES", "-1", "config error: ML_TRUSTED_PROXIES='-1': must be at least 0"),
    ("ML_TRUSTED_PROXIES", "9", "config error: ML_TRUSTED_PROXIES='9': must be at most 5"),
    ("ML_HSTS_SECONDS", "1y", "config error: ML_HSTS_SECONDS='1y': expected a whole number"),
    ("DATABASE_URL", "localhost", "config error: DATABASE_URL='localhost': expected a database URL such as "
                                  "postgresql://user@host/db or sqlite:///path"),
]
BAD_SERVER_VALUES = [
    ("PORT", "abc", "config error: PORT='abc': expected a whole number"),
    ("PORT", "70000", "config error: PORT='70000': must be at most 65535"),
    ("GUNICORN_WORKERS", "0", "config error: GUNICORN_WORKERS='0': must be at least 1"),
]


@pytest.mark.parametrize("name, raw, line", BAD_VALUES)
def test_each_parser_names_the_variable_the_value_and_the_rule(name, raw, line):
    with pytest.raises(ConfigError) as caught:
        load_settings({name: raw})
    assert caught.value.line == line
    assert (caught.value.name, caught.value.raw) == (name, raw)


@pytest.mark.parametrize("name, raw, line", BAD_SERVER_VALUES)
def test_server_settings_are_checked_by_the_same_rules(name, raw, line):
    with pytest.raises(ConfigError) as caught:
        load_server_settings({name: raw})
    assert caught.value.line == line


def test_values_are_parsed_and_empty_means_the_default():
    values = load_settings({"ML_KEEP_VERSIONS": "7", "ML_ENABLED": "off", "ML_LOAD_RETRY_DELAYS": "0.5, 1",
                            "ML_DASHBOARD_SESSION_HOURS": "2", "DATABASE_URL": "postgres://u@h/db",
                            "ML_LOG_FORMAT": "TEXT", "ML_MAX_MODEL_MB": "  "})
    assert values["ML_KEEP_VERSIONS"] == 7 and values["ML_ENABLED"] is False
    assert values["ML_LOAD_RETRY_DELAYS"] == (0.5, 1.0)
    assert values["PERMANENT_SESSION_LIFETIME"] == timedelta(hours=2)
    assert values["SQLALCHEMY_DATABASE_URI"] == "postgresql+psycopg2://u@h/db"
    assert values["ML_LOG_FORMAT"] == "text"
    assert values["ML_MAX_MODEL_MB"] == settings.default_of("ML_MAX_MODEL_MB") == 10.0
    server = load_server_settings({"PORT": "8080"})
    assert server["GUNICORN_BIND"] == "0.0.0.0:8080" and server["GUNICORN_WORKERS"] == 2


def test_every_setting_has_one_default_and_a_doc():
    keys = [s.config_key for s in settings.SETTINGS]
    assert len(keys) == len(set(keys))
    for setting in settings.SETTINGS:
        assert setting.doc and setting.scope in ("app", "server"), setting.env
        if not isinstance(setting.default, settings.Derived) and setting.default is not None \
                and setting.parse is not settings._text:
            # A default is a value its own parser could have produced.
            assert type(setting.default) is type(setting.parse(setting.env, _as_text(setting.default))), setting.env


def test_the_readme_documents_every_setting():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Configuration"):readme.index("## Deploy with Coolify")]
    missing = [s.env for s in settings.SETTINGS if f"`{s.env}`" not in section]
    assert missing == []


def _as_text(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, timedelta):
        return str(value.total_seconds() / 3600)
    return str(value)


def test_outside_an_app_code_reads_the_tables_defaults():
    from utils.extensions import db
    from utils.ml.model_manager import ModelManager
    from utils.ml.model_trainer import ModelTrainer

    assert settings.current("ML_KEEP_VERSIONS") == 3
    trainer = ModelTrainer(db)
    assert (trainer.window_days, trainer.min_samples, trainer.contamination, trainer.n_estimators) == \
        (60, 50, 0.02, 100)
    manager = ModelManager(db, models_dir=str(ROOT / "ml_models"), create_directory=False)
    assert manager.max_bytes == 10 * 1024 * 1024 and manager.retry_delays == (1.0, 2.0, 4.0)
    assert (manager.cache_size, manager.cache_ttl, manager.compress) == (32, 30.0, False)


def test_create_app_reads_the_environment_each_time(monkeypatch, tmp_path):
    monkeypatch.setenv("ML_KEEP_VERSIONS", "7")
    first = dbutil.make_app(dbutil.sqlite_url(tmp_path / "a.sqlite3"), tmp_path / "models")
    monkeypatch.setenv("ML_KEEP_VERSIONS", "5")
    monkeypatch.setenv("ML_CACHE_SIZE", "0")
    second = dbutil.make_app(dbutil.sqlite_url(tmp_path / "a.sqlite3"), tmp_path / "models")
    try:
        assert first.config["ML_KEEP_VERSIONS"] == 7
        assert (second.config["ML_KEEP_VERSIONS"], second.config["ML_CACHE_SIZE"]) == (5, 0)
    finally:
        dbutil.dispose(first)
        dbutil.dispose(second)


def test_a_test_config_value_is_neither_read_from_the_environment_nor_checked(monkeypatch, tmp_path):
    monkeypatch.setenv("ML_KEEP_VERSIONS", "abc")
    with pytest.raises(ConfigError, match="ML_KEEP_VERSIONS"):
        dbutil.make_app(dbutil.sqlite_url(tmp_path / "a.sqlite3"), tmp_path / "models")
    app = dbutil.make_app(dbutil.sqlite_url(tmp_path / "a.sqlite3"), tmp_path / "models", ML_KEEP_VERSIONS=4)
    try:
        assert app.config["ML_KEEP_VERSIONS"] == 4
    finally:
        dbutil.dispose(app)


def _python(code: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=base_env(tmp_path, **env),
                          capture_output=True, text=True, timeout=120)


def test_importing_app_builds_nothing_and_installs_no_log_handler(tmp_path):
    done = _python(
        "import logging, app\n"
        "root = logging.getLogger()\n"
        "print(len(root.handlers), 'app' in vars(app))\n"
        "first = app.app\n"  # the module-level app: built on first access, once
        "print(first is app.app, len(root.handlers))\n",
        tmp_path, DATABASE_URL=dbutil.sqlite_url(tmp_path / "x.sqlite3"), ML_MODELS_DIR=str(tmp_path / "models"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "False", "True", "1"]


def _one_line_exit_2(done: subprocess.CompletedProcess, line: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert done.stderr.strip().splitlines() == [line], done.stderr
    assert "Traceback" not in done.stdout + done.stderr


BAD = "config error: ML_KEEP_VERSIONS='abc': expected a whole number"
# A 16-character token (the length the tests used before issue 12): one line, without the token.
SHORT_TOKEN = "test-admin-token"
SHORT = ("config error: ML_ADMIN_TOKEN='<16 characters>': must be at least 24 characters "
         "(generate one with python -c 'import secrets; print(secrets.token_urlsafe(32))')")


def test_admin_tokens_need_24_characters_and_never_sign_the_cookie():
    with pytest.raises(ConfigError) as caught:
        load_settings({"ML_ADMIN_TOKEN": "x" * 23})
    assert SHORT_TOKEN not in caught.value.line and "x" * 23 not in caught.value.line
    token = "y" * 24
    values = load_settings({"ML_ADMIN_TOKEN": token})
    assert values["ML_ADMIN_TOKEN"] == token
    # SECRET_KEY never falls back to the token (a cookie would verify only under the real token).
    assert values["SECRET_KEY"] != token and len(values["SECRET_KEY"]) == 64
    assert load_settings({"ML_ADMIN_TOKEN": token, "SECRET_KEY": "k"})["SECRET_KEY"] == "k"


@pytest.mark.parametrize("command", [
    [str(VENV_BIN / "flask"), "ml", "list"],
    [str(VENV_BIN / "flask"), "db", "current"],
    [sys.executable, "migrate_models_to_filesystem.py", "--dry-run"],
    [sys.executable, "-m", "utils.db_wait", "--timeout", "1"],
], ids=["flask-ml-list", "flask-db-current", "migrate-script", "db-wait"])
def test_commands_stop_with_one_line_and_status_2(command, tmp_path):
    env = base_env(tmp_path, FLASK_APP="app:app", ML_KEEP_VERSIONS="abc",
                   DATABASE_URL=dbutil.sqlite_url(tmp_path / "never.sqlite3"), ML_MODELS_DIR=str(tmp_path / "m"))
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    _one_line_exit_2(done, BAD)
    assert not (tmp_path / "never.sqlite3").exists() and not (tmp_path / "m").exists()


@pytest.mark.parametrize("name, raw, line", [
    ("ML_KEEP_VERSIONS", "abc", BAD),
    ("PORT", "abc", "config error: PORT='abc': expected a whole number"),
    ("ML_ADMIN_TOKEN", SHORT_TOKEN, SHORT),
])
def test_gunicorn_stops_at_master_start(name, raw, line, tmp_path):
    env = base_env(tmp_path, **{name: raw}, DATABASE_URL=dbutil.sqlite_url(tmp_path / "never.sqlite3"))
    done = subprocess.run([str(VENV_BIN / "gunicorn"), "-c", "gunicorn.conf.py", "app:app"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    _one_line_exit_2(done, line)
    assert SHORT_TOKEN not in done.stdout + done.stderr
    assert not (tmp_path / "never.sqlite3").exists()


@pytest.mark.parametrize("name, raw, line", [
    ("ML_KEEP_VERSIONS", "abc", BAD),
    ("PORT", "abc", "config error: PORT='abc': expected a whole number"),
    ("ML_ADMIN_TOKEN", SHORT_TOKEN, SHORT),
])
def test_the_quick_start_checks_settings_before_any_setup_work(name, raw, line, tmp_path):
    tree = copy_tree(ROOT, tmp_path / "minibar")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ML_", "DATABASE_URL", "GUNICORN_", "FLASK_", "PROMETHEUS_", "PORT"))}
    env[name] = raw
    done = subprocess.run(["bash", "scripts/quickstart.sh"], cwd=tree, env=env, capture_output=True, text=True,
                          timeout=120)
    _one_line_exit_2(done, line)
    assert done.stdout == ""  # not a step was run, no address printed
    assert not (tree / "instance").exists()
