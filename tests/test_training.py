"""Training: per metric type, windowed, gated, honest metrics, saved and activated as the causal detector."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sklearn.ensemble import IsolationForest

from tests.pipeline_helpers import count, small_hotel, unlabelled_series
from utils.extensions import db
from utils.ml.pipeline.alerts import mark_false_positive
from utils.ml.detector.model import TrainedDetector
from utils.ml.model_manager import get_model_manager
from utils.ml.model_trainer import ModelTrainer, train_models
from utils.ml.pipeline.observations import ingest_observations
from utils.ml.pipeline.scan import run_scan
from utils.models import MLAlert, MLMetric, MLModel

DEMO_TYPES = {"stok_seviye", "tuketim_miktar", "dolum_sure"}


def test_trains_one_active_pipeline_per_metric_type_with_labelled_metrics(app_ctx):
    small_hotel()
    results = train_models(actor="test")
    assert {r["metric_type"] for r in results} == DEMO_TYPES
    for r in results:
        assert r["status"] == "trained" and r["skipped"] is None and r["error"] is None
        row = db.session.get(MLModel, r["model_id"])
        assert row.is_active and row.model_type == "isolation_forest" and row.model_path
        evaluation = row.parameters["evaluation"]
        # Labels exist (demo data), so the held-out part is judged: metrics are real numbers...
        assert evaluation["method"] == "time_split" and evaluation["labelled"] > 0
        assert evaluation["tp"] + evaluation["fp"] + evaluation["tn"] + evaluation["fn"] == evaluation["labelled"]
        assert evaluation["labelled"] <= evaluation["holdout_samples"] < r["samples"]
        assert row.accuracy == pytest.approx((evaluation["tp"] + evaluation["tn"]) / evaluation["labelled"])
        assert row.recall == pytest.approx(evaluation["tp"] / (evaluation["tp"] + evaluation["fn"]))
        flagged = evaluation["tp"] + evaluation["fp"]
        assert row.precision == (pytest.approx(evaluation["tp"] / flagged) if flagged else None)
        # ...and the result reports the very same numbers that were stored.
        assert (r["accuracy"], r["precision"], r["recall"]) == (row.accuracy, row.precision, row.recall)
        window = row.parameters["window"]
        assert window["days"] == 60 and window["samples"] == r["samples"]
        assert row.parameters["feature_version"] == 2 and row.parameters["detector"] == "causal_per_entity"
        assert row.parameters["settings"]["contamination"] == 0.02
        assert row.parameters["settings"]["false_alerts_per_entity_day"] == 0.003
        assert row.parameters["labels"]["anomaly"] > 0

    # The saved file is the causal per-entity detector (feature version 2), usable after a reload.
    manager = get_model_manager()
    manager.clear_cache()
    outcome = manager.load_active("isolation_forest", "stok_seviye")
    assert outcome.source == "file" and isinstance(outcome.model, TrainedDetector)
    assert outcome.model.feature_version == 2 and isinstance(outcome.model.forest, IsolationForest)
    assert outcome.model.stats.ids.size == 10  # one state per product


def test_metrics_are_null_without_labels(app_ctx):
    ingest_observations(unlabelled_series("kat_sicaklik", 120))
    [result] = train_models("kat_sicaklik")
    row = db.session.get(MLModel, result["model_id"])
    assert result["status"] == "trained"
    assert (row.accuracy, row.precision, row.recall) == (None, None, None)
    assert row.parameters["evaluation"]["method"] is None
    assert "no labelled" in row.parameters["evaluation"]["reason"]


def test_minimum_data_gate_skips_and_keeps_the_current_model(app_ctx):
    app_ctx.config["ML_MIN_TRAIN_SAMPLES"] = 100
    ingest_observations(unlabelled_series("kat_sicaklik", 120))
    [first] = train_models("kat_sicaklik")
    assert first["status"] == "trained"

    app_ctx.config["ML_MIN_TRAIN_SAMPLES"] = 500
    [second] = train_models("kat_sicaklik")
    assert second["status"] == "skipped" and second["model_id"] is None
    assert "120 observations" in second["skipped"] and "ML_MIN_TRAIN_SAMPLES=500" in second["skipped"]
    assert count(MLModel) == 1
    assert db.session.get(MLModel, first["model_id"]).is_active


def test_window_excludes_older_observations(app_ctx):
    now = datetime.now(timezone.utc)
    # 200 hourly rows (8 days) in the window: each of the 5 entities has more than the
    # detector's warm-up (its first 10 rows only build its baseline) and 50 usable rows remain.
    ingest_observations(unlabelled_series("kat_sicaklik", 200, end=now))
    ingest_observations(unlabelled_series("kat_sicaklik", 70, end=now - timedelta(days=30), seed=2))
    app_ctx.config["ML_TRAIN_WINDOW_DAYS"] = 10
    [result] = train_models("kat_sicaklik")
    assert result["status"] == "trained", result
    assert result["samples"] == 200
    row = db.session.get(MLModel, result["model_id"])
    assert row.parameters["window"]["days"] == 10
    first = datetime.fromisoformat(row.parameters["window"]["first_observation"])
    assert first >= now - timedelta(days=10)


def test_internal_metric_types_are_never_trained(app_ctx):
    small_hotel()
    train_models()
    run_scan()  # writes model_load_time rows into ml_metrics
    assert count(MLMetric, MLMetric.metric_type == "model_load_time") == 3
    results = train_models()
    assert {r["metric_type"] for r in results} == DEMO_TYPES
    assert count(MLModel, MLModel.metric_type == "model_load_time") == 0
    with pytest.raises(ValueError, match="internal"):
        train_models("model_load_time")
    with pytest.raises(ValueError, match="metric_type"):
        train_models("Not-Valid")


def test_false_positives_become_negative_labels_for_the_next_training(app_ctx):
    # Unlabelled data: the first model has no metrics at all.
    ingest_observations(unlabelled_series("kat_sicaklik", 400, entities=4,
                                          end=datetime.now(timezone.utc) - timedelta(hours=1)))
    [first] = train_models("kat_sicaklik")
    ingest_observations([  # after training, a few very high readings, so the scan raises alerts
        {"metric_type": "kat_sicaklik", "entity_id": 0, "metric_value": 95.0 + i,
         "timestamp": (datetime.now(timezone.utc) - timedelta(minutes=30 - i)).isoformat()} for i in range(5)
    ])
    assert db.session.get(MLModel, first["model_id"]).accuracy is None
    run_scan("kat_sicaklik")
    alerts = db.session.execute(db.select(MLAlert).order_by(MLAlert.id)).scalars().all()
    assert alerts, "the scan raised no alert to give feedback on"
    for alert in alerts:
        mark_false_positive(alert.id)
    marked = count(MLAlert, MLAlert.is_false_positive.is_(True))
    assert marked == len(alerts)

    [second] = train_models("kat_sicaklik")
    row = db.session.get(MLModel, second["model_id"])
    evaluation = row.parameters["evaluation"]
    assert row.parameters["labels"] == {"anomaly": 0, "normal": marked, "false_positive_alerts": marked}
    # Operator feedback now gives the held-out part negative labels: accuracy exists,
    # recall cannot (no positive label), precision only if the model flagged one of them.
    assert evaluation["labelled"] > 0 and evaluation["tp"] == evaluation["fn"] == 0
    assert row.accuracy == pytest.approx(evaluation["tn"] / evaluation["labelled"])
    assert row.recall is None
    assert row.precision == (0.0 if evaluation["fp"] else None)


def test_one_failing_metric_type_does_not_stop_the_others(app_ctx):
    small_hotel()
    trainer = ModelTrainer(db, actor="test")
    original = trainer.load

    def load(metric_type, since, until=None):
        if metric_type == "dolum_sure":
            # A real database error: a query against a table that does not exist.
            db.session.execute(db.text("SELECT * FROM no_such_table"))
        return original(metric_type, since, until)

    trainer.load = load
    results = {r["metric_type"]: r for r in trainer.train()}
    assert results["dolum_sure"]["status"] == "failed" and "no_such_table" in results["dolum_sure"]["error"]
    assert results["stok_seviye"]["status"] == results["tuketim_miktar"]["status"] == "trained"
