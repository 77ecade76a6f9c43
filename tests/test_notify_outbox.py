"""The outbox itself: settings, schema and migration, backoff, log throttling (both databases where it
touches one).  Delivery against real peers is in test_notify_webhook.py and test_notify_email.py."""
from __future__ import annotations

import random

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask_migrate import downgrade, upgrade

from tests import dbutil
from tests.notify_helpers import FAST, make_notify_app  # noqa: F401
from utils.extensions import db
from utils.ml import notify
from utils.ml.notify import settings
from utils.ml.notify.delivery import backoff
from utils.ml.notify.logutil import LogThrottle

GOOD = {"ML_NOTIFY_WEBHOOK_URL": "https://hooks.example/ml", "ML_NOTIFY_WEBHOOK_SECRET": "0123456789abcdef",
        "ML_NOTIFY_SMTP_HOST": "smtp.example", "ML_NOTIFY_SMTP_FROM": "ml@example.com",
        "ML_NOTIFY_SMTP_TO": "a@example.com, b@example.com"}


def test_defaults_and_typed_values():
    values = settings.load({})
    assert set(values) == {s.env for s in settings.SETTINGS}
    assert settings.channels(values) == ()
    assert (values["ML_NOTIFY_MIN_SEVERITY"], values["ML_NOTIFY_RATE_PER_HOUR"]) == ("high", 30)
    values = settings.load(dict(GOOD, ML_NOTIFY_SMTP_STARTTLS="no", ML_NOTIFY_SMTP_PORT="2525",
                                ML_NOTIFY_LEASE_SECONDS="  "))
    assert settings.channels(values) == ("webhook", "email")
    assert values["ML_NOTIFY_SMTP_TO"] == ("a@example.com", "b@example.com")
    assert (values["ML_NOTIFY_SMTP_STARTTLS"], values["ML_NOTIFY_SMTP_PORT"]) == (False, 2525)
    assert values["ML_NOTIFY_LEASE_SECONDS"] == 120.0  # blank = unset
    table = settings.markdown_table()
    assert all(f"| `{s.env}` |" in table for s in settings.SETTINGS)


@pytest.mark.parametrize("environ, message", [
    ({"ML_NOTIFY_WEBHOOK_URL": "ftp://x"}, "ML_NOTIFY_WEBHOOK_URL='ftp://x': expected an http:// or https:// URL"),
    ({"ML_NOTIFY_WEBHOOK_URL": "https://h.example/x"},
     "ML_NOTIFY_WEBHOOK_SECRET='': required when ML_NOTIFY_WEBHOOK_URL is set"),
    ({"ML_NOTIFY_WEBHOOK_URL": "https://user:pa55@h.example/x"},
     "ML_NOTIFY_WEBHOOK_URL='https://***@h.example/x': credentials in the URL are not accepted; "
     "the body is signed with ML_NOTIFY_WEBHOOK_SECRET"),
    ({"ML_NOTIFY_WEBHOOK_SECRET": "short-secret"},
     "ML_NOTIFY_WEBHOOK_SECRET=<hidden, 12 characters>: must be at least 16 characters"),
    ({"ML_NOTIFY_MIN_SEVERITY": "urgent"},
     "ML_NOTIFY_MIN_SEVERITY='urgent': expected one of info, low, medium, high, critical"),
    ({"ML_NOTIFY_SMTP_PORT": "70000"}, "ML_NOTIFY_SMTP_PORT='70000': must be a port number from 1 to 65535"),
    ({"ML_NOTIFY_RATE_PER_HOUR": "0"}, "ML_NOTIFY_RATE_PER_HOUR='0': must be at least 1"),
    ({"ML_NOTIFY_RATE_PER_HOUR": "ten"}, "ML_NOTIFY_RATE_PER_HOUR='ten': expected a whole number"),
    ({"ML_NOTIFY_SMTP_STARTTLS": "maybe"}, "ML_NOTIFY_SMTP_STARTTLS='maybe': expected true or false"),
    ({"ML_NOTIFY_SMTP_HOST": "smtp.example"}, "ML_NOTIFY_SMTP_FROM='': required when ML_NOTIFY_SMTP_HOST is set"),
    ({"ML_NOTIFY_SMTP_TO": "ops@example.com;x"},
     "ML_NOTIFY_SMTP_TO='ops@example.com;x': expected comma-separated e-mail addresses like "
     "ops@example.com,oncall@example.com"),
    ({"ML_NOTIFY_SMTP_USER": "ml"}, "ML_NOTIFY_SMTP_PASSWORD='': required when ML_NOTIFY_SMTP_USER is set"),
    ({"ML_NOTIFY_SMTP_USER": "ml", "ML_NOTIFY_SMTP_PASSWORD": "pw", "ML_NOTIFY_SMTP_STARTTLS": "false"},
     "ML_NOTIFY_SMTP_STARTTLS='false': must be true when ML_NOTIFY_SMTP_USER is set (the password would travel "
     "in clear)"),
    ({"ML_NOTIFY_SMTP_CA_FILE": "/nonexistent/ca.pem"},
     "ML_NOTIFY_SMTP_CA_FILE='/nonexistent/ca.pem': no such file (expected a PEM file of CA certificates)"),
    ({"ML_NOTIFY_RETRY_BASE_SECONDS": "60", "ML_NOTIFY_RETRY_MAX_SECONDS": "10"},
     "ML_NOTIFY_RETRY_MAX_SECONDS='10': must be at least ML_NOTIFY_RETRY_BASE_SECONDS (60)"),
    ({"ML_NOTIFY_RETRY_BASE_SECONDS": "nan"},
     "ML_NOTIFY_RETRY_BASE_SECONDS='nan': must be a finite number of seconds, at least 0.001"),
    ({"ML_NOTIFY_LEASE_SECONDS": "10"},
     "ML_NOTIFY_LEASE_SECONDS='10': must be more than the connect + read timeouts (20 s), or a slow send "
     "would be taken over and sent twice"),
])
def test_a_bad_setting_is_one_line_naming_the_variable_its_value_and_the_rule(environ, message):
    with pytest.raises(ValueError) as caught:
        settings.load(environ)
    assert str(caught.value) == message
    assert "\n" not in message


def test_a_secret_never_appears_in_the_error():
    for name, value in (("ML_NOTIFY_SMTP_PASSWORD", "pass\nword"), ("ML_NOTIFY_WEBHOOK_SECRET", "tiny")):
        with pytest.raises(ValueError) as caught:
            settings.load({name: value})
        assert value not in str(caught.value) and str(caught.value).startswith(f"{name}=<hidden, ")


def test_bad_settings_stop_the_app_at_start_up_with_that_line(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"^ML_NOTIFY_WEBHOOK_SECRET='': required when ML_NOTIFY_WEBHOOK_URL is set$"):
        dbutil.make_app(dbutil.sqlite_url(tmp_path / "x.sqlite3"), tmp_path,
                        ML_NOTIFY_WEBHOOK_URL="https://hooks.example/ml")
    monkeypatch.setenv("ML_NOTIFY_RATE_PER_HOUR", "-1")  # the environment is read too
    with pytest.raises(ValueError, match=r"^ML_NOTIFY_RATE_PER_HOUR='-1': must be at least 1$"):
        dbutil.make_app(dbutil.sqlite_url(tmp_path / "y.sqlite3"), tmp_path)


def test_backoff_doubles_with_jitter_up_to_the_cap():
    rng = random.Random(7)
    for attempts, full in ((1, 30), (2, 60), (3, 120), (8, 3600), (30, 3600)):
        delays = [backoff(attempts, 30, 3600, rng) for _ in range(200)]
        assert all(full / 2 <= d <= full for d in delays)
        assert max(delays) - min(delays) > full / 4  # jittered, not a constant


def test_the_log_throttle_lets_one_line_through_per_interval_and_counts_the_rest():
    now = [0.0]
    throttle = LogThrottle(interval=60, clock=lambda: now[0])
    assert throttle.admit("x") == 0
    assert [throttle.admit("x") for _ in range(4)] == [None] * 4
    assert throttle.admit("y") == 0  # another error is its own line
    now[0] = 61
    assert throttle.admit("x") == 4


def test_the_orm_model_matches_the_migrated_table(app_ctx):
    with db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        differences = [d for d in compare_metadata(context, db.metadata) if "ml_notifications" in repr(d)]
    assert differences == []
    # The database itself refuses an unknown status.
    with pytest.raises(sa.exc.IntegrityError), db.engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO ml_notifications (channel, kind, idempotency_key, severity, subject, "
                             "payload, status) VALUES ('webhook', 'drift', 'k', 'info', 's', '{}', 'lost')"))


def test_downgrading_past_the_outbox_drops_only_its_table(app_ctx):
    config = app_ctx.extensions["migrate"].migrate.get_config()
    before = ScriptDirectory.from_config(config).get_revision("0007_notification_outbox").down_revision
    inspector = lambda: set(sa.inspect(db.engine).get_table_names())  # noqa: E731
    head = inspector()
    db.session.remove()
    downgrade(revision="0007_notification_outbox")  # later revisions' tables go first
    tables = inspector()
    assert "ml_notifications" in tables
    downgrade(revision=before)
    # The revisions after the outbox (0009-0012) go first, with their own tables.
    later = {"ml_incidents", "ml_auth_failures", "ml_revoked_sessions", "ml_gate_decisions", "ml_model_pins",
             "ml_drift_reports"}
    assert inspector() == tables - {"ml_notifications"} - later
    upgrade()
    assert inspector() == head


def test_enqueue_without_a_channel_records_nothing(make_notify_app, app):
    quiet = make_notify_app(**FAST)  # no webhook URL, no SMTP host
    with quiet.app_context():
        assert notify.enqueue("job_failed", "job_failed:x:1", {}, "high") == []
    with app.app_context():  # every app runs notify.init_app (app.COMPONENTS); no channel configured
        assert notify.enqueue("job_failed", "job_failed:x:1", {}, "high") == []
        assert db.session.execute(sa.text("SELECT count(*) FROM ml_notifications")).scalar() == 0
