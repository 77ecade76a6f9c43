"""Every activation goes through one function: the dashboard, the CLI, the API and training's save.

Whoever asks, the audit row names the version it replaced (``from_model_id``),
and activating the version that is already active changes nothing and writes
no audit row.  Both databases, real requests, real commands.
"""
from __future__ import annotations

import pytest
from sqlalchemy import select

from tests.dashboard_helpers import sign_in
from tests.ml_helpers import make_model
from tests.pipeline_helpers import small_hotel
from utils.extensions import db
from utils.ml.jobs import run_job_now
from utils.ml.model_manager import get_model_manager
from utils.models import MLModel, ModelActivation

T, M = "isolation_forest", "stok_seviye"


def _audit(app) -> list[tuple]:
    with app.app_context():
        rows = [(a.actor, a.from_model_id, a.to_model_id, a.reason)
                for a in db.session.execute(select(ModelActivation).order_by(ModelActivation.id)).scalars()]
        db.session.remove()
    return rows


def _active(app) -> int:
    with app.app_context():
        value = db.session.execute(select(MLModel.id).where(MLModel.metric_type == M, MLModel.is_active.is_(True))
                                   ).scalar_one()
        db.session.remove()
    return value


@pytest.fixture
def versions(app) -> tuple[int, int]:
    """Two saved versions; the second (newer) is active.  Their saves are audited too."""
    with app.app_context():
        manager = get_model_manager()
        old, new = (manager.save_model(make_model(seed), T, M).id for seed in (1, 2))
        db.session.remove()
    assert _audit(app) == [("trainer", None, old, "new version saved"), ("trainer", old, new, "new version saved")]
    return old, new


def _via_dashboard(app, client, model_id: int) -> str:
    client = app.test_client()  # a browser of its own: signs in afresh
    csrf = sign_in(client)
    response = client.post(f"/ml/dashboard/models/{model_id}/activate", data={"csrf_token": csrf, "reason": "r"})
    assert response.status_code == 302
    return client.get("/ml/dashboard").get_data(as_text=True)


def _via_cli(app, client, model_id: int) -> str:
    result = app.test_cli_runner().invoke(args=["ml", "activate", str(model_id), "--reason", "r"])
    assert result.exit_code == 0, result.output
    return result.output


def _via_api(app, client, model_id: int) -> str:
    response = client.post(f"/api/ml/models/{model_id}/activate", json={"reason": "r"},
                           headers={"Authorization": f"Bearer {app.config['ML_ADMIN_TOKEN']}"})
    assert response.status_code == 200, response.get_json()
    return str(response.get_json())


ENTRY_POINTS = {"dashboard": (_via_dashboard, "dashboard"), "cli": (_via_cli, "cli"), "api": (_via_api, "api")}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_rollback_is_audited_with_the_version_it_replaced(app, client, versions, entry):
    old, new = versions
    activate, actor = ENTRY_POINTS[entry]
    activate(app, client, old)
    assert _active(app) == old
    assert _audit(app)[-1] == (actor, new, old, "r")
    activate(app, client, new)  # and forward again
    assert _active(app) == new
    assert _audit(app)[-1] == (actor, old, new, "r")


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_activating_the_active_version_is_a_no_op_everywhere(app, client, versions, entry):
    _old, new = versions
    activate, _actor = ENTRY_POINTS[entry]
    before = _audit(app)
    said = activate(app, client, new)
    assert _audit(app) == before and _active(app) == new
    assert ("already" in said) if entry != "api" else ("'changed': False" in said)


def test_training_audits_each_new_version_with_the_one_it_replaced(app_ctx):
    small_hotel()
    first = run_job_now("train_models", actor="alice", trigger="api")["result"]
    # The same data again: no new version, nothing activated, nothing audited.
    second = run_job_now("train_models", actor="bob", trigger="api")["result"]
    assert [r["status"] for r in second] == ["unchanged"] * 3
    assert [r["model_id"] for r in second] == [r["model_id"] for r in first]
    audit = _audit(app_ctx)
    assert sorted(row[:3] for row in audit) == sorted(("alice", None, r["model_id"]) for r in first)
    assert all(row[3].startswith("gate: first model of its type") for row in audit)
