"""Gate decisions and start-up checks of the notification wiring, against a real HTTP receiver.

Training promotes the first model of each type: one signed ``gate_decision``
message per decision, delivered by the ``notify_deliver`` job through the job
runner, never twice; a receiver that was down gets each exactly once after
the backoff; a bad ``ML_NOTIFY_*`` value is one ``config error:`` line.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.notify_helpers import SECRET, later, make_notify_app, receiver, rows, webhook_settings  # noqa: F401
from tests.pipeline_helpers import small_hotel
from tests.procutil import ROOT
from utils.extensions import db
from utils.ml import notify
from utils.ml.jobs import run_job_now


def _gate_messages(receiver) -> list[dict]:
    return [m for m in receiver.received() if json.loads(m["body"])["kind"] == "gate_decision"]


def test_each_gate_decision_reaches_the_webhook_once_signed(make_notify_app, receiver):
    app = make_notify_app(**webhook_settings(receiver))
    with app.app_context():
        small_hotel()
        trained = run_job_now("train_models", "alice", trigger="api")["result"]
        assert {r["promotion"]["decision"] for r in trained} == {"promoted"}
        delivered = run_job_now("notify_deliver", "alice", trigger="api")["result"]
        assert delivered["delivered"] == 3
        assert run_job_now("notify_deliver", "alice", trigger="api")["result"]["delivered"] == 0
        # The same data again: no new version, no decision, no message.
        again = run_job_now("train_models", "alice", trigger="api")["result"]
        assert {r["status"] for r in again} == {"unchanged"}
        assert notify.deliver_pending().delivered == 0
        db.session.remove()
    got = _gate_messages(receiver)
    assert len(got) == 3
    by_type = {json.loads(m["body"])["payload"]["metric_type"]: m for m in got}
    assert set(by_type) == {r["metric_type"] for r in trained}
    for result in trained:
        message = by_type[result["metric_type"]]
        body = json.loads(message["body"])
        assert notify.verify_signature(SECRET, message["headers"]["X-ML-Signature"], message["body"].encode())
        assert message["headers"]["Idempotency-Key"] == \
            f"gate_decision:isolation_forest:{result['metric_type']}:{result['model_id']}"
        payload = body["payload"]
        assert payload["decision"] == "promoted" and payload["challenger_id"] == result["model_id"]
        assert payload["reason"].startswith("first model of its type")
        assert payload["metrics"]["samples"] > 0 and "histogram" not in payload["metrics"]["challenger"]


def test_a_receiver_down_during_training_gets_each_decision_once_after_the_backoff(make_notify_app, receiver):
    app = make_notify_app(**webhook_settings(receiver))
    receiver.stop()
    with app.app_context():
        small_hotel()
        run_job_now("train_models", "alice", trigger="api")
        assert notify.deliver_pending().retried == 3
    receiver.start()
    assert notify.deliver_pending(app, now=later(11)).delivered == 3
    assert notify.deliver_pending(app, now=later(3600)).delivered == 0
    assert len(_gate_messages(receiver)) == 3
    assert {(r["status"], r["attempts"]) for r in rows(app)} == {("delivered", 2)}


def test_notify_test_is_a_command_of_every_app(runner):
    result = runner.invoke(args=["ml", "notify-test"])
    assert result.exit_code == 1 and "no notification channel is configured" in result.output


def test_a_bad_notification_setting_is_one_config_error_line():
    env = {k: v for k, v in os.environ.items() if not k.startswith("ML_")}
    env.update(ML_NOTIFY_WEBHOOK_URL="https://hooks.example/ml", ML_NOTIFY_WEBHOOK_SECRET="tiny-secret")
    done = subprocess.run([sys.executable, "-m", "utils.settings"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr == ("config error: ML_NOTIFY_WEBHOOK_SECRET=<hidden, 11 characters>: "
                           "must be at least 16 characters\n")
    env.update(ML_NOTIFY_WEBHOOK_SECRET="0123456789abcdef0", ML_NOTIFY_LEASE_SECONDS="5")
    done = subprocess.run([sys.executable, "-m", "utils.settings"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.startswith("config error: ML_NOTIFY_LEASE_SECONDS='5': must be more")
    assert done.stderr.count("\n") == 1
