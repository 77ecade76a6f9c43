"""Shared fixtures of the notification tests: apps with notification settings, outbox rows."""
from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from tests import dbutil
from tests.peers import HttpReceiver
from utils.extensions import db
from utils.ml import notify
from utils.ml.notify.models import Notification
from utils.time import as_utc

SECRET = "s3cret-key-for-tests-0123456789"
# Short timeouts and leases; backoff is skipped over by moving ``now``, never slept.
FAST = {
    "ML_NOTIFY_CONNECT_TIMEOUT_SECONDS": "1",
    "ML_NOTIFY_READ_TIMEOUT_SECONDS": "3",
    "ML_NOTIFY_LEASE_SECONDS": "10",
    "ML_NOTIFY_RETRY_BASE_SECONDS": "10",
    "ML_NOTIFY_RETRY_MAX_SECONDS": "60",
}


def webhook_settings(receiver: HttpReceiver, **extra: str) -> dict[str, str]:
    return dict(FAST, ML_NOTIFY_WEBHOOK_URL=receiver.url, ML_NOTIFY_WEBHOOK_SECRET=SECRET, **extra)


@pytest.fixture
def make_notify_app(database_url, models_dir):
    """``make(**ML_NOTIFY_settings)`` -> an app on this test's database with notifications set up."""
    apps = []

    def make(**settings: str):
        app = dbutil.make_app(database_url, models_dir, **settings)
        notify.init_app(app)
        apps.append(app)
        return app

    yield make
    for app in apps:
        dbutil.dispose(app)


@pytest.fixture
def receiver(tmp_path):
    peer = HttpReceiver(tmp_path)
    peer.start()
    yield peer
    peer.stop()


def rows(app, **where: Any) -> list[dict[str, Any]]:
    """Every outbox row (as a dict, timestamps aware UTC), by id, read on a fresh connection."""
    table = Notification.__table__
    query = sa.select(table).order_by(table.c.id)
    for name, value in where.items():
        query = query.where(table.c[name] == value)
    with app.app_context(), db.engine.connect() as conn:
        found = [dict(r) for r in conn.execute(query).mappings()]
    for row in found:
        for name in ("next_attempt_at", "lease_expires_at", "created_at", "delivered_at", "held_at"):
            row[name] = as_utc(row[name])
    return found


def later(seconds: float):
    from utils.time import utcnow

    return utcnow() + timedelta(seconds=seconds)
