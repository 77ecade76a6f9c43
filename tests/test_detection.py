"""Detection: the file model is used; every fallback is forced by a real cause, logged and reported."""
from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest

from tests.pipeline_helpers import fallback_warnings, observations, small_hotel
from utils.extensions import db
from utils.ml.anomaly_detector import AnomalyDetector, ModelUnavailableError
from utils.ml.pipeline.features import build_pipeline, observation_matrix
from utils.ml.pipeline.scoring import robust_zscores
from utils.ml.model_manager import get_model_manager
from utils.ml.model_trainer import train_models
from utils.models import MLModel

METRIC = "stok_seviye"


@pytest.fixture
def trained(app_ctx, caplog):
    """The small demo hotel with one trained, active file model per metric type.

    Without injected anomalies: the detector calibrates each entity's limits on
    its window, and a window full of them widens those limits past even the
    1e7 reading these tests add."""
    caplog.set_level(logging.INFO)
    small_hotel(anomaly_rate=0.0)
    results = {r["metric_type"]: r for r in train_models(METRIC, actor="test")}
    manager = get_model_manager()
    row = db.session.get(MLModel, results[METRIC]["model_id"])
    return {"manager": manager, "row": row, "path": Path(manager.store.locate(row.model_path)),
            "observations": observations(METRIC)}


def with_spike(obs):
    """The observations plus one reading far above anything product 1 ever had, an hour after the last."""
    from datetime import timedelta

    return obs + [{"entity_id": 1, "metric_value": 1.0e7, "timestamp": obs[-1]["timestamp"] + timedelta(hours=1)}]


def fresh_detector(manager):
    # A new process would start with an empty cache; so does this detector.
    manager.clear_cache()
    return AnomalyDetector(db, manager)


def assert_fell_back(caplog, result, expected):
    """``expected``: (from_method, reason) per step, in order; each has a WARNING naming it."""
    assert [r.split(": ")[:2] for r in result.fallback_reasons] == [list(step) for step in expected]
    warnings = fallback_warnings(caplog)
    assert [(w.fields["from_method"], w.fields["reason"]) for w in warnings] == list(expected)
    for warning, (method, reason) in zip(warnings, expected):
        assert method in warning.getMessage() and reason in warning.getMessage()
        assert warning.fields["metric_type"] == METRIC


def test_file_model_is_used_and_says_so(trained, caplog):
    detector = fresh_detector(trained["manager"])
    obs = trained["observations"][:200]
    result = detector.detect_anomalies_with_fallback(METRIC, obs)
    assert result.method == "isolation_forest_file" and result.source == "file"
    assert result.model_id == trained["row"].id and result.fallback_reasons == []
    assert fallback_warnings(caplog) == []
    assert len(result.results) == 200
    first = result.results[0]
    assert first["observation_id"] == obs[0]["id"] and first["entity_id"] == obs[0]["entity_id"]
    # The result is the causal detector's own verdict: these are the metric type's first 200
    # observations, so no stored history precedes them and each is judged on the ones before it.
    model = trained["manager"].load_active("isolation_forest", METRIC).model
    verdict = model.score([o["entity_id"] for o in obs], [o["timestamp"].timestamp() for o in obs],
                          [o["metric_value"] for o in obs])
    assert [r["is_anomaly"] for r in result.results] == list(verdict.is_anomaly)
    assert [r["score"] for r in result.results] == pytest.approx(list(verdict.score))
    assert [r["threshold"] for r in result.results] == pytest.approx(list(verdict.threshold))
    assert result.threshold is None  # thresholds are per entity
    # Same call again: served from the cache.
    assert detector.detect_with_model(METRIC, obs).source == "cache"
    assert result.to_dict()["anomaly_count"] == sum(r["is_anomaly"] for r in result.results)


def test_plain_numbers_are_accepted(trained):
    """Plain numbers: one series without an entity, read now in the given order; each judged on those before it."""
    values = [40.0, 41, 39, 40, 42, 41, 40, 39, 41, 40, 5000]
    result = fresh_detector(trained["manager"]).detect_anomalies_with_fallback(METRIC, values)
    assert result.method == "isolation_forest_file"
    assert [r["is_anomaly"] for r in result.results] == [False] * 10 + [True]
    # The first five have no baseline yet (warming up): never an alert, no expected value.
    assert [r["expected_value"] for r in result.results[:5]] == [None] * 5
    assert "entity_id" not in result.results[0] and "observation_id" not in result.results[0]


def test_deleted_model_file_falls_back_to_z_score(trained, caplog):
    trained["path"].unlink()
    result = fresh_detector(trained["manager"]).detect_anomalies_with_fallback(METRIC, with_spike(trained["observations"]))
    assert result.method == "z_score" and result.model_id is None
    assert_fell_back(caplog, result, [("isolation_forest_file", "file_missing"), ("isolation_forest_db", "no_blob")])
    # The fallback is per entity: the spike is judged against product 1's own readings.
    assert result.results[-1]["is_anomaly"] and result.results[-1]["threshold"] == 5.0


def test_corrupted_model_file_is_never_unpickled_and_falls_back(trained, caplog):
    data = bytearray(trained["path"].read_bytes())
    data[len(data) // 2] ^= 0xFF
    trained["path"].write_bytes(bytes(data))
    result = fresh_detector(trained["manager"]).detect_anomalies_with_fallback(METRIC, trained["observations"])
    assert result.method == "z_score"
    assert_fell_back(caplog, result, [("isolation_forest_file", "checksum_mismatch"),
                                      ("isolation_forest_db", "no_blob")])


def test_missing_file_with_blob_uses_the_database_copy(trained, caplog):
    # A migrated row keeps its BLOB as the fallback: write the same bytes there.
    row = trained["row"]
    db.session.execute(db.update(MLModel).where(MLModel.id == row.id).values(model_data=trained["path"].read_bytes()))
    db.session.commit()
    trained["path"].unlink()
    result = fresh_detector(trained["manager"]).detect_anomalies_with_fallback(METRIC, with_spike(trained["observations"]))
    assert result.method == "isolation_forest_db" and result.model_id == row.id and result.source == "database"
    assert_fell_back(caplog, result, [("isolation_forest_file", "file_missing")])
    assert result.results[-1]["is_anomaly"]

    # Both file and BLOB gone: Z-score.
    caplog.clear()
    db.session.execute(db.update(MLModel).where(MLModel.id == row.id).values(model_data=None))
    db.session.commit()
    result = fresh_detector(trained["manager"]).detect_anomalies_with_fallback(METRIC, trained["observations"])
    assert result.method == "z_score"
    assert_fell_back(caplog, result, [("isolation_forest_file", "file_missing"), ("isolation_forest_db", "no_blob")])


def test_model_with_fewer_features_than_detection_sends_falls_back(trained, caplog):
    """A model pickled by an older feature code: its forest knows one feature, today's transformer sends two."""
    obs = trained["observations"]
    matrix = observation_matrix([o["entity_id"] for o in obs], [o["metric_value"] for o in obs])
    stale = build_pipeline(n_estimators=20, features=("entity_robust_z",)).fit(matrix)
    stale.steps[0][1].features = ("value", "entity_robust_z")  # the transformer of the newer code
    manager = trained["manager"]
    manager.save_model(stale, "isolation_forest", METRIC, actor="test")
    result = fresh_detector(manager).detect_anomalies_with_fallback(METRIC, obs)
    assert result.method == "z_score"
    assert_fell_back(caplog, result, [("isolation_forest_file", "predict_failed"),
                                      ("isolation_forest_db", "no_blob")])
    assert "features" in result.fallback_reasons[0]  # sklearn's own words: X has 2 features, expecting 1


def test_legacy_blob_model_on_raw_values_still_works(app_ctx, caplog):
    """The original system's rows: a bare IsolationForest fitted on the value column, stored as a BLOB."""
    caplog.set_level(logging.INFO)
    rng = np.random.default_rng(3)
    history = rng.normal(50, 5, size=(500, 1))
    legacy = IsolationForest(n_estimators=50, random_state=0, contamination=0.01).fit(history)
    db.session.add(MLModel(model_type="isolation_forest", metric_type=METRIC, model_data=pickle.dumps(legacy),
                           model_path=None, parameters={}, is_active=True))
    db.session.commit()
    values = [50.0, 52.5, 47.0, 400.0, -300.0]
    result = AnomalyDetector(db).detect_anomalies_with_fallback(METRIC, values)
    assert result.method == "isolation_forest_db" and result.source == "database"
    assert_fell_back(caplog, result, [("isolation_forest_file", "no_model_file")])
    expected = legacy.predict(np.asarray(values).reshape(-1, 1)) == -1
    assert [r["is_anomaly"] for r in result.results] == list(expected) == [False, False, False, True, True]


def test_no_model_at_all(app_ctx, caplog):
    caplog.set_level(logging.INFO)
    detector = AnomalyDetector(db)
    with pytest.raises(ModelUnavailableError) as caught:
        detector.detect_with_model(METRIC, [1.0, 2.0])
    assert any("no_active_model" in r for r in caught.value.reasons)
    caplog.clear()
    values = [10.0, 11, 9, 10.5, 9.5, 10.2, 9.8, 10.1, 9.9, 10.3, 100.0]
    result = detector.detect_anomalies_with_fallback(METRIC, values)
    assert result.method == "z_score" and result.model_id is None
    assert_fell_back(caplog, result, [("isolation_forest_file", "no_active_model"),
                                      ("isolation_forest_db", "no_active_model")])
    assert [r["is_anomaly"] for r in result.results] == [False] * 10 + [True]


def test_robust_z_score_is_not_masked_by_the_outliers_it_looks_for():
    values = np.array([10.0] * 20 + [11.0] * 20 + [9.0] * 20 + [1000.0, 2000.0])
    z, median, scale = robust_zscores(values, values)
    assert median == 10.0 and scale == pytest.approx(1.4826)
    assert np.all(np.abs(z[:60]) < 1) and np.all(z[60:] > 600)
    # A classic mean/std Z-score would be dragged by the two outliers.
    classic = (values - values.mean()) / values.std()
    assert classic[60] < 3.5

    # MAD = 0 (most values equal): the mean absolute deviation takes over; no division by zero.
    flat = np.array([5.0] * 30 + [6.0, 50.0])
    z, _median, scale = robust_zscores(flat, flat)
    assert np.isfinite(z).all() and scale > 0 and z[-1] > z[-2] > 0


def test_z_score_uses_the_given_reference(app_ctx):
    detector = AnomalyDetector(db)
    reference = list(np.random.default_rng(0).normal(100, 10, 1000))
    result = detector.detect_with_zscore([100.0, 125.0, 190.0], reference=reference)
    assert result.method == "z_score" and result.model_id is None
    assert [r["is_anomaly"] for r in result.results] == [False, False, True]


def test_bad_values_are_refused_with_the_index(app_ctx):
    detector = AnomalyDetector(db)
    with pytest.raises(ValueError, match=r"values\[1\]"):
        detector.detect_with_zscore([1.0, float("nan")])
    with pytest.raises(ValueError, match=r"values\[0\].metric_value"):
        detector.detect_anomalies_with_fallback(METRIC, [{"entity_id": 1}])
    with pytest.raises(ValueError, match="metric_type"):
        detector.detect_anomalies_with_fallback("Bad Type", [1.0])
