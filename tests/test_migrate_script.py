"""``python migrate_models_to_filesystem.py`` run for real, as an operator would,
against legacy databases built with revision 0001 and BLOB rows.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests import dbutil
from tests.ml_helpers import ROOT, build_legacy_database, legacy_rows, listing, sql, table_dump

SCRIPT = str(ROOT / "migrate_models_to_filesystem.py")


def _run(url: str, models_dir, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ML_", "DATABASE_URL"))}
    env.update({"DATABASE_URL": url, "ML_MODELS_DIR": str(models_dir), "ML_LOG_FORMAT": "text"})
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=str(ROOT), env=env, capture_output=True,
                          text=True, timeout=120)


def _operator_url(url: str) -> str:
    # What an operator exports: the plain scheme, not SQLAlchemy's driver spelling.
    return url.replace("postgresql+psycopg2://", "postgresql://")


def test_dry_run_then_migrate_then_rerun(empty_database_url, models_dir):
    url = empty_database_url
    build_legacy_database(url, models_dir, legacy_rows([("stok_seviye", True), ("stok_seviye", True),
                                                       ("tuketim_miktar", True), ("dolum_sure", False)]))
    before = table_dump(url), listing(models_dir)

    dry = _run(_operator_url(url), models_dir, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.count("would be migrated") == 4
    assert "🔎 Would migrate: 4 models" in dry.stdout and "❌ Failed: 0 models" in dry.stdout
    assert (table_dump(url), listing(models_dir)) == before

    real = _run(_operator_url(url), models_dir)
    assert real.returncode == 0, real.stderr
    lines = real.stdout.splitlines()
    assert sum(1 for line in lines if line.startswith("✅ model ") and " -> " in line) == 4
    assert "✅ Migrated: 4 models" in lines and "❌ Failed: 0 models" in lines
    assert "⏭️  Skipped: 0 models (already migrated)" in lines
    assert any(line.startswith("💾 Total size: ") and line.endswith(" bytes)") for line in lines)
    paths = sql(url, "SELECT model_path FROM ml_models WHERE model_path IS NOT NULL")
    assert len(paths) == 4 and all((models_dir / p).is_file() for (p,) in paths)

    after = table_dump(url), listing(models_dir)
    rerun = _run(_operator_url(url), models_dir)
    assert rerun.returncode == 0, rerun.stderr
    assert "✅ Migrated: 0 models" in rerun.stdout and "⏭️  Skipped: 4 models (already migrated)" in rerun.stdout
    assert (table_dump(url), listing(models_dir)) == after


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_corrupt_blob_fails_exit_1_and_the_others_still_migrate(empty_database_url, models_dir):
    rows = legacy_rows([("stok_seviye", True), ("tuketim_miktar", True), ("dolum_sure", True)])
    rows[1]["model_data"] = b"\x80\x05not a pickle at all"
    build_legacy_database(empty_database_url, models_dir, rows)

    done = _run(_operator_url(empty_database_url), models_dir)
    assert done.returncode == 1
    assert "❌ model 2 isolation_forest/tuketim_miktar failed: BLOB does not unpickle" in done.stdout
    assert "✅ Migrated: 2 models" in done.stdout and "❌ Failed: 1 models" in done.stdout
    assert done.stderr.strip().splitlines()[-1] == "Error: 1 model(s) failed to migrate; see the lines above"
    assert sql(empty_database_url, "SELECT id FROM ml_models WHERE model_path IS NULL") == [(2,)]


def test_help_and_a_bad_option(tmp_path):
    url = dbutil.sqlite_url(tmp_path / "unused.sqlite3")
    shown = _run(url, tmp_path / "models", "--help")
    assert shown.returncode == 0 and "--dry-run" in shown.stdout and "--purge-blobs" in shown.stdout
    bad = _run(url, tmp_path / "models", "--purge")
    assert bad.returncode == 2 and "No such option" in bad.stderr


def test_an_unmigrated_schema_fails_with_one_line(tmp_path):
    url = dbutil.sqlite_url(tmp_path / "legacy.sqlite3")
    dbutil.migrate(url, tmp_path / "models", revision="0001_legacy_schema")
    done = _run(url, tmp_path / "models")
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: database error") and "flask db upgrade" in last


def test_a_dry_run_does_not_even_create_a_missing_models_directory(empty_database_url, tmp_path):
    """An operator points the dry run at the volume path before mounting it: nothing
    may appear on disk, not even the directory; the real run then creates it."""
    url = empty_database_url
    staging = tmp_path / "staging"
    build_legacy_database(url, staging, legacy_rows([("stok_seviye", True), ("dolum_sure", True)]))
    missing = tmp_path / "not-yet-mounted" / "ml_models"
    before = table_dump(url)

    dry = _run(_operator_url(url), missing, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "🔎 Would migrate: 2 models" in dry.stdout
    assert not missing.parent.exists() and table_dump(url) == before

    real = _run(_operator_url(url), missing)
    assert real.returncode == 0, real.stderr
    assert len(listing(missing)) == 2
