"""Web security against a real 2-worker gunicorn on PostgreSQL (issue 12).

* 300 wrong bearer tokens, sent concurrently to both workers: exactly
  ``ML_AUTH_MAX_FAILURES`` of them get 401, the rest 429 with ``Retry-After``;
  the right token is refused (429) during the lockout and works after it; an
  address that did not guess is not affected.  The same for dashboard sign-ins.
* A sign-out in one request revokes the session for a copy of its cookie
  that any worker serves.
* A chunked request body over the size limit gets 413, not 400.
* Behind a proxy (``ML_TRUSTED_PROXIES=1``, a loopback peer) the counter is
  the forwarded client's, and HTTPS responses carry HSTS.

Clients come from different loopback addresses (127.0.0.2, 127.0.0.3, ...),
so each test has its own counter on the one server.
"""
from __future__ import annotations

import http.client
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import urlencode

import pytest

from tests import dbutil
from tests.procutil import VENV_BIN, base_env, free_port, http_status, start, stop_group, wait_until
from utils.web.api import MAX_BODY_BYTES

TOKEN = "gunicorn-security-token-0123456789"
MAX_FAILURES = 10
LOCKOUT_SECONDS = 4
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
# utils.db_bounds lets one thread fewer than a worker has wait on the database at once (the
# others get 503 "database busy" after 20 ms); fewer clients than that keep every answer a verdict.
THREADS = 8
CLIENTS = THREADS - 2


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: str


@dataclass
class Server:
    port: int
    log: Path

    def request(self, method: str, path: str, *, source: str, headers: Optional[dict[str, str]] = None,
                body: Optional[bytes] = None) -> Reply:
        """One request on a fresh connection from loopback address ``source``."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30, source_address=(source, 0))
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return Reply(response.status, {k.lower(): v for k, v in response.getheaders()},
                         response.read().decode(errors="replace"))
        finally:
            conn.close()


@pytest.fixture(scope="module")
def server(pg_available, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gunicorn_security")
    models_dir, log = tmp / "ml_models", tmp / "gunicorn.log"
    models_dir.mkdir()
    name = dbutil.create_pg_database(prefix="mlsec")
    url = dbutil.pg_url(name)
    dbutil.migrate(url, models_dir)
    port = free_port()
    env = base_env(tmp, DATABASE_URL=url, ML_MODELS_DIR=str(models_dir), ML_ADMIN_TOKEN=TOKEN,
                   SECRET_KEY="gunicorn-security-secret", ML_LOG_FORMAT="json", ML_SCHEDULER_ENABLED="false",
                   GUNICORN_BIND=f"127.0.0.1:{port}", GUNICORN_WORKERS="2", GUNICORN_THREADS=str(THREADS),
                   PROMETHEUS_MULTIPROC_DIR=str(tmp / "prom"), ML_AUTH_MAX_FAILURES=str(MAX_FAILURES),
                   ML_AUTH_WINDOW_SECONDS="300", ML_AUTH_LOCKOUT_SECONDS=str(LOCKOUT_SECONDS),
                   ML_TRUSTED_PROXIES="1")
    proc = start([str(VENV_BIN / "gunicorn"), "-c", "gunicorn.conf.py", "app:app"], env, log)
    try:
        wait_until(lambda: http_status(f"http://127.0.0.1:{port}/health") == 200, 60, "gunicorn up", [proc], [log])
        yield Server(port, log)
    finally:
        stop_group(proc)
        dbutil.drop_pg_database(name)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_300_wrong_tokens_get_10_401s_then_429_and_the_right_token_waits_out_the_lockout(server):
    source = "127.0.0.2"
    wrong = [f"guess-{i:04d}-{'x' * 20}" for i in range(300)]
    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        replies = list(pool.map(lambda t: server.request("GET", "/api/ml/models", source=source,
                                                         headers=bearer(t)), wrong))
    statuses = [r.status for r in replies]
    others = [(r.status, r.body[:300]) for r in replies if r.status not in (401, 429)]
    assert statuses.count(401) == MAX_FAILURES and statuses.count(429) == 300 - MAX_FAILURES, others
    for reply in replies:
        if reply.status == 429:
            assert 1 <= int(reply.headers["retry-after"]) <= LOCKOUT_SECONDS
            assert "too many failed authentications" in reply.body

    # Locked out: the right token is not even compared, so it tells a guesser nothing.
    locked = server.request("GET", "/api/ml/models", source=source, headers=bearer(TOKEN))
    assert locked.status == 429 and "retry-after" in locked.headers
    # Another address is not affected.
    assert server.request("GET", "/api/ml/models", source="127.0.0.9", headers=bearer(TOKEN)).status == 200

    time.sleep(int(locked.headers["retry-after"]) + 0.5)
    assert server.request("GET", "/api/ml/models", source=source, headers=bearer(TOKEN)).status == 200


def test_behind_a_proxy_each_forwarded_client_is_counted_and_https_gets_hsts(server):
    """ML_TRUSTED_PROXIES=1: a loopback peer is the proxy, its X-Forwarded-For the client (both workers)."""
    proxy, guesser, operator = "127.0.0.20", "93.184.216.34", "93.184.216.35"

    def via_proxy(token: str, client: str, proto: str = "http") -> Reply:
        return server.request("GET", "/api/ml/models", source=proxy,
                              headers={**bearer(token), "X-Forwarded-For": client, "X-Forwarded-Proto": proto})

    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        statuses = list(pool.map(lambda i: via_proxy(f"guess-{i:04d}-{'y' * 20}", guesser).status, range(40)))
    assert statuses.count(401) == MAX_FAILURES and statuses.count(429) == 40 - MAX_FAILURES
    assert via_proxy(TOKEN, guesser).status == 429
    assert via_proxy(TOKEN, f"198.51.100.7, {guesser}").status == 429  # its own header value does not count
    served = via_proxy(TOKEN, operator, proto="https")
    assert served.status == 200  # the proxy's other clients are not locked out
    assert served.headers["strict-transport-security"] == "max-age=31536000"
    assert "strict-transport-security" not in via_proxy(TOKEN, operator).headers


def sign_in_form(server: Server, source: str) -> tuple[str, str]:
    """A fresh session's cookie and CSRF token from the sign-in page."""
    page = server.request("GET", "/ml/dashboard/login", source=source)
    cookie = page.headers["set-cookie"].split(";")[0]
    return cookie, CSRF.search(page.body).group(1)


def post_sign_in(server: Server, source: str, cookie: str, csrf: str, token: str) -> Reply:
    return server.request("POST", "/ml/dashboard/login", source=source, body=urlencode(
        {"csrf_token": csrf, "token": token}).encode(), headers={
        "Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"})


def test_wrong_sign_ins_are_limited_across_workers(server):
    source = "127.0.0.3"
    cookie, csrf = sign_in_form(server, source)
    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        replies = list(pool.map(lambda i: post_sign_in(server, source, cookie, csrf, f"wrong-{i}-{'y' * 24}"),
                                range(300)))
    statuses = [r.status for r in replies]
    assert statuses.count(401) == MAX_FAILURES and statuses.count(429) == 300 - MAX_FAILURES, statuses
    assert all("Too many failed sign-ins" in r.body for r in replies if r.status == 429)
    locked = post_sign_in(server, source, cookie, csrf, TOKEN)
    assert locked.status == 429 and int(locked.headers["retry-after"]) >= 1
    # Failed bearer tokens and sign-ins share the count: the API is locked for this address too.
    assert server.request("GET", "/api/ml/models", source=source, headers=bearer(TOKEN)).status == 429
    time.sleep(int(locked.headers["retry-after"]) + 0.5)
    assert post_sign_in(server, source, cookie, csrf, TOKEN).status == 302


def test_a_copied_cookie_stops_working_after_sign_out(server):
    source = "127.0.0.4"
    cookie, csrf = sign_in_form(server, source)
    signed_in = post_sign_in(server, source, cookie, csrf, TOKEN)
    assert signed_in.status == 302
    session = signed_in.headers["set-cookie"].split(";")[0]
    copy = dict(Cookie=session)
    # Both workers accept it (several requests, so both serve some).
    assert {server.request("GET", "/ml/dashboard", source=source, headers=copy).status for _ in range(6)} == {200}
    page = server.request("GET", "/ml/dashboard", source=source, headers=copy)
    csrf = CSRF.search(page.body).group(1)
    out = server.request("POST", "/ml/dashboard/logout", source=source, body=urlencode({"csrf_token": csrf}).encode(),
                         headers={"Cookie": session, "Content-Type": "application/x-www-form-urlencoded"})
    assert out.status == 302
    for _ in range(6):
        again = server.request("GET", "/ml/dashboard", source=source, headers=copy)
        assert again.status == 302 and "/ml/dashboard/login" in again.headers["location"]


def test_a_chunked_body_over_the_limit_gets_413(server):
    chunk = b"x" * (1024 * 1024)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60, source_address=("127.0.0.5", 0))
    try:
        conn.putrequest("POST", "/api/ml/metrics")
        for name, value in {**bearer(TOKEN), "Content-Type": "application/json",
                            "Transfer-Encoding": "chunked"}.items():
            conn.putheader(name, value)
        conn.endheaders()
        try:
            for _ in range(MAX_BODY_BYTES // len(chunk) + 2):
                conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            conn.send(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):  # the server may answer and close before the end
            pass
        response = conn.getresponse()
        body = response.read().decode(errors="replace")
    finally:
        conn.close()
    assert response.status == 413, body
    assert "error" in body


def test_without_a_secret_key_every_worker_accepts_a_sign_in(pg_available, tmp_path):
    # Each worker used to draw its own random SECRET_KEY, so a session signed by one
    # worker was refused by the other: the master now draws one key for all of them.
    name = dbutil.create_pg_database(prefix="mlsec")
    url = dbutil.pg_url(name)
    models_dir, log = tmp_path / "ml_models", tmp_path / "gunicorn.log"
    models_dir.mkdir()
    dbutil.migrate(url, models_dir)
    port = free_port()
    env = base_env(tmp_path, DATABASE_URL=url, ML_MODELS_DIR=str(models_dir), ML_ADMIN_TOKEN=TOKEN,
                   ML_SCHEDULER_ENABLED="false", GUNICORN_BIND=f"127.0.0.1:{port}", GUNICORN_WORKERS="2",
                   GUNICORN_THREADS="2", PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prom"))
    proc = start([str(VENV_BIN / "gunicorn"), "-c", "gunicorn.conf.py", "app:app"], env, log)
    try:
        wait_until(lambda: http_status(f"http://127.0.0.1:{port}/health") == 200, 60, "gunicorn up", [proc], [log])
        server = Server(port, log)
        source = "127.0.0.9"
        cookie, csrf = sign_in_form(server, source)
        signed_in = post_sign_in(server, source, cookie, csrf, TOKEN)
        assert signed_in.status == 302
        session = {"Cookie": signed_in.headers["set-cookie"].split(";")[0]}
        # Fresh connections: both workers serve some of these.
        assert [server.request("GET", "/ml/dashboard", source=source, headers=session).status
                for _ in range(16)] == [200] * 16
        assert "SECRET_KEY is not set" in log.read_text()
    finally:
        stop_group(proc)
        dbutil.drop_pg_database(name)
