"""Webhook notifications against a real HTTP receiver (a subprocess), on PostgreSQL and SQLite.

The receiver records what it got before answering; faults are real: the
receiver stopped (connection refused), answering 4xx/5xx, answering slowly
while the sender is SIGKILLed.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import signal
import sys
import threading
import time
from datetime import timedelta

import pytest

from tests import procutil
from tests.notify_helpers import SECRET, later, make_notify_app, receiver, rows, webhook_settings  # noqa: F401
from tests.ml_helpers import sql
from utils.extensions import db
from utils.ml import notify
from utils.ml.jobs import run_scheduled_tick, tick_for
from utils.ml.notify.webhook import verify_signature
from utils.time import utcnow


def _hmac(secret: str, header: str, body: str) -> str:
    timestamp = dict(part.split("=", 1) for part in header.split(","))["t"]
    return hmac.new(secret.encode(), f"{timestamp}.{body}".encode(), hashlib.sha256).hexdigest()


def test_a_delivered_message_is_signed_and_carries_its_content_and_key(make_notify_app, receiver):
    app = make_notify_app(**webhook_settings(receiver))
    payload = {"metric_type": "stok_seviye", "entity_id": 7, "metric_value": 91.5, "score": 0.73}
    with app.app_context():
        [row_id] = notify.enqueue("incident", "incident:41", payload, "critical", subject="stock anomaly in room 7")
    report = notify.deliver_pending(app)

    assert report.as_dict() == {"delivered": 1, "retried": 0, "dead": 0, "digests": 0, "held": 0}
    [got] = receiver.received()
    headers, body = got["headers"], got["body"]
    message = json.loads(body)
    assert got["path"] == "/hook" and headers["Content-Type"] == "application/json"
    assert headers["Idempotency-Key"] == message["idempotency_key"] == "incident:41"
    assert headers["X-ML-Event"] == message["kind"] == "incident"
    assert (message["severity"], message["subject"], message["payload"]) == ("critical", "stock anomaly in room 7",
                                                                             payload)
    assert message["attempt"] == 1
    # The signature: HMAC-SHA256 over "<t>." + body, computed here independently.
    signature = headers["X-ML-Signature"]
    assert signature.split("v1=")[1] == _hmac(SECRET, signature, body)
    assert signature.split("v1=")[1] != _hmac("another-secret-0123456789", signature, body)
    assert verify_signature(SECRET, signature, body.encode())
    assert not verify_signature("another-secret-0123456789", signature, body.encode())
    assert not verify_signature(SECRET, signature, body.replace("room 7", "room 8").encode())
    [row] = rows(app)
    assert (row["id"], row["status"], row["attempts"], row["lease_owner"]) == (row_id, "delivered", 1, None)


def test_the_same_incident_enqueued_twice_is_delivered_once(make_notify_app, receiver):
    app = make_notify_app(**webhook_settings(receiver))
    with app.app_context():
        assert len(notify.enqueue("incident", "incident:9", {"n": 1}, "high")) == 1
        assert notify.enqueue("incident", "incident:9", {"n": 2}, "high") == []
        # Inside the caller's transaction: a rolled-back incident leaves no notification...
        notify.enqueue("incident", "incident:10", {"n": 3}, "high", session=db.session)
        db.session.rollback()
        # ...and a duplicate inside a transaction does not break it (PostgreSQL aborts on errors).
        notify.enqueue("incident", "incident:11", {"n": 4}, "high", session=db.session)
        assert notify.enqueue("incident", "incident:9", {"n": 5}, "high", session=db.session) == []
        db.session.commit()
    notify.deliver_pending(app)
    notify.deliver_pending(app, now=later(3600))

    keys = [r["headers"]["Idempotency-Key"] for r in receiver.received()]
    assert sorted(keys) == ["incident:11", "incident:9"]
    assert json.loads(receiver.received()[0]["body"])["payload"] == {"n": 1}


def test_incidents_below_the_minimum_severity_are_not_recorded(make_notify_app, receiver):
    app = make_notify_app(**webhook_settings(receiver, ML_NOTIFY_MIN_SEVERITY="high"))
    with app.app_context():
        assert notify.enqueue("incident", "incident:1", {}, "medium") == []
        assert len(notify.enqueue("incident", "incident:2", {}, "high")) == 1
        assert len(notify.enqueue("gate_decision", "gate_decision:if:stok_seviye:3", {}, "info")) == 1
        with pytest.raises(notify.NotificationError, match="^key: "):
            notify.enqueue("incident", "incident 3\r\nX-Evil: 1", {}, "high")
        with pytest.raises(notify.NotificationError, match="^kind: "):
            notify.enqueue("anything", "k:1", {}, "high")
        with pytest.raises(notify.NotificationError, match="^payload: "):
            notify.enqueue("drift", "drift:x:1", {"bad": float("nan")}, "medium")
    assert [r["idempotency_key"] for r in rows(app)] == ["incident:2", "gate_decision:if:stok_seviye:3"]


def test_a_receiver_that_was_down_gets_the_message_exactly_once_after_the_backoff(make_notify_app, receiver,
                                                                                    caplog):
    app = make_notify_app(**webhook_settings(receiver))
    receiver.stop()
    with app.app_context():
        for n in range(3):
            notify.enqueue("job_failed", f"job_failed:train_models:{n}", {"n": n}, "high")
    before = utcnow()
    with caplog.at_level(logging.WARNING, logger="ml.events"):
        report = notify.deliver_pending(app)
    after = utcnow()
    assert report.retried == 3 and report.delivered == 0
    for row in rows(app):
        assert row["status"] == "pending" and row["attempts"] == 1
        assert "connect failed" in row["last_error"] and "Connection refused" in row["last_error"]
        # Base 10 s, first retry: half fixed, half jitter -> 5..10 s from the failure.
        assert before + timedelta(seconds=5) <= row["next_attempt_at"] <= after + timedelta(seconds=10)
    # Three identical errors, one log line.
    retries = [r for r in caplog.records if getattr(r, "event", None) == "notification_retry"]
    assert len(retries) == 1
    assert "Connection refused" in retries[0].getMessage() and SECRET not in caplog.text

    receiver.start()
    assert notify.deliver_pending(app).delivered == 0  # not due yet
    assert receiver.received() == []
    assert notify.deliver_pending(app, now=later(11)).delivered == 3
    assert notify.deliver_pending(app, now=later(3600)).delivered == 0
    assert sorted(r["headers"]["Idempotency-Key"] for r in receiver.received()) == [
        f"job_failed:train_models:{n}" for n in range(3)]
    assert {json.loads(r["body"])["attempt"] for r in receiver.received()} == {2}
    assert {(r["status"], r["attempts"]) for r in rows(app)} == {("delivered", 2)}


def test_4xx_is_permanent_while_429_and_5xx_are_retried_until_the_attempts_run_out(make_notify_app, receiver):
    app = make_notify_app(**webhook_settings(receiver, ML_NOTIFY_MAX_ATTEMPTS="2"))
    with app.app_context():
        notify.enqueue("drift", "drift:stok_seviye:1", {"psi": 0.4}, "medium")
    receiver.set_mode(status=429)
    assert notify.deliver_pending(app).retried == 1
    receiver.set_mode(status=503)
    assert notify.deliver_pending(app, now=later(11)).dead == 1  # second attempt of two
    [row] = rows(app)
    assert row["status"] == "dead" and row["attempts"] == 2 and "HTTP 503" in row["last_error"]

    with app.app_context():
        notify.enqueue("drift", "drift:stok_seviye:2", {"psi": 0.5}, "medium")
    receiver.set_mode(status=400)
    assert notify.deliver_pending(app).dead == 1
    row = rows(app, idempotency_key="drift:stok_seviye:2")[0]
    assert (row["status"], row["attempts"]) == ("dead", 1)
    assert row["last_error"].startswith("webhook 127.0.0.1:") and "HTTP 400 Bad Request: refused on purpose" in \
        row["last_error"]
    assert len(receiver.received()) == 3  # 429, 503, 400: each tried as said, nothing more
    assert notify.deliver_pending(app, now=later(7200)).as_dict() == notify.DeliveryReport().as_dict()


def test_the_rate_limit_sends_one_digest_for_what_it_held_back(make_notify_app, receiver):
    app = make_notify_app(**webhook_settings(receiver, ML_NOTIFY_RATE_PER_HOUR="2"))
    with app.app_context():
        for n in range(5):
            notify.enqueue("incident", f"incident:{n}", {"n": n}, "high" if n != 3 else "critical")
    report = notify.deliver_pending(app)
    assert (report.delivered, report.digests) == (2, 1)  # one on its own + one digest = the hour's budget
    first, digest = [json.loads(r["body"]) for r in receiver.received()]
    assert first["idempotency_key"] == "incident:0"
    assert digest["kind"] == "digest" and digest["severity"] == "critical"
    assert digest["replaces"] == ["incident:1", "incident:2", "incident:3", "incident:4"]
    assert [item["payload"] for item in digest["payload"]["items"]] == [{"n": 1}, {"n": 2}, {"n": 3}, {"n": 4}]
    by_key = {r["idempotency_key"]: r for r in rows(app)}
    digest_row = by_key[digest["idempotency_key"]]
    for n in range(1, 5):
        assert (by_key[f"incident:{n}"]["status"], by_key[f"incident:{n}"]["digest_id"]) == ("delivered",
                                                                                           digest_row["id"])

    # The hour is spent: new ones are held back, then go out together as ONE digest when the window allows.
    with app.app_context():
        for n in range(5, 8):
            notify.enqueue("incident", f"incident:{n}", {"n": n}, "high")
    assert notify.deliver_pending(app).as_dict() == {"delivered": 0, "retried": 0, "dead": 0, "digests": 0,
                                                     "held": 3}
    assert len(receiver.received()) == 2
    report = notify.deliver_pending(app, now=later(3601))
    assert (report.delivered, report.digests) == (1, 1)
    late = json.loads(receiver.received()[-1]["body"])
    assert late["replaces"] == ["incident:5", "incident:6", "incident:7"]
    assert {r["status"] for r in rows(app)} == {"delivered"}


def test_two_senders_at_once_never_send_the_same_message_twice(make_notify_app, receiver):
    app = make_notify_app(**webhook_settings(receiver))
    with app.app_context():
        for n in range(12):
            notify.enqueue("incident", f"incident:{n}", {"n": n}, "high")
    receiver.set_mode(delay=0.05)  # both passes overlap for the whole run
    reports, errors = [], []

    def run() -> None:
        try:
            reports.append(notify.deliver_pending(app))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    keys = [r["headers"]["Idempotency-Key"] for r in receiver.received()]
    assert sorted(keys) == sorted(f"incident:{n}" for n in range(12))  # each once
    assert sum(r.delivered for r in reports) == 12


def test_a_sender_killed_mid_send_loses_nothing_and_the_resend_carries_the_same_key(make_notify_app, receiver,
                                                                                    tmp_path, database_url,
                                                                                    models_dir):
    settings = webhook_settings(receiver, ML_NOTIFY_READ_TIMEOUT_SECONDS="30", ML_NOTIFY_LEASE_SECONDS="40")
    app = make_notify_app(**settings)
    with app.app_context():
        notify.enqueue("gate_decision", "gate_decision:isolation_forest:stok_seviye:12", {"f1": 0.9}, "info")
    receiver.set_mode(delay=60)  # the receiver reads the request, then keeps the sender waiting
    env = procutil.base_env(tmp_path, DATABASE_URL=database_url, ML_MODELS_DIR=str(models_dir), **settings)
    log = tmp_path / "sender.out"
    sender = procutil.start([sys.executable, "-m", "tests.peers", "deliver"], env, log)
    try:
        procutil.wait_until(lambda: receiver.received(), 30, "the request to reach the receiver", [sender], [log])
        os.killpg(sender.pid, signal.SIGKILL)
        assert sender.wait(10) == -signal.SIGKILL
    finally:
        procutil.stop_group(sender)
    [row] = rows(app)
    assert (row["status"], row["attempts"]) == ("pending", 1) and row["lease_expires_at"] > utcnow()

    receiver.set_mode(delay=0)
    assert notify.deliver_pending(app).delivered == 0  # the lease still holds: nobody else sends it
    assert notify.deliver_pending(app, now=later(41)).delivered == 1  # after the lease: sent again
    first, second = receiver.received()
    assert first["headers"]["Idempotency-Key"] == second["headers"]["Idempotency-Key"] == \
        "gate_decision:isolation_forest:stok_seviye:12"
    assert json.loads(first["body"])["attempt"] == 1 and json.loads(second["body"])["attempt"] == 2
    assert verify_signature(SECRET, second["headers"]["X-ML-Signature"], second["body"].encode())
    assert rows(app)[0]["status"] == "delivered"


def test_a_failed_job_becomes_one_job_failed_notification(make_notify_app, receiver):
    app = make_notify_app(**webhook_settings(receiver))
    url = app.config["SQLALCHEMY_DATABASE_URI"]
    sql(url, "ALTER TABLE ml_models RENAME TO ml_models_gone")  # a real fault: the job's table is missing
    try:
        outcome = run_scheduled_tick(app, "cleanup_models", tick_for(time.time(), 1.0))
    finally:
        sql(url, "ALTER TABLE ml_models_gone RENAME TO ml_models")
    assert outcome["status"] == "failed"
    notify.deliver_pending(app)
    [got] = receiver.received()
    message = json.loads(got["body"])
    assert message["kind"] == "job_failed" and message["severity"] == "high"
    assert message["idempotency_key"] == f"job_failed:cleanup_models:{outcome['run_id']}"
    assert message["payload"]["job"] == "cleanup_models" and "ml_models" in message["payload"]["error"]
    assert message["subject"].startswith("job cleanup_models failed: ")


def test_notify_test_command_reports_each_channel(make_notify_app, receiver):
    app = make_notify_app(**webhook_settings(receiver))
    notify.register_cli(app)
    result = app.test_cli_runner().invoke(args=["ml", "notify-test"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("webhook: ok, HTTP 200 (")
    [got] = receiver.received()
    assert json.loads(got["body"])["kind"] == "test" and got["headers"]["Idempotency-Key"].startswith("test:")
    assert rows(app) == []  # a test message does not go through the outbox

    receiver.stop()
    result = app.test_cli_runner().invoke(args=["ml", "notify-test"])
    assert result.exit_code == 1
    assert "Error: 1 of 1 channel(s) failed; webhook: webhook 127.0.0.1:" in result.output
    assert SECRET not in result.output
