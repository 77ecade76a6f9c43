"""``flask ml list | info | cleanup | activate | migrate`` on both databases."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import pytest
from sqlalchemy import select

from tests.ml_helpers import ROOT, make_model, model_files, new_manager
from utils.extensions import db
from utils.ml.model_manager import get_model_manager
from utils.models import MLModel, ModelActivation

T, M = "isolation_forest", "stok_seviye"
COMMANDS = ("list", "info", "cleanup", "activate", "migrate")


@pytest.fixture
def three_versions(app):
    """Three saved versions of stok_seviye (the last active) and one of tuketim_miktar."""
    with app.app_context():
        manager = get_model_manager(app)
        ids = [manager.save_model(make_model(i), T, M, accuracy=0.5 + i / 10).id for i in range(3)]
        manager.save_model(make_model(9), T, "tuketim_miktar")
    return ids


def _one_line_failure(result, *fragments: str) -> None:
    assert result.exit_code != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(runner, command):
    result = runner.invoke(args=["ml", command, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output


def test_list_prints_a_table_and_json(runner, three_versions):
    assert runner.invoke(args=["ml", "list"]).exit_code == 0
    lines = runner.invoke(args=["ml", "list"]).output.splitlines()
    assert lines[0].split()[:3] == ["id", "model", "type"]
    assert len(lines) == 2 + 4
    assert lines[2].split()[0] == "4"  # newest first

    as_json = json.loads(runner.invoke(args=["ml", "list", "--json", "--metric-type", M]).output)
    assert [m["id"] for m in as_json] == list(reversed(three_versions))
    assert [m["is_active"] for m in as_json] == [True, False, False]
    active = json.loads(runner.invoke(args=["ml", "list", "--json", "--active-only"]).output)
    assert {m["metric_type"] for m in active} == {M, "tuketim_miktar"}


def test_list_on_an_empty_store(runner):
    result = runner.invoke(args=["ml", "list"])
    assert result.exit_code == 0 and result.output.strip() == "No models."


def test_info_shows_the_active_version_or_fails_in_one_line(runner, three_versions):
    result = runner.invoke(args=["ml", "info", "--metric-type", M])
    assert result.exit_code == 0
    fields = dict(line.split(None, 1) for line in result.output.splitlines())
    assert fields["id"] == str(three_versions[-1]) and fields["is_active"] == "yes"
    assert fields["accuracy"] == "0.7" and os.path.isfile(fields["path"])
    info = json.loads(runner.invoke(args=["ml", "info", "--metric-type", M, "--json"]).output)
    assert {"path", "size_kb", "accuracy", "training_date", "is_active"} <= set(info)

    _one_line_failure(runner.invoke(args=["ml", "info", "--metric-type", "dolum_sure"]), "no model", "dolum_sure")
    missing = runner.invoke(args=["ml", "info"])
    assert missing.exit_code == 2 and "--metric-type" in missing.stderr


def test_cleanup_uses_ml_keep_versions_by_default_and_keep(app, runner, three_versions, models_dir):
    app.config["ML_KEEP_VERSIONS"] = 2
    result = runner.invoke(args=["ml", "cleanup"])
    assert result.exit_code == 0, result.output
    assert "Deleted 1 old versions (kept 2 per type)" in result.output
    result = runner.invoke(args=["ml", "cleanup", "--keep", "1"])
    assert "Deleted 1 old versions (kept 1 per type)" in result.output
    with app.app_context():
        assert sorted(db.session.execute(select(MLModel.id)).scalars()) == [three_versions[-1], 4]
    assert len(model_files(models_dir)) == 2
    bad = runner.invoke(args=["ml", "cleanup", "--keep", "0"])
    assert bad.exit_code == 2 and "--keep" in bad.stderr


def test_activate_rolls_back_with_actor_cli(app, runner, three_versions):
    first = three_versions[0]
    result = runner.invoke(args=["ml", "activate", str(first), "--reason", "rollback after a bad release"])
    assert result.exit_code == 0, result.output
    assert f"Model {first} is now active for {T}/{M} (previously {three_versions[-1]})" in result.output
    with app.app_context():
        last = db.session.execute(select(ModelActivation).order_by(ModelActivation.id.desc())).scalars().first()
        assert (last.to_model_id, last.actor, last.reason) == (first, "cli", "rollback after a bad release")
        assert get_model_manager(app).load_active(T, M).model_id == first


def test_activate_refuses_a_missing_model_or_a_damaged_file_in_one_line(app, runner, three_versions, models_dir):
    _one_line_failure(runner.invoke(args=["ml", "activate", "9999"]), "9999", "does not exist")
    with app.app_context():
        key = db.session.get(MLModel, three_versions[0]).model_path
    (models_dir / key).write_bytes(b"garbage")
    _one_line_failure(runner.invoke(args=["ml", "activate", str(three_versions[0])]), "checksum")
    assert runner.invoke(args=["ml", "activate", "abc"]).exit_code == 2
    with app.app_context():
        assert get_model_manager(app).load_active(T, M).model_id == three_versions[-1]


def test_migrate_reports_per_model_and_the_summary(app, runner, models_dir):
    with app.app_context():
        db.session.add(MLModel(model_type=T, metric_type=M, model_data=pickle.dumps(make_model(1)), is_active=True))
        db.session.add(MLModel(model_type=T, metric_type="dolum_sure", model_data=b"corrupt", is_active=True))
        db.session.commit()

    dry = runner.invoke(args=["ml", "migrate", "--dry-run"])
    assert dry.exit_code == 1  # the corrupt BLOB fails even in a dry run: the operator learns it first
    assert "🔎 model 1 isolation_forest/stok_seviye would be migrated" in dry.output
    assert "🔎 Would migrate: 1 models" in dry.output and model_files(models_dir) == set()

    real = runner.invoke(args=["ml", "migrate"])
    assert real.exit_code == 1
    assert "✅ Migrated: 1 models" in real.output and "❌ Failed: 1 models" in real.output
    assert real.stderr.strip() == "Error: 1 model(s) failed to migrate; see the lines above"

    purge = runner.invoke(args=["ml", "migrate", "--purge-blobs"])
    assert "🧹 model 1 isolation_forest/stok_seviye BLOB purged" in purge.output
    assert "🧹 Purged: 1 BLOBs of already migrated models" in purge.output
    with app.app_context():
        assert db.session.execute(select(MLModel.model_data).where(MLModel.id == 1)).scalar_one() is None
        assert get_model_manager(app).load_model_from_file(T, M) is not None


def test_activation_from_another_process_invalidates_this_process_cache(app, three_versions):
    """Two processes share the models directory: `flask ml activate` there, a load here."""
    reader = new_manager(app, cache_ttl=3600)
    with app.app_context():
        assert reader.load_active(T, M).model_id == three_versions[-1]
        assert reader.load_active(T, M).source == "cache"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ML_", "DATABASE_URL"))}
    env.update({"DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"], "ML_MODELS_DIR": app.config["ML_MODELS_DIR"],
                "FLASK_APP": "app", "ML_LOG_FORMAT": "text"})
    done = subprocess.run([sys.executable, "-m", "flask", "ml", "activate", str(three_versions[0])], cwd=str(ROOT),
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with app.app_context():
        outcome = reader.load_active(T, M)
    assert (outcome.model_id, outcome.source) == (three_versions[0], "file")


def test_commands_fail_in_one_line_on_a_database_that_is_not_upgraded(tmp_path, models_dir):
    from tests import dbutil

    url = dbutil.sqlite_url(tmp_path / "legacy.sqlite3")
    dbutil.migrate(url, models_dir, revision="0001_legacy_schema")
    app = dbutil.make_app(url, models_dir)
    try:
        result = app.test_cli_runner().invoke(args=["ml", "list"])
    finally:
        dbutil.dispose(app)
    _one_line_failure(result, "database error", "flask db upgrade")
