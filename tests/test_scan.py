"""Scans end to end: demo data -> train -> scan -> alerts, exactly once per observation."""
from __future__ import annotations

import logging
import threading
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError

from tests.pipeline_helpers import count, fallback_warnings, fresh_spikes, small_hotel
from utils.extensions import db
from utils.ml.anomaly_detector import AnomalyDetector
from utils.ml.model_manager import get_model_manager
from utils.ml.model_trainer import train_models
from utils.ml.pipeline.observations import INTERNAL_METRIC_TYPES, ingest_observations
from utils.ml.pipeline.scan import insert_alerts, pending_metric_types, run_scan
from utils.models import MLAlert, MLMetric, MLModel, ScanWatermark

DEMO_TYPES = {"stok_seviye", "tuketim_miktar", "dolum_sure"}


def alerts_by_observation() -> dict[int, MLAlert]:
    rows = db.session.execute(db.select(MLAlert)).scalars().all()
    return {a.observation_id: a for a in rows}


def test_end_to_end_demo_train_scan_alerts(app_ctx):
    demo = small_hotel()
    models = {r["metric_type"]: r["model_id"] for r in train_models(actor="test")}
    spikes = fresh_spikes()
    summary = run_scan()
    assert set(summary["metric_types"]) == DEMO_TYPES
    assert summary["scanned"] == demo["observations"] + len(spikes)
    assert summary["alerts"] == count(MLAlert) > 0

    detector = AnomalyDetector(db)
    alerts = alerts_by_observation()
    for metric_type, part in summary["metric_types"].items():
        assert part["scanned"] == demo["by_metric_type"][metric_type]["observations"] + 4
        assert part["method"] == "isolation_forest_file" and part["model_id"] == models[metric_type]
        assert part["fallback_reasons"] == [] and part["load_ms"] > 0
        # Every anomaly the model finds has exactly one alert, and nothing else has one.
        rows = db.session.execute(
            db.select(MLMetric.id, MLMetric.entity_id, MLMetric.metric_value, MLMetric.timestamp)
            .where(MLMetric.metric_type == metric_type).order_by(MLMetric.id)
        ).all()
        verdict = detector.detect_with_model(metric_type, [r._mapping for r in rows])
        flagged = {r["observation_id"] for r in verdict.results if r["is_anomaly"]}
        mine = {oid for oid, a in alerts.items() if a.metric_type == metric_type}
        assert mine == flagged and part["alerts"] == len(flagged)
        # The fresh spikes (10^4 x the entity's largest reading) alert, as new incidents.
        spiked = {r.id for r in rows[-4:]}
        assert spiked & mine and part["incidents_opened"] >= 1
        for oid in mine:
            alert = alerts[oid]
            assert alert.method == "isolation_forest_file" and alert.model_id == models[metric_type]
            assert alert.severity in {"low", "medium", "high", "critical"}
            row = next(r for r in verdict.results if r["observation_id"] == oid)
            assert alert.anomaly_score == pytest.approx(row["score"]) and alert.incident_id is not None
            assert not alert.is_read and not alert.is_false_positive
        watermark = db.session.get(ScanWatermark, metric_type).last_observation_id
        assert watermark == rows[-1].id

    # The scan recorded how it got each model: one model_load_time row per metric type.
    load_rows = db.session.execute(
        db.select(MLMetric).where(MLMetric.metric_type == "model_load_time")
    ).scalars().all()
    assert {r.extra_data["metric_type"] for r in load_rows} == DEMO_TYPES
    for row in load_rows:
        assert row.entity_id == models[row.extra_data["metric_type"]]
        assert row.metric_value > 0
        assert row.extra_data["model_type"] == "isolation_forest"
        assert row.extra_data["source"] in ("file", "cache")
        assert row.extra_data["method"] == "isolation_forest_file" and row.extra_data["fallback_reasons"] == []


def test_second_scan_adds_nothing_and_new_observations_are_scanned_once(app_ctx):
    # A clean window: the detector's per-entity limits are calibrated on it (a window full
    # of injected anomalies, the demo's default, widens them past even a 1e7 reading).
    small_hotel(anomaly_rate=0.0)
    train_models(actor="test")
    fresh_spikes(("tuketim_miktar", "dolum_sure"))
    first = run_scan()
    alerts_before = count(MLAlert)
    second = run_scan()
    assert second["scanned"] == 0 and second["metric_types"] == {}
    assert count(MLAlert) == alerts_before

    ingest_observations([
        {"metric_type": "stok_seviye", "entity_id": 1, "metric_value": 1.0e7,
         "timestamp": datetime.now(timezone.utc).isoformat()},
        {"metric_type": "stok_seviye", "entity_id": 2, "metric_value": 50.0,
         "timestamp": datetime.now(timezone.utc).isoformat()},
    ])
    third = run_scan()
    assert third["scanned"] == 2 and set(third["metric_types"]) == {"stok_seviye"}
    assert third["alerts"] >= 1
    new_alert = db.session.execute(db.select(MLAlert).where(MLAlert.metric_value == 1.0e7)).scalar_one()
    assert new_alert.severity in {"low", "medium", "high", "critical"} and new_alert.incident_id is not None
    assert count(MLAlert) == alerts_before + third["alerts"]
    assert first["alerts"] == alerts_before


def test_unique_constraint_not_a_check_stops_duplicates(app_ctx):
    small_hotel()
    train_models(actor="test")
    fresh_spikes(("stok_seviye",))
    first = run_scan("stok_seviye")
    total = count(MLAlert)
    assert first["metric_types"]["stok_seviye"]["alerts"] == total > 0

    # A plain INSERT of a second alert for an observation hits the constraint...
    some = db.session.execute(db.select(MLAlert).limit(1)).scalar_one()
    duplicate = {c.key: getattr(some, c.key) for c in MLAlert.__table__.columns if c.key != "id"}
    with pytest.raises(IntegrityError):
        db.session.execute(MLAlert.__table__.insert().values(**duplicate))
        db.session.commit()
    db.session.rollback()
    # ...and the scan's INSERT ... ON CONFLICT DO NOTHING skips it quietly.
    assert insert_alerts([duplicate]) == 0
    db.session.commit()
    assert count(MLAlert) == total

    # Rewind the watermark (as if a second scanner had read the same rows): the rescan
    # produces the same anomalies and the database keeps one alert each.
    db.session.execute(db.update(ScanWatermark).values(last_observation_id=0))
    db.session.commit()
    again = run_scan("stok_seviye")["metric_types"]["stok_seviye"]
    assert again["alerts"] == 0 and again["duplicates_ignored"] == total
    assert count(MLAlert) == total


def test_small_batches_give_the_same_alerts(app_ctx):
    small_hotel()
    train_models("tuketim_miktar", actor="test")
    fresh_spikes(("tuketim_miktar",), entities=5)
    app_ctx.config["ML_SCAN_BATCH_SIZE"] = 100
    part = run_scan("tuketim_miktar")["metric_types"]["tuketim_miktar"]
    assert part["batches"] == -(-part["scanned"] // 100) > 5
    in_batches = set(alerts_by_observation())

    db.session.execute(MLAlert.__table__.delete())
    db.session.execute(db.update(ScanWatermark).values(last_observation_id=0))
    db.session.commit()
    app_ctx.config["ML_SCAN_BATCH_SIZE"] = 100000
    assert run_scan("tuketim_miktar")["metric_types"]["tuketim_miktar"]["batches"] == 1
    assert set(alerts_by_observation()) == in_batches


def test_concurrent_scans_never_double_alert(app):
    with app.app_context():
        small_hotel()
        train_models(actor="test")
        fresh_spikes()
    results, errors = [], []

    def scan():
        try:
            with app.app_context():
                app.config["ML_SCAN_BATCH_SIZE"] = 200
                results.append(run_scan())
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=scan) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    with app.app_context():
        total = count(MLAlert)
        assert sum(r["alerts"] for r in results) == total > 0
        # Every observation was scored once in all: the watermark row serialised the scanners.
        assert sum(r["scanned"] for r in results) == count(MLMetric, MLMetric.metric_type.in_(DEMO_TYPES))


def test_scan_falls_back_and_records_why(app_ctx, caplog):
    caplog.set_level(logging.INFO)
    small_hotel()
    [trained] = train_models("dolum_sure", actor="test")
    manager = get_model_manager()
    row = db.session.get(MLModel, trained["model_id"])
    Path(manager.store.locate(row.model_path)).unlink()
    manager.clear_cache()  # as a freshly started worker
    fresh_spikes(("dolum_sure",))

    part = run_scan("dolum_sure")["metric_types"]["dolum_sure"]
    assert part["method"] == "z_score" and part["model_id"] is None and part["source"] == "none"
    assert [r.split(": ")[1] for r in part["fallback_reasons"]] == ["file_missing", "no_blob"]
    assert [w.fields["reason"] for w in fallback_warnings(caplog)] == ["file_missing", "no_blob"]
    alerts = db.session.execute(db.select(MLAlert)).scalars().all()
    assert alerts and {a.method for a in alerts} == {"z_score"} and {a.model_id for a in alerts} == {None}
    load_row = db.session.execute(
        db.select(MLMetric).where(MLMetric.metric_type == "model_load_time")
    ).scalar_one()
    assert load_row.entity_id is None
    assert load_row.extra_data["source"] == "none" and load_row.extra_data["method"] == "z_score"
    assert len(load_row.extra_data["fallback_reasons"]) == 2


def test_internal_metric_types_are_never_scanned(app_ctx):
    small_hotel(rooms=5, products=3, attendants=2, days=10)
    run_scan()  # no models: Z-score; writes model_load_time rows
    assert count(MLMetric, MLMetric.metric_type == "model_load_time") == 3
    assert "model_load_time" in INTERNAL_METRIC_TYPES
    assert pending_metric_types() == []
    assert run_scan()["metric_types"] == {}
    assert db.session.get(ScanWatermark, "model_load_time") is None
    with pytest.raises(ValueError, match="internal"):
        run_scan("model_load_time")


@pytest.mark.parametrize("backend", ["postgresql"])
def test_an_observation_committed_late_with_a_lower_id_is_not_skipped(app, database_url):
    """PostgreSQL gives ids at insert time, not at commit: a transaction holding id N may
    commit after another holding N+1.  Real interleaving on two connections: the scan must
    wait for the in-flight insert instead of moving the watermark past it.  (PostgreSQL
    only: SQLite has one writer at a time, so its ids become visible in order.)"""
    import time

    import sqlalchemy as sa

    row = {"metric_type": "stok_seviye", "metric_value": 5.0, "timestamp": datetime.now(timezone.utc)}
    engine = sa.create_engine(database_url)
    slow = engine.connect()
    try:
        slow_tx = slow.begin()
        late_id = slow.execute(sa.insert(MLMetric).values(entity_id=1, **row).returning(MLMetric.id)).scalar_one()
        with engine.begin() as fast:
            early_id = fast.execute(sa.insert(MLMetric).values(entity_id=2, **row).returning(MLMetric.id)).scalar_one()
        assert late_id < early_id  # the lower id is the one still uncommitted

        result: dict = {}

        def scan() -> None:
            with app.app_context():
                result["scan"] = run_scan("stok_seviye")

        worker = threading.Thread(target=scan)
        started = time.monotonic()
        worker.start()
        time.sleep(0.5)
        assert worker.is_alive(), "the scan did not wait for the insert still in flight"
        slow_tx.commit()
        worker.join(timeout=30)
        waited = time.monotonic() - started
    finally:
        slow.close()
        engine.dispose()

    assert result["scan"]["scanned"] == 2 and waited >= 0.5
    with app.app_context():
        watermark = db.session.get(ScanWatermark, "stok_seviye").last_observation_id
        assert watermark == early_id
        # Nothing is left behind the watermark: a second scan has nothing to do.
        assert run_scan("stok_seviye")["scanned"] == 0


def test_readings_older_than_the_training_window_are_stepped_over_not_alerted(app_ctx):
    # A database adopted from the minibar app holds a year of readings: they are
    # history, not news, and must not come back as alerts dated now.
    from datetime import timedelta

    from tests.pipeline_helpers import unlabelled_series

    now = datetime.now(timezone.utc)
    ingest_observations(unlabelled_series("stok_seviye", 300, end=now, seed=2))
    train_models("stok_seviye")
    old = unlabelled_series("stok_seviye", 50, end=now - timedelta(days=365))
    old[10]["metric_value"] = 1.0e9  # a wild reading a year ago, arriving late
    ingest_observations(old)
    summary = run_scan("stok_seviye")["metric_types"]["stok_seviye"]
    assert (summary["scanned"], summary["older_than_window"]) == (300, 50)
    assert count(MLAlert, MLAlert.metric_value == 1.0e9) == 0
    assert run_scan("stok_seviye")["scanned"] == 0  # stepped over once: the watermark is past them
