"""The promotion gate on generated data where the right answer is known.

The hotel is clean (no injected anomalies) except for one labelled spike per
attendant in the gate's week: a refill taking 25 times the attendant's usual
time (forgotten for hours), which the per-entity causal detector must see.
The champion is yesterday's model, the good challenger today's (the same
hotel, one more day): it is promoted.  A broken one is rejected and the
champion stays: one calibrated with an absurd alert budget (0.9 false alerts
per attendant-day: it floods the week with alerts), or one fitted on garbage
(every value scrambled by a factor e^N(0, 2), so each attendant's learnt
scale is far too wide and a forgotten refill looks ordinary).
``--promote never|always`` and pins do what they say; the same data twice
makes no new version.  Every decision is in ``ml_gate_decisions`` with its
numbers.  Real database, real model store.
"""
from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import numpy as np
import pytest
from sqlalchemy import select

from tests.pipeline_helpers import count, small_hotel, unlabelled_series
from utils.extensions import db
from utils.ml.model_manager import get_model_manager
from utils.ml.model_trainer import ModelTrainer
from utils.ml.pipeline.features import build_pipeline
from utils.ml.pipeline.observations import ingest_observations
from utils.ml.pipeline.scoring import score_window
from utils.ml.promotion.decide import decide
from utils.ml.promotion.models import GateDecision
from utils.ml.promotion.pins import unpin
from utils.ml.store import catalog
from utils.models import MLMetric, MLModel, ModelActivation
from utils.time import as_utc, utcnow

METRIC = "dolum_sure"
RATE = 0.04
ATTENDANTS = 16  # one spike each: one stray false alert moves F1 by less than ML_GATE_MAX_F1_DROP
SPIKE = 25.0  # x the attendant's median refill time
ABSURD_BUDGET = 0.9  # false alerts per entity-day (the default is 0.002)


def _train(**options) -> dict:
    [result] = ModelTrainer(db, actor="test", **options).train(METRIC)
    return result


def _active() -> int:
    value = db.session.execute(select(MLModel.id).where(MLModel.metric_type == METRIC,
                                                        MLModel.is_active.is_(True))).scalar_one()
    db.session.rollback()
    return value


def _decisions(metric_type: str = METRIC) -> list[GateDecision]:
    rows = list(db.session.execute(select(GateDecision).where(GateDecision.metric_type == metric_type)
                                   .order_by(GateDecision.id)).scalars())
    db.session.rollback()
    return rows


def _spike_the_week_before(end) -> int:
    """One labelled spike per attendant at a random observation of the 7 days before ``end``; their number."""
    rows = list(db.session.execute(select(MLMetric).where(MLMetric.metric_type == METRIC)).scalars())
    rng = np.random.default_rng(3)
    spiked = 0
    for entity in sorted({row.entity_id for row in rows}):
        mine = [row for row in rows if row.entity_id == entity]
        week = [row for row in mine if end - timedelta(days=7) < as_utc(row.timestamp) <= end]
        chosen = week[int(rng.integers(len(week)))]
        chosen.metric_value = round(float(np.median([row.metric_value for row in mine])) * SPIKE, 1)
        chosen.extra_data = {"label": "anomaly", "anomaly_kind": "global", "source": "test"}
        spiked += 1
    db.session.commit()
    return spiked


def _hotel_then_more_days() -> tuple[int, list]:
    """Yesterday's champion: trained on a clean hotel up to a day before its newest observation.

    The gate's week holds one labelled spike per attendant.  Returns the
    champion's id and the ends of two more days that later steps may add.
    """
    now = utcnow()
    # Ends at a Monday midnight 2-9 days ago: the same generated week whatever the clock says.
    end = (now - timedelta(days=2)).replace(hour=0, minute=0, second=0, microsecond=0)
    end -= timedelta(days=end.weekday())
    small_hotel(end=end, days=30, attendants=ATTENDANTS, anomaly_rate=0.0)
    assert _spike_the_week_before(end) == ATTENDANTS
    first = ModelTrainer(db, actor="test").train_one(METRIC, now=end - timedelta(days=1))
    assert first["promotion"]["decision"] == "promoted"
    return first["model_id"], [now - timedelta(days=1), now]


class GarbageData(ModelTrainer):
    """A broken challenger: fitted on the window with every value scrambled by a factor e^N(0, 2)."""

    def _fit(self, data, upto, now):
        rng = np.random.default_rng(0)
        return super()._fit(replace(data, values=data.values * np.exp(rng.normal(0, 2, len(data)))), upto, now)


def test_the_first_model_is_promoted_and_the_same_data_makes_no_new_version(app_ctx):
    small_hotel()
    first = _train()
    assert first["promotion"]["decision"] == "promoted"
    assert first["promotion"]["reason"].startswith("first model of its type")
    assert _active() == first["model_id"]
    again = _train()
    assert again["status"] == "unchanged" and again["model_id"] == first["model_id"]
    assert count(MLModel) == 1 and len(_decisions()) == 1
    # Other settings are another training.
    other = _train(n_estimators=50)
    assert other["status"] == "trained" and other["model_id"] != first["model_id"]


def test_a_good_challenger_is_promoted_on_labelled_data(app_ctx):
    champion, _ = _hotel_then_more_days()
    result = _train()
    decision = _decisions()[-1]
    assert result["promotion"]["decision"] == "promoted", decision.reason
    numbers = decision.metrics
    assert numbers["method"] == "labels" and numbers["labelled"] >= 20
    assert numbers["labelled_anomalies"] == ATTENDANTS
    for side in ("champion", "challenger"):
        # Both see most of the spikes: the comparison is between two working detectors.
        assert 0.8 <= numbers[side]["f1"] <= 1 and numbers[side]["precision"] is not None
    assert numbers["challenger"]["f1"] >= numbers["champion"]["f1"] - 0.05
    assert decision.champion_id == champion and decision.challenger_id == result["model_id"]
    assert _active() == result["model_id"]
    audit = db.session.execute(select(ModelActivation).order_by(ModelActivation.id.desc()).limit(1)).scalar_one()
    assert (audit.from_model_id, audit.to_model_id) == (champion, result["model_id"])
    assert audit.reason.startswith("gate: gate passed (labels)")


@pytest.mark.parametrize("broken", ["absurd_alert_budget", "garbage_data"])
def test_a_broken_challenger_is_rejected_and_the_champion_stays(app_ctx, broken):
    champion, _ = _hotel_then_more_days()
    if broken == "absurd_alert_budget":  # floods the week with alerts
        result = _train(alert_budget=ABSURD_BUDGET)
    else:  # limits so wide that a forgotten refill looks ordinary
        [result] = GarbageData(db, actor="test").train(METRIC)
    decision = _decisions()[-1]
    assert result["promotion"]["decision"] == "rejected", decision.metrics
    assert decision.decision == "rejected" and "F1" in decision.reason
    mine, theirs = decision.metrics["challenger"], decision.metrics["champion"]
    assert mine["f1"] < theirs["f1"] - 0.2
    if broken == "absurd_alert_budget":
        assert mine["fp"] >= ATTENDANTS > theirs["fp"]  # as many false alerts as there are spikes, or more
    else:
        assert mine["tp"] < theirs["tp"]
    assert _active() == champion
    # The rejected version is kept (it can still be compared or activated by hand).
    assert db.session.get(MLModel, result["model_id"]).is_active is False


def _unlabelled(n: int, *, end, seed: int, shift: float = 0.0) -> None:
    items = unlabelled_series("kat_sicaklik", n, end=end, seed=seed)
    for item in items:
        item["metric_value"] += shift
    ingest_observations(items)


def test_without_labels_rates_shift_and_agreement_decide(app_ctx):
    now = utcnow()
    _unlabelled(600, end=now - timedelta(days=2), seed=1)
    [first] = ModelTrainer(db, actor="test").train("kat_sicaklik")
    _unlabelled(24, end=now - timedelta(days=1), seed=2)
    [good] = ModelTrainer(db, actor="test").train("kat_sicaklik")
    decision = _decisions("kat_sicaklik")[-1]
    assert good["promotion"]["decision"] == "promoted", decision.reason
    assert decision.metrics["method"] == "rates" and decision.metrics["labelled"] == 0
    assert {"agreement", "score_shift_ks", "flagged_both", "flagged_either"} <= set(decision.metrics)

    _unlabelled(24, end=now, seed=3)
    # Calibrated to 0.9 false alerts per entity-day: far beyond the service's budget.
    [bad] = ModelTrainer(db, actor="test", alert_budget=ABSURD_BUDGET).train("kat_sicaklik")
    decision = _decisions("kat_sicaklik")[-1]
    assert bad["promotion"]["decision"] == "rejected", decision.reason
    assert "alert rate" in decision.reason and "above" in decision.reason
    active = db.session.execute(select(MLModel.id).where(MLModel.metric_type == "kat_sicaklik",
                                                         MLModel.is_active.is_(True))).scalar_one()
    assert active == good["model_id"] != first["model_id"]


def test_promote_never_keeps_and_always_activates_a_bad_one(app_ctx):
    champion, _ = _hotel_then_more_days()
    kept = _train(promote="never")
    assert kept["promotion"]["decision"] == "kept" and _active() == champion
    forced = _train(promote="always", alert_budget=ABSURD_BUDGET)
    assert forced["promotion"]["decision"] == "promoted" and _active() == forced["model_id"]
    assert "--promote always; gate failed" in forced["promotion"]["reason"]


def test_a_rollback_pins_the_type_until_unpinned(app_ctx):
    champion, later = _hotel_then_more_days()
    promoted = _train(promote="always")
    assert _active() == promoted["model_id"]
    # Roll back by hand: pinned, with who and why.
    result = catalog.activate(get_model_manager(), champion, actor="alice", reason="v2 pages at night")
    assert result["pinned"]["actor"] == "alice" and _active() == champion
    small_hotel(seed=9, end=later[0], days=1, anomaly_rate=RATE)
    held = _train()
    assert held["promotion"]["decision"] == "held" and _active() == champion
    assert "pinned to model" in held["promotion"]["reason"] and "alice" in held["promotion"]["reason"]
    assert unpin(db.session, "isolation_forest", METRIC, "bob", "night pages fixed")
    assert [d.decision for d in _decisions()][-3:] == ["pinned", "held", "unpinned"]
    small_hotel(seed=10, end=later[1], days=1, anomaly_rate=RATE)
    app_ctx.config["ML_GATE_MAX_F1_DROP"] = 1.0  # any challenger passes: only a pin could stop it now
    after = _train()
    assert after["promotion"]["decision"] == "promoted" and _active() == after["model_id"]


def test_a_challenger_whose_file_fails_verification_is_rejected_and_the_champion_stays(app_ctx, models_dir):
    champion, _ = _hotel_then_more_days()
    kept = _train(promote="never")
    row = db.session.get(MLModel, kept["model_id"])
    path = models_dir / row.model_path
    db.session.rollback()
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")  # same size, other bytes: the checksum fails
    model = build_pipeline().fit(np.array([[1.0, float(v)] for v in range(60)]))
    ids, epoch, values = np.ones(40), 1.7e9 + 3600.0 * np.arange(40), np.full(40, 3.0)
    result = decide(get_model_manager(), model_type="isolation_forest", metric_type=METRIC,
                    challenger_id=kept["model_id"], challenger=model,
                    score=lambda candidate: score_window(candidate, ids, epoch, values),
                    labels=np.full(40, -1, dtype=np.int8), mode="always", actor="test")
    assert result["decision"] == "rejected" and result["reason"].startswith("activation refused")
    assert _active() == champion and _decisions()[-1].decision == "rejected"
