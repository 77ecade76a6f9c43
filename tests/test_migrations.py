"""The migration chain on PostgreSQL and SQLite: head, base, ORM parity (fresh and
adopted databases alike), and a legacy BLOB database upgraded in place then
migrated to files and back.  The minibar app's own databases: test_legacy_migrations.py.
"""
from __future__ import annotations

import hashlib
import pickle
import stat

import numpy as np
import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory
from flask_migrate import downgrade, upgrade

from migrations import vocab
from tests import dbutil
from tests.legacy import schema
from tests.legacy.catalog import orm_differences
from tests.ml_helpers import (
    build_legacy_database,
    legacy_rows,
    listing,
    make_model,
    scores,
    sql,
    table_dump,
)
from utils import models as orm
from utils.migration_lock import VERSION_TABLE
from utils.ml.model_manager import get_model_manager

TABLES = {"ml_models", "ml_metrics", "ml_alerts", "ml_scan_watermarks", "ml_model_activations", "ml_job_runs",
          "ml_scheduler_leases", "ml_migration_ledger", "ml_notifications", "ml_auth_failures",
          "ml_revoked_sessions", "ml_incidents", "ml_gate_decisions", "ml_model_pins", "ml_drift_reports"}


def _tables(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names()) - {VERSION_TABLE}
    finally:
        engine.dispose()


def _head(app) -> str:
    with app.app_context():
        config = app.extensions["migrate"].migrate.get_config()
    return ScriptDirectory.from_config(config).get_current_head()


def test_upgrade_head_and_downgrade_base_round_trip(empty_database_url, models_dir):
    app = dbutil.make_app(empty_database_url, models_dir)
    try:
        with app.app_context():
            upgrade()
            assert _tables(empty_database_url) == TABLES
            assert sql(empty_database_url, f"SELECT version_num FROM {VERSION_TABLE}") == [(_head(app),)]
            assert "alembic_version" not in sa.inspect(sa.create_engine(empty_database_url)).get_table_names()
            downgrade(revision="base")
            assert _tables(empty_database_url) == set()
            upgrade()
            assert _tables(empty_database_url) == TABLES
    finally:
        dbutil.dispose(app)


def test_orm_models_match_the_head_schema(database_url, models_dir):
    """Fresh PostgreSQL and SQLite: types and server defaults included."""
    assert orm_differences(database_url, models_dir) == []


@pytest.mark.parametrize("state", schema.STATES)
def test_orm_models_match_the_head_schema_of_every_adopted_database(state, pg_available, models_dir, tmp_path):
    """The minibar app's databases at head: the same schema as a fresh one (its own tables aside)."""
    name = dbutil.create_pg_database()
    url = dbutil.pg_url(name)
    try:
        schema.build(url, state, tmp_path)
        dbutil.migrate(url, models_dir)
        assert orm_differences(url, models_dir) == []
    finally:
        dbutil.drop_pg_database(name)


def test_the_orm_and_the_migrations_share_the_apps_vocabulary():
    assert orm.APP_ALERT_TYPES == vocab.APP_ALERT_TYPES == schema.ALERT_TYPES
    assert orm.APP_SEVERITIES == vocab.APP_SEVERITIES == schema.SEVERITIES
    assert vocab.APP_METRIC_TYPES == schema.METRIC_TYPES
    assert orm.UNREADABLE_ALERT_TYPES == vocab.UNREADABLE_ALERT_TYPES
    assert orm.ALERT_TYPE_FOR_METRIC == vocab.ALERT_TYPE_FOR_METRIC
    assert orm.DEFAULT_ALERT_TYPE == vocab.DEFAULT_ALERT_TYPE
    assert orm.SEVERITY_FROM_ENGLISH == vocab.SEVERITY_FROM_ENGLISH
    written = set(vocab.ALERT_TYPE_FOR_METRIC.values()) | {vocab.DEFAULT_ALERT_TYPE}
    assert written <= set(vocab.APP_ALERT_TYPES) and not written & set(vocab.UNREADABLE_ALERT_TYPES)


def test_the_database_refuses_a_second_active_row(app_ctx):
    from utils.extensions import db

    insert = sa.text("INSERT INTO ml_models (model_type, metric_type, model_path, training_date, is_active, "
                     "created_at) VALUES ('isolation_forest', 'stok_seviye', :p, :t, :a, :t)")
    now = {"t": "2025-11-12 12:00:00+00:00"}
    db.session.execute(insert, {"p": "a.pkl", "a": True, **now})
    db.session.execute(insert, {"p": "b.pkl", "a": False, **now})
    db.session.commit()
    with pytest.raises(sa.exc.IntegrityError):
        db.session.execute(insert, {"p": "c.pkl", "a": True, **now})
        db.session.commit()
    db.session.rollback()


# ------------------------------------------------------------------ a legacy database
LEGACY_SPECS = [
    ("stok_seviye", False), ("stok_seviye", True), ("stok_seviye", True),  # two active rows: the original bug
    ("tuketim_miktar", True), ("tuketim_miktar", False), ("dolum_sure", True),
]


def test_a_legacy_database_upgrades_migrates_and_downgrades_without_loss(empty_database_url, models_dir):
    url = empty_database_url
    rows = legacy_rows(LEGACY_SPECS)
    blob_scores = {i + 1: scores(pickle.loads(r["model_data"])) for i, r in enumerate(rows)}
    blob_hashes = {i + 1: hashlib.sha256(r["model_data"]).hexdigest() for i, r in enumerate(rows)}
    build_legacy_database(url, models_dir, rows, upgrade=False)
    assert sql(url, f"SELECT version_num FROM {VERSION_TABLE}") == [("0001_legacy_schema",)]
    assert sql(url, "SELECT count(*) FROM ml_models WHERE is_active AND metric_type = 'stok_seviye'") == [(2,)]

    dbutil.migrate(url, models_dir)  # flask db upgrade, on the live legacy data

    active = sql(url, "SELECT metric_type, id FROM ml_models WHERE is_active ORDER BY metric_type")
    assert active == [("dolum_sure", 6), ("stok_seviye", 3), ("tuketim_miktar", 4)]  # the newest active stays
    assert sql(url, "SELECT count(*) FROM ml_models WHERE model_path IS NULL AND model_data IS NOT NULL") == [(6,)]

    app = dbutil.make_app(url, models_dir)
    try:
        with app.app_context():
            manager = get_model_manager(app)

            # A dry run changes nothing, anywhere.
            table_before, dir_before = table_dump(url), listing(models_dir)
            dry = manager.migrate_from_database(dry_run=True)
            assert (dry["migrated"], dry["failed"], dry["skipped"], dry["errors"]) == (6, 0, 0, [])
            assert {m["status"] for m in dry["models"]} == {"would_migrate"}
            assert table_dump(url) == table_before and listing(models_dir) == dir_before

            # The real run: one verified, byte-identical file per BLOB; the BLOB stays.
            real = manager.migrate_from_database()
            assert (real["migrated"], real["failed"], real["skipped"], real["errors"]) == (6, 0, 0, [])
            assert real["total_size_bytes"] == sum(len(r["model_data"]) for r in rows)
            migrated = dict(sql(url, "SELECT id, model_path FROM ml_models"))
            for row_id, key in migrated.items():
                data = (models_dir / key).read_bytes()
                assert hashlib.sha256(data).hexdigest() == blob_hashes[row_id]
                assert stat.S_IMODE((models_dir / key).stat().st_mode) == 0o644
                assert np.array_equal(scores(pickle.loads(data)), blob_scores[row_id])
            assert sql(url, "SELECT count(*) FROM ml_models WHERE checksum_sha256 IS NULL OR model_data IS NULL") \
                == [(0,)]
            for metric, row_id in active:
                model = manager.load_model_from_file("isolation_forest", metric)
                assert np.array_equal(scores(model), blob_scores[row_id])  # predicts exactly as the BLOB did

            # Idempotent: a second run skips everything and touches nothing.
            table_after, dir_after = table_dump(url), listing(models_dir)
            again = manager.migrate_from_database()
            assert (again["migrated"], again["failed"], again["skipped"]) == (0, 0, 6)
            assert table_dump(url) == table_after and listing(models_dir) == dir_after

            # Purging drops verified BLOBs; a new model is file-only (compressed, even).
            purge = manager.migrate_from_database(purge_blobs=True)
            assert (purge["purged"], purge["failed"], purge["skipped"]) == (6, 0, 0)
            assert sql(url, "SELECT count(*) FROM ml_models WHERE model_data IS NOT NULL") == [(0,)]
            from tests.ml_helpers import new_manager

            fresh = make_model(42)
            new_id = new_manager(app, compress=True).save_model(fresh, "isolation_forest", "stok_seviye").id
            blob_scores[new_id] = scores(fresh)

        # Down to the legacy schema: every file-only model is copied back into its BLOB.
        with app.app_context():
            downgrade(revision="0001_legacy_schema")
    finally:
        dbutil.dispose(app)
    blobs = sql(url, "SELECT id, model_data FROM ml_models ORDER BY id")
    assert [row_id for row_id, _ in blobs] == list(range(1, 7)) + [new_id]
    for row_id, data in blobs:
        assert np.array_equal(scores(pickle.loads(bytes(data))), blob_scores[row_id])
    # ... and the legacy BLOBs are the very bytes they were.
    assert all(hashlib.sha256(bytes(d)).hexdigest() == blob_hashes[i] for i, d in blobs if i in blob_hashes)

    app = dbutil.make_app(url, models_dir)
    try:
        with app.app_context():
            downgrade(revision="base")
        assert _tables(url) == set()
    finally:
        dbutil.dispose(app)


def test_a_downgrade_that_would_lose_a_model_stops_and_keeps_it(database_url, models_dir, caplog):
    from utils.extensions import db

    app = dbutil.make_app(database_url, models_dir)
    try:
        with app.app_context():
            row = get_model_manager(app).save_model(make_model(1), "isolation_forest", "stok_seviye")
            row_id, key = row.id, row.model_path
            db.session.commit()  # end the read's transaction: the downgrade alters ml_models
            (models_dir / key).unlink()
            with pytest.raises(SystemExit) as caught:  # flask_migrate turns the RuntimeError into exit 1
                downgrade(revision="0001_legacy_schema")
    finally:
        dbutil.dispose(app)
    assert caught.value.code == 1
    assert f"model {row_id}'s file {key!r} is missing" in caplog.text
    assert sql(database_url, "SELECT id, model_path FROM ml_models") == [(row_id, key)]


def test_the_migrate_report_counts_a_corrupt_blob_as_failed_and_migrates_the_rest(empty_database_url, models_dir):
    rows = legacy_rows([("stok_seviye", True), ("tuketim_miktar", True), ("dolum_sure", True)])
    rows[1]["model_data"] = rows[1]["model_data"][:100]  # truncated in the database
    build_legacy_database(empty_database_url, models_dir, rows)
    app = dbutil.make_app(empty_database_url, models_dir)
    try:
        with app.app_context():
            result = get_model_manager(app).migrate_from_database()
    finally:
        dbutil.dispose(app)
    assert (result["migrated"], result["failed"], result["skipped"]) == (2, 1, 0)
    assert len(result["errors"]) == 1 and "model 2 " in result["errors"][0] and "unpickle" in result["errors"][0]
    assert sql(empty_database_url, "SELECT id FROM ml_models WHERE model_path IS NULL") == [(2,)]
    assert len([p for p in models_dir.iterdir() if p.suffix == ".pkl"]) == 2
