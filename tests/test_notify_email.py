"""E-mail notifications against a real SMTP server (aiosmtpd: STARTTLS with a throw-away
certificate, AUTH required), on PostgreSQL and SQLite."""
from __future__ import annotations

import logging

import pytest

from tests.notify_helpers import FAST, later, make_notify_app, rows  # noqa: F401
from tests.peers import SmtpPeer
from utils.ml import notify
from utils.ml.notify.smtp import message_id

USER, PASSWORD = "ml-notify", "correct horse battery staple"


@pytest.fixture
def smtp_peer(tmp_path):
    with SmtpPeer(tmp_path, USER, PASSWORD) as peer:
        yield peer


def email_settings(peer: SmtpPeer, password: str = PASSWORD, **extra: str) -> dict[str, str]:
    return dict(FAST, ML_NOTIFY_SMTP_HOST="127.0.0.1", ML_NOTIFY_SMTP_PORT=str(peer.port),
                ML_NOTIFY_SMTP_CA_FILE=str(peer.cert), ML_NOTIFY_SMTP_USER=USER, ML_NOTIFY_SMTP_PASSWORD=password,
                ML_NOTIFY_SMTP_FROM="ml@minibar.example",
                ML_NOTIFY_SMTP_TO="ops@minibar.example, oncall@minibar.example",
                **extra)


def test_starttls_and_auth_deliver_a_plain_text_mail_keyed_by_the_idempotency_key(make_notify_app, smtp_peer):
    app = make_notify_app(**email_settings(smtp_peer))
    payload = {"metric_type": "tuketim_miktar", "entity_id": 301, "metric_value": 42.0, "method": "z_score"}
    with app.app_context():
        notify.enqueue("incident", "incident:77", payload, "critical", subject="consumption spike in room 301")
    assert notify.deliver_pending(app).delivered == 1

    [mail] = smtp_peer.messages
    [session] = smtp_peer.sessions
    assert session["tls"] and session["authenticated"] and session["login"] == USER.encode()  # TLS, then AUTH
    assert session["mail_from"] == "ml@minibar.example"
    assert session["rcpt_tos"] == ["ops@minibar.example", "oncall@minibar.example"]
    assert mail["Subject"] == "[ML critical] consumption spike in room 301"
    assert mail["Message-ID"].strip() == message_id("incident:77", "ml@minibar.example")
    assert mail["X-ML-Idempotency-Key"] == "incident:77" and mail["X-ML-Event"] == "incident"
    assert mail.get_content_type() == "text/plain"
    body = mail.get_content()
    for line in ("kind: incident", "severity: critical", "idempotency key: incident:77", "entity_id: 301",
                 "method: z_score", "metric_type: tuketim_miktar", "metric_value: 42.0"):
        assert line in body.splitlines()
    assert rows(app)[0]["status"] == "delivered"


def test_a_wrong_password_is_retried_then_dead_with_a_clear_error(make_notify_app, smtp_peer, caplog):
    wrong = "not-the-password"
    app = make_notify_app(**email_settings(smtp_peer, password=wrong, ML_NOTIFY_MAX_ATTEMPTS="2"))
    with app.app_context():
        notify.enqueue("job_failed", "job_failed:anomaly_scan:5", {"job": "anomaly_scan"}, "high")
    with caplog.at_level(logging.INFO, logger="ml.events"):
        assert notify.deliver_pending(app).retried == 1
    [row] = rows(app)
    assert row["status"] == "pending" and row["attempts"] == 1
    assert notify.deliver_pending(app, now=later(11)).dead == 1
    [row] = rows(app)
    assert row["status"] == "dead" and row["attempts"] == 2
    assert row["last_error"].startswith(f"smtp 127.0.0.1:{smtp_peer.port}: AUTH as 'ml-notify' refused: 535")
    assert wrong not in row["last_error"]
    assert smtp_peer.messages == []
    [retry] = [r for r in caplog.records if getattr(r, "event", None) == "notification_retry"]
    assert "AUTH as 'ml-notify' refused: 535" in retry.getMessage() and wrong not in caplog.text


def test_a_digest_mail_lists_every_key_it_replaces(make_notify_app, smtp_peer):
    app = make_notify_app(**email_settings(smtp_peer, ML_NOTIFY_RATE_PER_HOUR="1"))
    with app.app_context():
        for n in range(3):
            notify.enqueue("drift", f"drift:stok_seviye:{n}", {"psi": 0.3 + n}, "medium", subject=f"drift {n}")
    report = notify.deliver_pending(app)
    assert (report.delivered, report.digests) == (1, 1)
    [mail] = smtp_peer.messages
    assert mail["Subject"] == "[ML medium] 3 notifications held back by the rate limit"
    assert mail["X-ML-Event"] == "digest"
    body = mail.get_content()
    for n in range(3):
        assert f"- [medium] drift drift:stok_seviye:{n}: drift {n} (" in body
    assert {r["status"] for r in rows(app)} == {"delivered"}


def test_notify_test_sends_through_both_channels_and_says_which_failed(make_notify_app, smtp_peer, tmp_path):
    from tests.peers import HttpReceiver

    receiver = HttpReceiver(tmp_path)
    receiver.start()
    try:
        app = make_notify_app(**email_settings(smtp_peer), ML_NOTIFY_WEBHOOK_URL=receiver.url,
                              ML_NOTIFY_WEBHOOK_SECRET="x" * 32)
        results = notify.notify_test(app)
        assert {name: r["ok"] for name, r in results.items()} == {"webhook": True, "email": True}
        assert smtp_peer.messages[0]["X-ML-Idempotency-Key"] == results["email"]["key"]
        assert len(receiver.received()) == 1

        bad = make_notify_app(**email_settings(smtp_peer, password="wrong-password"))
        notify.register_cli(bad)
        result = bad.test_cli_runner().invoke(args=["ml", "notify-test", "--channel", "email"])
        assert result.exit_code == 1
        assert "email: FAILED: smtp 127.0.0.1:" in result.output and "wrong-password" not in result.output
        assert result.output.strip().splitlines()[-1].startswith("Error: 1 of 1 channel(s) failed; email: ")
    finally:
        receiver.stop()
