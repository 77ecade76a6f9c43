"""The minibar app's real databases (LEGACY.md states A-D) upgraded in place, with the app running beside us.

Each state is built once per session from our own DDL (``tests/legacy``) into
a template database and cloned per test.  The app's statements
(``tests/legacy/hotel.py``) run before the upgrade, after every single
revision, at head and after the downgrade: its rows are never lost and every
value it reads back is one its ORM can map.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory
from flask_migrate import downgrade

from tests import dbutil
from tests.legacy import schema
from tests.legacy.catalog import fingerprint, orm_differences
from tests.legacy.hotel import HotelApp
from tests.ml_helpers import sql as rows
from tests.procutil import base_env, start, stop_group

ROOT = Path(__file__).resolve().parents[1]
REVISIONS = [r.revision for r in reversed(list(ScriptDirectory(str(ROOT / "migrations")).walk_revisions()))]
HEAD = REVISIONS[-1]


@pytest.fixture(params=schema.STATES)
def legacy(request, legacy_templates, tmp_path):
    """A fresh copy of one state: (url, HotelApp, models dir of this service)."""
    template, state = legacy_templates(request.param)
    name = dbutil.create_pg_database(template=template)
    ours = tmp_path / "ml_models"
    ours.mkdir()
    yield dbutil.pg_url(name), HotelApp(dbutil.pg_url(name), state), ours
    dbutil.drop_pg_database(name)


def hotel_versions(url: str) -> list[tuple]:
    if not rows(url, "SELECT 1 FROM pg_tables WHERE tablename = 'alembic_version'"):
        return []
    return rows(url, "SELECT version_num FROM alembic_version ORDER BY 1")


def our_version(url: str) -> list[tuple]:
    return rows(url, "SELECT version_num FROM ml_alembic_version")


def test_every_revision_keeps_the_hotel_app_working(legacy):
    url, hotel, models_dir = legacy
    versions = hotel_versions(url)
    hotel.write()
    hotel.read()
    for revision in REVISIONS:  # one step at a time, the app writing and reading between steps
        dbutil.migrate(url, models_dir, revision=revision)
        assert our_version(url) == [(revision,)]
        hotel.write()
        hotel.read()
        assert hotel.missing_rows() == {}, f"after {revision}"
        assert hotel_versions(url) == versions, f"{revision} touched the hotel app's alembic_version"

    assert orm_differences(url, models_dir) == []
    # What legacy rows lack is filled: the app's alerts have a metric type and a detection time...
    assert rows(url, "SELECT count(*) FROM ml_alerts WHERE metric_type IS NULL OR detected_at IS NULL "
                     "OR detected_at <> created_at") == [(0,)]
    by_type = dict(rows(url, "SELECT alert_type::text, min(metric_type) FROM ml_alerts GROUP BY 1"))
    assert by_type == {"stok_anomali": "stok_seviye", "tuketim_anomali": "tuketim_miktar",
                       "dolum_gecikme": "dolum_sure"}
    # ... its models a created_at (from training_date for those written before the upgrade) ...
    first = hotel.state.app_rows["ml_models"]
    assert rows(url, "SELECT count(*) FROM ml_models WHERE id = ANY(:i) AND created_at <> training_date",
                {"i": first}) == [(0,)]
    # ... and one active model per type (the newest), the database refusing a second.
    active = rows(url, "SELECT metric_type, count(*) FROM ml_models WHERE is_active GROUP BY 1")
    assert all(count == 1 for _, count in active)
    with pytest.raises(sa.exc.IntegrityError):
        rows(url, "UPDATE ml_models SET is_active = true WHERE metric_type = 'stok_seviye'")


def test_the_app_reads_rows_this_service_writes(legacy):
    """Alerts in the app's words and figures of our own, written at head: the app's reads still map."""
    url, hotel, models_dir = legacy
    dbutil.migrate(url, models_dir)
    app = dbutil.make_app(url, models_dir)
    try:
        with app.app_context():
            from utils.extensions import db
            from utils.models import MLAlert

            # No alert_type given: the ORM's default maps the metric type onto the app's vocabulary.
            db.session.execute(MLAlert.__table__.insert(), [
                {"metric_type": metric, "entity_id": None, "metric_value": 9.5, "severity": "high",
                 "message": f"{metric}: 9.5", "method": "z_score", "anomaly_score": 4.1}
                for metric in ("stok_seviye", "tuketim_miktar", "dolum_sure", "zimmet_kullanim", "bar_custom")])
            db.session.commit()
            with pytest.raises(sa.exc.StatementError, match="severity 'severe': expected one of low, medium"):
                db.session.execute(MLAlert.__table__.insert(), {
                    "metric_type": "stok_seviye", "metric_value": 1.0, "severity": "severe", "message": "x"})
            db.session.rollback()
            with pytest.raises(sa.exc.StatementError, match="not among the defined enum values"):
                db.session.execute(MLAlert.__table__.insert(), {
                    "metric_type": "stok_seviye", "alert_type": "anomaly", "metric_value": 1.0, "severity": "high",
                    "message": "x"})
            db.session.rollback()
            # Our code speaks English; the column holds the app's words.
            assert {a.severity for a in db.session.query(MLAlert)} <= {"low", "medium", "high", "critical"}
    finally:
        dbutil.dispose(app)
    read = hotel.read()
    ours = {(a["alert_type"], a["severity"]) for a in read["alerts"] if a["message"].endswith(": 9.5")}
    assert ours == {("stok_anomali", "yuksek"), ("tuketim_anomali", "yuksek"), ("dolum_gecikme", "yuksek"),
                    ("zimmet_fire_yuksek", "yuksek")}
    assert [a["severity"] for a in read["dashboard"]][:1] == ["kritik"]  # its ORDER BY severity DESC


def test_downgrade_base_returns_the_adopted_tables_with_every_app_row(legacy):
    url, hotel, models_dir = legacy
    before = fingerprint(url)
    versions = hotel_versions(url)
    dbutil.migrate(url, models_dir)
    hotel.write()
    # Rows of this service: an alert, a figure of its own, an observation of a type the app has no label
    # for, one without an entity.
    rows(url, "INSERT INTO ml_alerts (metric_type, alert_type, severity, entity_id, metric_value, message, method) "
              "VALUES ('stok_seviye', 'stok_anomali', 'orta', 1, 2.0, 'ours', 'z_score')")
    rows(url, "INSERT INTO ml_metrics (metric_type, entity_id, metric_value) VALUES ('model_load_time', 1, 3.5), "
              "('minibar_custom', 4, 1.0), ('stok_seviye', NULL, 1.0)")

    app = dbutil.make_app(url, models_dir)
    try:
        with app.app_context():
            downgrade(revision="base")
    finally:
        dbutil.dispose(app)

    after = fingerprint(url)
    # The labels PostgreSQL cannot take back: a type the app's rows now use was added to its enum.
    assert after["enums"].pop("ml_metric_type") == before["enums"].pop("ml_metric_type") + ["minibar_custom"]
    assert after == before
    assert hotel.missing_rows() == {}
    assert hotel_versions(url) == versions
    assert rows(url, "SELECT metric_type::text, entity_id FROM ml_metrics WHERE metric_type::text IN "
                     "('model_load_time', 'minibar_custom') OR entity_id IS NULL") == [("minibar_custom", 4)]
    hotel.write()
    hotel.read()

    dbutil.migrate(url, models_dir)  # and up again
    assert our_version(url) == [(HEAD,)]
    assert orm_differences(url, models_dir) == []
    hotel.write()
    hotel.read()
    assert hotel.missing_rows() == {}


def test_a_shared_alembic_version_that_is_not_only_ours_is_left_alone(pg_available, tmp_path):
    name = dbutil.create_pg_database()
    url = dbutil.pg_url(name)
    try:
        rows(url, schema.VERSION_TABLE)  # empty: as the hotel app's `alembic downgrade base` leaves it
        dbutil.migrate(url, tmp_path)
        assert hotel_versions(url) == [] and rows(url, "SELECT count(*) FROM alembic_version") == [(0,)]
        assert our_version(url) == [(HEAD,)]
    finally:
        dbutil.drop_pg_database(name)


def test_a_database_of_our_earlier_release_moves_its_version_row_once(empty_database_url, models_dir):
    """Releases up to 0005 kept their revision in alembic_version, wrote 'anomaly' and English severities."""
    url = empty_database_url
    dbutil.migrate(url, models_dir, revision="0005_scan_index")
    # As that release left it: its row in alembic_version, no ledger (it had none), its own alert words.
    rows(url, schema.VERSION_TABLE)
    rows(url, "INSERT INTO alembic_version SELECT version_num FROM ml_alembic_version")
    rows(url, "DROP TABLE ml_alembic_version")
    rows(url, "DROP TABLE ml_migration_ledger")
    rows(url, "INSERT INTO ml_metrics (id, metric_type, entity_id, metric_value) VALUES (1, 'tuketim_miktar', 7, 9.0)")
    rows(url, "INSERT INTO ml_alerts (alert_type, metric_type, entity_id, metric_value, severity, message, method, "
              "observation_id) VALUES ('anomaly', 'tuketim_miktar', 7, 9.0, 'high', NULL, 'z_score', 1)")

    dbutil.migrate(url, models_dir)
    tables = set(sa.inspect(sa.create_engine(url, poolclass=sa.pool.NullPool)).get_table_names())
    assert "alembic_version" not in tables and our_version(url) == [(HEAD,)]
    [(alert_type, severity, message)] = rows(url, "SELECT alert_type, severity, message FROM ml_alerts")
    assert (alert_type, severity) == ("tuketim_anomali", "yuksek")
    assert message.startswith("tuketim_miktar: 9")  # a message is always there for the app to print
    assert orm_differences(url, models_dir) == []
    dbutil.migrate(url, models_dir)  # nothing left to move or do
    assert our_version(url) == [(HEAD,)]

    app = dbutil.make_app(url, models_dir)
    try:
        with app.app_context():
            downgrade(revision="0005_scan_index")
            assert rows(url, "SELECT alert_type, severity FROM ml_alerts") == [("anomaly", "high")]
            downgrade(revision="base")
    finally:
        dbutil.dispose(app)
    tables = set(sa.inspect(sa.create_engine(url, poolclass=sa.pool.NullPool)).get_table_names())
    assert tables == {"ml_alembic_version"}


def test_the_container_entrypoint_starts_on_every_state(legacy_templates, tmp_path):
    """docker/entrypoint.sh as the image runs it: wait, upgrade (adopting), then the given command.

    The four states at once (one entrypoint each, in parallel): each run imports the app three times.
    """
    runs = []
    try:
        for state in schema.STATES:
            template, built = legacy_templates(state)
            name = dbutil.create_pg_database(template=template)
            url, models_dir, log = dbutil.pg_url(name), tmp_path / f"models_{state}", tmp_path / f"{state}.log"
            models_dir.mkdir()
            env = base_env(tmp_path, DATABASE_URL=url, ML_MODELS_DIR=str(models_dir), ML_ADMIN_TOKEN="t" * 24,
                           SECRET_KEY="s", ML_LOG_FORMAT="text", MIGRATE_ATTEMPTS="1", DB_WAIT_TIMEOUT="20")
            proc = start(["bash", str(ROOT / "docker" / "entrypoint.sh"), "flask", "db", "current"], env, log)
            runs.append((name, proc, log, HotelApp(url, built)))
        for name, proc, log, hotel in runs:
            code = proc.wait(timeout=180)
            output = log.read_text()
            assert code == 0, output
            assert "database schema is at head" in output and f"{HEAD} (head)" in output
            hotel.write()
            hotel.read()
            assert hotel.missing_rows() == {}
    finally:
        for name, proc, _, _ in runs:
            stop_group(proc)
            dbutil.drop_pg_database(name)


def test_an_upgrade_behind_a_long_app_transaction_gives_up_fast_and_retries_cleanly(legacy_templates, tmp_path):
    """A real lock held by 'the app': the migration fails within its lock timeout instead of stalling
    every statement queued behind its ALTER TABLE, leaves the database as it was, and succeeds later."""
    template, built = legacy_templates("B")
    name = dbutil.create_pg_database(template=template)
    url = dbutil.pg_url(name)
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        before = fingerprint(url)
        with engine.connect() as holder:
            holder.execute(sa.text("SELECT id FROM ml_alerts LIMIT 1")).all()  # its open transaction's lock
            with pytest.raises(sa.exc.OperationalError, match="lock timeout"):
                app = dbutil.make_app(url, tmp_path, ML_MIGRATION_LOCK_TIMEOUT_SECONDS=0.5)
                try:
                    with app.app_context():
                        from flask_migrate import upgrade

                        upgrade()
                finally:
                    dbutil.dispose(app)
            holder.rollback()
        assert fingerprint(url) == before  # revision 0001 rolled back whole
        dbutil.migrate(url, tmp_path)
        assert our_version(url) == [(HEAD,)]
        hotel = HotelApp(url, built)
        hotel.write()
        hotel.read()
    finally:
        engine.dispose()
        dbutil.drop_pg_database(name)
