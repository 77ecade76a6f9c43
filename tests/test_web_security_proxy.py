"""Behind a reverse proxy (Coolify's Traefik): the client address and scheme, through the test client.

``ML_TRUSTED_PROXIES`` = 1 makes the failed-authentication counter per
forwarded client, not per proxy; what a client writes into
``X-Forwarded-For`` itself, or sends from a public address straight to the
published port, does not give it a fresh counter.  HSTS goes on HTTPS
responses only.  The same against a real gunicorn: tests/test_web_security_gunicorn.py.
"""
from __future__ import annotations

import pytest

from tests import dbutil
from tests.dashboard_helpers import TOKEN
from utils.settings import default_of
from utils.web.security.proxy import behind_proxy

PROXY = "10.0.7.2"  # Traefik's address on the deployment's network
CLIENT_A, CLIENT_B = "93.184.216.34", "93.184.216.35"
WRONG = {"Authorization": "Bearer " + "w" * 30}
RIGHT = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def make(database_url, models_dir):
    """Build an app with the default authentication limits and these overrides; each is disposed at teardown."""
    made = []
    limits = {k: default_of(k) for k in ("ML_AUTH_MAX_FAILURES", "ML_AUTH_WINDOW_SECONDS", "ML_AUTH_LOCKOUT_SECONDS")}

    def build(**overrides):
        made.append(dbutil.make_app(database_url, models_dir, ML_ADMIN_TOKEN=TOKEN, **{**limits, **overrides}))
        return made[-1]

    yield build
    for app in made:  # also after a failed assertion: no engine outlives its test database
        dbutil.dispose(app)


@pytest.fixture
def proxied(make):
    return make(ML_TRUSTED_PROXIES=1)


def get(client, headers, peer=PROXY, forwarded_for=None, proto=None):
    extra = dict(headers)
    if forwarded_for is not None:
        extra["X-Forwarded-For"] = forwarded_for
    if proto is not None:
        extra["X-Forwarded-Proto"] = proto
    return client.get("/api/ml/models", headers=extra, environ_base={"REMOTE_ADDR": peer})


def lock_out(client, limit, **kwargs):
    statuses = [get(client, WRONG, **kwargs).status_code for _ in range(limit + 2)]
    assert statuses == [401] * limit + [429] * 2


def test_each_client_behind_a_trusted_proxy_has_its_own_counter(proxied):
    client = proxied.test_client()
    lock_out(client, proxied.config["ML_AUTH_MAX_FAILURES"], forwarded_for=CLIENT_A)
    assert get(client, RIGHT, forwarded_for=CLIENT_A).status_code == 429
    assert get(client, RIGHT, forwarded_for=CLIENT_B).status_code == 200
    # A client that writes its own X-Forwarded-For sits left of what the proxy appends: still A.
    assert get(client, RIGHT, forwarded_for=f"{CLIENT_B}, {CLIENT_A}").status_code == 429


def test_without_trusted_proxies_every_client_behind_the_proxy_shares_one_counter(make):
    app = make()  # ML_TRUSTED_PROXIES: its default, 0
    assert app.config["ML_TRUSTED_PROXIES"] == 0
    client = app.test_client()
    lock_out(client, app.config["ML_AUTH_MAX_FAILURES"], forwarded_for=CLIENT_A)
    assert get(client, RIGHT, forwarded_for=CLIENT_B).status_code == 429  # the proxy's counter is everyone's


def test_a_public_peer_reached_gunicorn_directly_and_cannot_name_its_address(proxied):
    client = proxied.test_client()
    peer = "93.184.216.99"
    statuses = [get(client, WRONG, peer=peer, forwarded_for=f"198.51.100.{i}").status_code for i in range(12)]
    assert statuses == [401] * 10 + [429] * 2
    assert get(client, RIGHT, peer=peer, forwarded_for="198.51.100.200").status_code == 429
    assert get(client, RIGHT, forwarded_for=peer).status_code == 429  # the same client through the proxy


def test_hsts_on_https_only(proxied, make):
    client = proxied.test_client()
    secure = get(client, RIGHT, forwarded_for=CLIENT_B, proto="https")
    assert secure.status_code == 200
    assert secure.headers["Strict-Transport-Security"] == f"max-age={default_of('ML_HSTS_SECONDS')}"
    assert "Strict-Transport-Security" not in get(client, RIGHT, forwarded_for=CLIENT_B, proto="http").headers
    # A public peer's own X-Forwarded-Proto is not believed.
    assert "Strict-Transport-Security" not in get(client, RIGHT, peer="93.184.216.98", proto="https").headers
    direct = client.get("/health", base_url="https://localhost")
    assert direct.headers["Strict-Transport-Security"].startswith("max-age=")
    off = make(ML_TRUSTED_PROXIES=1, ML_HSTS_SECONDS=0)
    assert "Strict-Transport-Security" not in get(off.test_client(), RIGHT, proto="https").headers


@pytest.mark.parametrize("address, expected", [
    ("10.0.7.2", True), ("172.18.0.3", True), ("192.168.1.4", True), ("127.0.0.1", True), ("::1", True),
    ("fd00::5", True), ("::ffff:10.0.0.9", True), ("93.184.216.34", False), ("2001:4860::8888", False),
    ("::ffff:93.184.216.34", False), ("", False), (None, False), ("not-an-address", False),
])
def test_which_peers_count_as_a_proxy(address, expected):
    assert behind_proxy(address) is expected
