"""An operator's whole day on each of the minibar app's databases (LEGACY.md states A-D), the app running beside us.

Per state, on one clone of the state's template and with our models
directory being the app's own volume (as in the image): upgrade; migrate as a
dry run (the script, as operators type it), for real and again; list (CLI,
API, dashboard); detect; train; scan twice; cleanup; downgrade to base.  The
app's plain-SQL writes and reads (``tests/legacy/hotel.py``) run at every
step: none of its rows is lost, every value it reads back is one its ORM maps,
and its files stay where it wrote them.
"""
from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from flask_migrate import downgrade

from tests import dbutil
from tests.dashboard_helpers import TOKEN, sign_in
from tests.legacy import schema
from tests.legacy.hotel import HotelApp
from tests.ml_helpers import sql as rows
from tests.pipeline_helpers import fresh_spikes
from tests.procutil import base_env
from utils.time import utcnow

ROOT = Path(__file__).resolve().parents[1]
# Small forests and a small training gate: the flow, not the model quality, is under test.
# The fixtures' observations are a year old: observation retention (which deletes the
# shared table's old rows, the app's own cleanup does the same at 90 days) is off here.
FAST = {"ML_N_ESTIMATORS": 20, "ML_MIN_TRAIN_SAMPLES": 20, "ML_ORPHAN_GRACE_SECONDS": 0.0,
        "ML_OBSERVATION_RETENTION_DAYS": 0}


@pytest.fixture(params=schema.STATES)
def deployment(request, legacy_templates):
    """One clone of a state: (url, the hotel app on it, its volume = our models directory)."""
    template, state = legacy_templates(request.param)
    name = dbutil.create_pg_database(template=template)
    url = dbutil.pg_url(name)
    yield url, HotelApp(url, state), state.models_dir
    dbutil.drop_pg_database(name)


def step(hotel: HotelApp) -> None:
    """The app's hour: it writes and reads; nothing of its own may be missing."""
    hotel.write()
    hotel.read()
    assert hotel.missing_rows() == {}


def collect(url: str, n: int = 30) -> None:
    """Recent, ordinary stock levels of four products, inserted as the app's collector does.

    No outlier among them: they are the training window, which the causal detector takes as each
    entity's baseline (an outlier here would widen the limits; the anomalies come after training)."""
    now = utcnow()
    for k in range(n):
        for entity in (1, 2, 3, 4):
            value = 40.0 + entity + (k % 5)
            rows(url, "INSERT INTO ml_metrics (metric_type, entity_id, metric_value, timestamp) "
                      "VALUES (:m, :e, :v, :t)",
                 {"m": "stok_seviye", "e": entity, "v": value, "t": now - timedelta(hours=n - k)})


def migrate_script(url: str, volume: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = base_env(tmp_path, DATABASE_URL=url, ML_MODELS_DIR=str(volume), ML_LOG_FORMAT="text")
    return subprocess.run([sys.executable, "migrate_models_to_filesystem.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180)


def test_the_whole_flow_on_each_state(deployment, tmp_path):
    url, hotel, volume = deployment
    state = hotel.state
    paths_before = dict(rows(url, "SELECT id, model_path FROM ml_models")) if state.has_model_path else {}
    step(hotel)
    dbutil.migrate(url, volume)
    step(hotel)
    markers = rows(url, "SELECT id, model_path FROM ml_models WHERE model_data = 'FILE_BASED'::bytea ORDER BY id")
    # The file era: B and D from the fixtures, and in B-D the app's trainer of today (hotel.write()).
    assert bool(markers) == state.has_model_path

    # --- migrate: dry run (writes nothing, on disk or in the database), real, rerun
    files_before = sorted(p.name for p in volume.iterdir())
    dry = migrate_script(url, volume, tmp_path, "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert f"Would adopt: {len(markers)} files" in dry.stdout and "Failed: 0 models" in dry.stdout
    assert sorted(p.name for p in volume.iterdir()) == files_before
    assert rows(url, "SELECT count(*) FROM ml_models WHERE checksum_sha256 IS NOT NULL") == [(0,)]

    app = dbutil.make_app(url, volume, **FAST)
    try:
        runner = app.test_cli_runner()
        real = runner.invoke(args=["ml", "migrate"])
        assert real.exit_code == 0, real.output
        assert f"Adopted: {len(markers)} files" in real.output and "Failed: 0 models" in real.output
        again = runner.invoke(args=["ml", "migrate"])
        assert again.exit_code == 0, again.output
        assert "Migrated: 0 models" in again.output and "Adopted: 0 files" in again.output
        # Every row has a file of ours; an adopted row keeps the app's path, its marker and its file.
        assert rows(url, "SELECT count(*) FROM ml_models WHERE checksum_sha256 IS NULL OR model_path LIKE '/%'") \
            == [(0,)]
        for model_id, path in markers:
            assert rows(url, "SELECT legacy_path, model_data = 'FILE_BASED'::bytea FROM ml_models WHERE id = :i",
                        {"i": model_id}) == [(path, True)]
            assert Path(path).is_file()
        step(hotel)  # the app keeps training: one more row of its own, not migrated yet

        # --- list: CLI, API and dashboard say which models are the app's and which detection cannot use
        listed = {m["id"]: m for m in json.loads(runner.invoke(args=["ml", "list", "--json"]).output)}
        app_rows = hotel.rows["ml_models"]
        assert all(listed[i]["legacy"] for i in app_rows)
        incompatible = {i for i, m in listed.items() if not m["compatible"]}
        aggregate = {i for i, m in listed.items() if (m["input_signature"] or {}).get("kind") == "aggregate_features"}
        assert incompatible == aggregate
        assert {i for i, _ in markers} <= incompatible
        assert bool(incompatible) == state.has_model_path  # files and fallback BLOBs; A: raw-value BLOBs only
        if incompatible:
            table = runner.invoke(args=["ml", "list"]).output
            assert "legacy, incompatible" in table and "aggregate features" in table
            client = app.test_client()
            api = client.get("/api/ml/models", headers={"Authorization": f"Bearer {TOKEN}"}).get_json()
            assert {m["id"] for m in api["models"] if not m["compatible"] and m["legacy"]} == incompatible
            sign_in(client)
            assert "incompatible input" in client.get("/ml/dashboard").get_data(as_text=True)

        # --- detect, before any training of ours
        with app.app_context():
            from utils.extensions import db
            from utils.ml.anomaly_detector import AnomalyDetector
            from utils.ml.model_trainer import train_models
            from utils.ml.pipeline.scan import run_scan

            detector = AnomalyDetector(db)
            stock = detector.detect_anomalies_with_fallback("stok_seviye", [40.0, 41.0, 400.0])
            refill = detector.detect_anomalies_with_fallback("dolum_sure", [40.0, 41.0])
            # Models expecting the app's aggregate features: B/D's stock fallback BLOB, the app's file of
            # today (B-D); raw-value forests: A/C's migrated stock BLOB and A's newest refill BLOB.
            falls_back = (stock, refill) if state.has_entity_type else (refill,) if state.has_model_path else ()
            for result in falls_back:
                assert result.method == "z_score"
                assert any("incompatible_input" in r for r in result.fallback_reasons), result.fallback_reasons
            if not state.has_entity_type:
                assert (stock.method, stock.fallback_reasons) == ("isolation_forest_file", [])
            if not state.has_model_path:
                assert refill.method == "isolation_forest_db"

            # --- train (three versions of ours, new observations before each) replaces the legacy model
            trained = []
            for _ in range(3):
                collect(url)
                trained.append(train_models("stok_seviye")[0])
                db.session.remove()
            assert [t["status"] for t in trained] == ["trained"] * 3, trained
            # B/D: the champion's input cannot be computed, so the first challenger replaces it whatever the gate.
            if state.has_entity_type:
                assert trained[0]["promotion"]["decision"] == "promoted", trained[0]["promotion"]
                assert "cannot compute" in trained[0]["promotion"]["reason"]
            else:  # A/C: the app's raw-value forest scores on another scale: no KS or agreement against it
                assert "another kind of model" in trained[0]["promotion"]["reason"], trained[0]["promotion"]
            db.session.remove()
            # A/C: the champion is the app's raw-value forest, which detection can use: the gate decides.
            [(active,)] = rows(url, "SELECT id FROM ml_models WHERE is_active AND metric_type = 'stok_seviye'")
            stock = detector.detect_anomalies_with_fallback("stok_seviye", [40.0, 41.0, 400.0])
            assert (stock.method, stock.model_id, stock.fallback_reasons) == ("isolation_forest_file", active, [])

            # --- scan twice: the second raises nothing new.  The causal detector judges each new
            # reading against its entity's own history and takes its training window as that baseline
            # (rows it was trained on are not news), so the readings that must alert come after training.
            spikes = fresh_spikes(("stok_seviye",))
            first = run_scan("stok_seviye")
            alerts = rows(url, "SELECT count(*) FROM ml_alerts WHERE method IS NOT NULL")[0][0]
            spiked = rows(url, "SELECT count(*) FROM ml_alerts a JOIN ml_metrics m ON m.id = a.observation_id "
                               "WHERE a.method IS NOT NULL AND m.metric_value >= :v",
                          {"v": min(s["metric_value"] for s in spikes)})
            assert spiked == [(len(spikes),)], (spikes, first)
            second = run_scan("stok_seviye")
            assert first["alerts"] >= len(spikes) and second["alerts"] == 0
            assert rows(url, "SELECT count(*) FROM ml_alerts WHERE method IS NOT NULL") == [(alerts,)]
            db.session.remove()
        listed = {m["id"]: m for m in json.loads(runner.invoke(args=["ml", "list", "--json"]).output)}
        assert (listed[active]["is_active"], listed[active]["compatible"]) == (True, True)
        assert all(not listed[t["model_id"]]["legacy"] for t in trained)
        step(hotel)  # its reads of our alerts, in its words
        # Our scan's rows (grouped into incidents: incident_id, a column the app never names) are among
        # the ones it read and checked: every alert_type and severity one its ORM declares.
        ours_alerts = rows(url, "SELECT id, incident_id FROM ml_alerts WHERE method IS NOT NULL")
        assert ours_alerts and all(incident for _, incident in ours_alerts)
        assert {i for i, _ in ours_alerts} <= {a["id"] for a in hotel.read()["alerts"]}

        # --- cleanup: never fails on ml_training_logs, never deletes a log, a row of the app or its files.
        # A log of the app naming one of our old versions: that version stays (the foreign key).
        newest = trained[2]["model_id"]
        older = [t["model_id"] for t in trained[:2] if t["model_id"] != active]  # neither newest nor active
        referenced = older[0]
        rows(url, "INSERT INTO ml_training_logs (model_id, training_start, success) VALUES (:m, now(), true)",
             {"m": referenced})
        logs = rows(url, "SELECT count(*) FROM ml_training_logs")
        legacy_rows = rows(url, "SELECT count(*) FROM ml_models WHERE sklearn_version IS NULL")
        cleaned = runner.invoke(args=["ml", "cleanup", "--keep", "1"])
        assert cleaned.exit_code == 0, cleaned.output
        assert f"Kept 1 old versions the minibar app's ml_training_logs reference (never deleted): {referenced}" \
            in cleaned.output and "legacy versions (the minibar app's rows are never deleted)" in cleaned.output
        assert rows(url, "SELECT count(*) FROM ml_training_logs") == logs
        assert rows(url, "SELECT count(*) FROM ml_models WHERE sklearn_version IS NULL") == legacy_rows
        # Our versions: the newest, the active and the one a log references stay; any other one goes.
        mine = {t["model_id"] for t in trained}
        assert {r for (r,) in rows(url, "SELECT id FROM ml_models WHERE sklearn_version IS NOT NULL")} \
            == {newest, referenced} | ({active} & mine)
        for (path,) in rows(url, "SELECT legacy_path FROM ml_models WHERE legacy_path IS NOT NULL"):
            assert Path(path).is_file(), path
        step(hotel)

        # --- downgrade base: the app's tables as adopted, its rows and paths as it wrote them
        with app.app_context():
            downgrade(revision="base")
    finally:
        dbutil.dispose(app)
    assert hotel.missing_rows() == {}
    for model_id, path in paths_before.items():
        assert rows(url, "SELECT model_path FROM ml_models WHERE id = :i", {"i": model_id}) == [(path,)]
    assert rows(url, "SELECT count(*) FROM ml_alembic_version") == [(0,)]
    step(hotel)
