"""The promotion API and CLI: compare, pins (set by a manual activation, removed by unpin), the audit, drift.

Real database, real model store, the real app's routes and commands.
"""
from __future__ import annotations

from datetime import timedelta

from tests.pipeline_helpers import small_hotel
from utils.extensions import db
from utils.ml.model_trainer import ModelTrainer
from utils.time import utcnow

METRIC = "dolum_sure"


def _champion_and_challenger(app) -> tuple[int, int]:
    with app.app_context():
        now = utcnow()
        small_hotel(end=now - timedelta(days=1), days=29)
        [first] = ModelTrainer(db, actor="test").train(METRIC)
        small_hotel(seed=8, end=now, days=1)
        [second] = ModelTrainer(db, actor="test", promote="never").train(METRIC)
        db.session.remove()
    return first["model_id"], second["model_id"]


def test_compare_shows_both_versions_side_by_side(app, client, auth_headers):
    champion, challenger = _champion_and_challenger(app)
    response = client.get(f"/api/ml/models/compare?metric_type={METRIC}&days=7", headers=auth_headers)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert (body["champion_id"], body["challenger_id"]) == (champion, challenger)
    assert body["last_decision"]["decision"] == "kept" and body["problem"] is None
    gate = body["gate"]
    assert gate["samples"] == body["observations"] > 200
    for side in ("champion", "challenger"):
        assert sum(gate[side]["histogram"]) == gate["samples"]
        assert 0 <= gate[side]["f1"] <= 1
    assert len(gate["histogram_edges"]) == 21 and 0 <= gate["agreement"] <= 1
    assert body["alerts"]["champion"] == {"alerts": 0, "per_observation": 0.0}
    assert body["incidents"] is None or "incidents" in body["incidents"]
    assert client.get(f"/api/ml/models/compare?metric_type={METRIC}&challenger_id=999999",
                      headers=auth_headers).status_code == 404
    bad = client.get("/api/ml/models/compare?metric_type=dolum_sure&days=0", headers=auth_headers)
    assert bad.status_code == 400 and bad.get_json()["errors"][0]["field"] == "days"


def test_manual_activation_pins_until_unpinned_through_the_api(app, client, auth_headers):
    champion, challenger = _champion_and_challenger(app)
    done = client.post(f"/api/ml/models/{challenger}/activate", headers=auth_headers,
                       json={"actor": "alice", "reason": "try the new one"})
    assert done.status_code == 200 and done.get_json()["pinned"]["model_id"] == challenger
    [pin] = client.get("/api/ml/pins", headers=auth_headers).get_json()["pins"]
    assert (pin["metric_type"], pin["actor"], pin["reason"]) == (METRIC, "api:alice", "try the new one")
    gone = client.post("/api/ml/pins/unpin", headers=auth_headers,
                       json={"metric_type": METRIC, "actor": "bob", "reason": "fine"})
    assert gone.get_json()["unpinned"] is True
    assert client.get("/api/ml/pins", headers=auth_headers).get_json()["count"] == 0
    again = client.post("/api/ml/pins/unpin", headers=auth_headers, json={"metric_type": METRIC})
    assert again.get_json()["unpinned"] is False
    audit = client.get(f"/api/ml/gate-decisions?metric_type={METRIC}", headers=auth_headers).get_json()
    assert [d["decision"] for d in audit["decisions"]] == ["unpinned", "pinned", "kept", "promoted"]
    assert audit["decisions"][0]["actor"] == "api:bob" and audit["decisions"][2]["metrics"]["samples"] > 0


def test_train_api_takes_promote_and_refuses_other_words(app, client, auth_headers):
    with app.app_context():
        small_hotel()
    bad = client.post("/api/ml/train", headers=auth_headers, json={"promote": "sometimes"})
    assert bad.status_code == 400 and bad.get_json()["errors"][0]["field"] == "promote"
    done = client.post("/api/ml/train", headers=auth_headers, json={"metric_type": METRIC, "promote": "never"})
    assert done.status_code == 200, done.get_json()
    [result] = done.get_json()["result"]
    assert result["promotion"]["decision"] == "kept"


def test_cli_train_promote_pins_and_drift(app, runner):
    champion, challenger = _champion_and_challenger(app)
    result = runner.invoke(args=["ml", "pins"])
    assert result.exit_code == 0 and "No pinned" in result.output
    result = runner.invoke(args=["ml", "activate", str(challenger), "--reason", "by hand"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(args=["ml", "pins"])
    assert METRIC in result.output and "by hand" in result.output
    result = runner.invoke(args=["ml", "unpin", "--metric-type", METRIC, "--reason", "done"])
    assert result.exit_code == 0 and "unpinned" in result.output
    result = runner.invoke(args=["ml", "compare", "--metric-type", METRIC, "--challenger-id", str(champion)])
    assert result.exit_code == 0, result.output
    assert f"champion {challenger}" in result.output and "agreement" in result.output
    result = runner.invoke(args=["ml", "drift"])
    assert result.exit_code == 0, result.output
    assert METRIC in result.output
    result = runner.invoke(args=["ml", "train", "--promote", "maybe"])
    assert result.exit_code == 2 and "maybe" in result.output
