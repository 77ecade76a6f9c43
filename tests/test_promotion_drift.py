"""Drift on generated data: a real shift is measured, stored, and triggers ONE retraining and one notification.

The champion is trained on a stable series; then recent observations arrive
shifted by four standard deviations (or not at all).  The drift check runs
through the job runner, the retraining it triggers too (trigger ``drift``),
and the ``drift`` notification reaches a real HTTP receiver, signed.
Real database, real model store, real receiver.
"""
from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import pytest
from sqlalchemy import select

from tests.notify_helpers import SECRET, make_notify_app, receiver, webhook_settings  # noqa: F401 - fixtures
from tests.pipeline_helpers import unlabelled_series
from tests.promutil import matching, parse, value
from utils.extensions import db
from utils.ml.jobs import run_job_now
from utils.ml.model_trainer import ModelTrainer
from utils.ml.notify import deliver_pending, verify_signature
from utils.ml.pipeline.observations import ingest_observations
from utils.ml.promotion.drift import ks, psi
from utils.ml.promotion.models import DriftReport
from utils.models import JobRun
from utils.time import utcnow

METRIC = "kat_sicaklik"


def test_psi_and_ks_know_a_shift_from_noise():
    rng = np.random.default_rng(0)
    reference = rng.normal(0, 1, 5000)
    same, shifted = rng.normal(0, 1, 500), rng.normal(1.5, 1, 500)
    assert psi(reference, same) < 0.05 and ks(reference, same) < 0.08
    assert psi(reference, shifted) > 1.0 and ks(reference, shifted) > 0.5
    # Constant or empty samples never divide by zero.
    assert psi(np.zeros(10), np.ones(10)) > 0 and psi(np.zeros(0), np.ones(3)) == 0.0


def test_the_causal_detectors_drift_features_see_a_lasting_shift_its_deviation_forgets():
    from utils.ml.detector import model as detector

    rng = np.random.default_rng(0)
    n = 600
    entity, epoch = np.arange(n) % 5, 1.7e9 + np.arange(n) * 3600.0
    values = rng.normal(20 + 10 * entity, 2)
    model = detector.train(entity, epoch, values)
    recent_epoch = epoch[-1] + 3600.0 * np.arange(1, 121)
    recent_entity = np.arange(120) % 5
    shifted = rng.normal(20 + 10 * recent_entity, 2) + 8.0
    names, features = model.drift_features(recent_entity, recent_epoch, shifted, history=(entity, epoch, values))
    assert names == ["deviation", "level"] and features.shape == (120, 2)
    deviation, level = features[:, 0], features[:, 1]
    # The baseline follows a lasting shift within a few observations; the trained level does not.
    assert np.median(np.abs(deviation[-50:])) < 1.5 and np.median(level[-50:]) > 2.5
    # Without history the first observations of each entity are warming up: no deviation yet.
    _, cold = model.drift_features(recent_entity, recent_epoch, shifted)
    assert np.isnan(cold[:5, 0]).all() and np.isfinite(cold[:, 1]).all()
    # Read-only: scoring the same batch gives the same scores before and after.
    before = model.score(recent_entity, recent_epoch, shifted, history=(entity, epoch, values)).score
    model.drift_features(recent_entity, recent_epoch, shifted, history=(entity, epoch, values))
    after = model.score(recent_entity, recent_epoch, shifted, history=(entity, epoch, values)).score
    assert np.array_equal(before, after)


def _series(shift: float) -> None:
    now = utcnow()
    ingest_observations(unlabelled_series(METRIC, 600, end=now - timedelta(days=3), seed=1))
    [champion] = ModelTrainer(db, actor="test").train(METRIC)
    assert champion["promotion"]["decision"] == "promoted"
    recent = unlabelled_series(METRIC, 72, end=now, seed=2)
    for item in recent:
        item["metric_value"] += shift
    ingest_observations(recent)


def _runs(trigger: str) -> list[JobRun]:
    rows = [r for r in db.session.execute(select(JobRun).where(JobRun.job_name == "train_models")).scalars()
            if r.details.get("trigger") == trigger]
    db.session.rollback()
    return rows


def _reports() -> list[DriftReport]:
    rows = list(db.session.execute(select(DriftReport).order_by(DriftReport.id)).scalars())
    db.session.rollback()
    return rows


def test_no_shift_no_drift_no_retraining(app_ctx):
    _series(shift=0.0)
    result = run_job_now("drift_check", "test", trigger="api")["result"]["metric_types"][METRIC]
    assert result["drifted"] is False and result["triggered"] is False
    [report] = _reports()
    assert report.psi < 0.25 and report.ks < 0.3 and set(report.features) == {"deviation", "level"}
    assert report.recent_samples >= 72 and report.reference_samples == 600
    assert _runs("drift") == []


def test_a_real_shift_triggers_one_retraining_and_one_notification(make_notify_app, receiver):
    app = make_notify_app(**webhook_settings(receiver))
    with app.app_context():
        _series(shift=8.0)  # four standard deviations of every entity
        first = run_job_now("drift_check", "test", trigger="api")["result"]["metric_types"][METRIC]
        assert first["drifted"] and first["triggered"], first
        assert first["psi"] > 0.25
        [run] = _runs("drift")
        assert run.id == first["job_run_id"] and run.details["actor"] == "drift"
        assert run.details["params"] == {"metric_type": METRIC}
        # The shift persists: measured again, but the episode already retrained once.
        second = run_job_now("drift_check", "test", trigger="api")["result"]["metric_types"][METRIC]
        assert second["drifted"] and not second["triggered"]
        assert "already triggered" in second["note"]
        assert len(_runs("drift")) == 1
        reports = _reports()
        assert [r.triggered for r in reports] == [True, False] and reports[0].job_run_id == run.id

        deliver_pending()
    # On /metrics: the latest report of each active type, bounded labels.
    response = app.test_client().get("/metrics")
    assert response.status_code == 200
    _, samples = parse(response.get_data(as_text=True))
    labels = {"model_type": "isolation_forest", "metric_type": METRIC}
    assert value(samples, "ml_drift_psi", **labels) == pytest.approx(reports[-1].psi)
    assert value(samples, "ml_drift_detected", **labels) == 1.0
    assert [dict(key)["metric_type"] for key in matching(samples, "ml_drift_ks")] == [METRIC]
    drift = [m for m in receiver.received() if json.loads(m["body"])["kind"] == "drift"]
    assert len(drift) == 1
    body = json.loads(drift[0]["body"])
    assert body["idempotency_key"] == f"drift:{METRIC}:{reports[0].id}"
    assert body["payload"]["job_run_id"] == run.id and body["payload"]["psi"] > 0.25
    assert verify_signature(SECRET, drift[0]["headers"]["X-ML-Signature"], drift[0]["body"].encode())
