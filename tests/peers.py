"""Real peers for the notification tests: an HTTP receiver (a subprocess) and an SMTP server.

``python -m tests.peers http --port P --log FILE [--status 200] [--delay 0]``
runs a stdlib ``ThreadingHTTPServer`` that appends every POST it gets (path,
headers, body) as one JSON line to FILE *before* answering, then waits
``delay`` seconds and answers ``status``.  ``POST /_control`` with
``{"status": ..., "delay": ...}`` changes that on the fly.

``python -m tests.peers deliver`` runs one ``deliver_pending`` pass for the
database in ``DATABASE_URL`` with the ``ML_NOTIFY_*`` environment (the sender
the tests kill).

:class:`SmtpPeer` runs aiosmtpd in a thread with STARTTLS required (a
throw-away self-signed certificate made by :func:`self_signed_cert`) and
AUTH required, and keeps every message it accepted.
"""
from __future__ import annotations

import argparse
import datetime as dt
import email
import email.policy
import ipaddress
import json
import os
import socket
import ssl
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------- HTTP receiver
def _serve_http(port: int, log: Path, status: int, delay: float) -> None:
    mode = {"status": status, "delay": delay}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path == "/_control":
                mode.update(json.loads(body))
                return self._answer(200, b"ok")
            record = {"path": self.path, "headers": dict(self.headers.items()),
                      "body": body.decode("utf-8"), "t": time.time()}
            with lock, open(log, "a", encoding="utf-8") as out:
                out.write(json.dumps(record) + "\n")
                out.flush()
                os.fsync(out.fileno())
            status_now, delay_now = mode["status"], mode["delay"]
            if delay_now:
                time.sleep(delay_now)
            self._answer(status_now, b"received" if status_now < 300 else b"refused on purpose")

        def _answer(self, status_code: int, text: bytes) -> None:
            self.send_response(status_code)
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.serve_forever()


@dataclass
class HttpReceiver:
    """The receiver subprocess on a fixed port: start, stop (SIGKILL), start again, read what it got."""

    workdir: Path
    port: int = 0
    proc: Any = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        from tests.procutil import free_port

        self.port = self.port or free_port()
        self.log = self.workdir / f"received_{self.port}.jsonl"
        self.log.touch()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self, status: int = 200, delay: float = 0.0) -> None:
        from tests import procutil

        args = [sys.executable, "-m", "tests.peers", "http", "--port", str(self.port), "--log", str(self.log),
                "--status", str(status), "--delay", str(delay)]
        self.proc = procutil.start(args, procutil.base_env(self.workdir), self.workdir / "receiver.out")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError((self.workdir / "receiver.out").read_text())
                time.sleep(0.05)
        raise RuntimeError(f"receiver on port {self.port} did not start")

    def stop(self) -> None:
        from tests import procutil

        if self.proc is not None:
            procutil.stop_group(self.proc)
            self.proc = None

    def set_mode(self, status: int = 200, delay: float = 0.0) -> None:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/_control", method="POST",
                                         data=json.dumps({"status": status, "delay": delay}).encode())
        urllib.request.urlopen(request, timeout=5).read()

    def received(self) -> list[dict[str, Any]]:
        lines = self.log.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]


# --------------------------------------------------------------- SMTP server
def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A throw-away certificate for 127.0.0.1 and localhost, its own CA; returns (cert, key) paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ml-notify test SMTP")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class SmtpPeer:
    """aiosmtpd on 127.0.0.1 (own thread): STARTTLS and AUTH required; ``messages`` is what it accepted."""

    def __init__(self, directory: Path, user: str, password: str) -> None:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult

        from tests.procutil import free_port

        self.cert, key = self_signed_cert(directory)
        self.port = free_port()
        self.messages: list[email.message.EmailMessage] = []
        self.sessions: list[dict[str, Any]] = []
        peer = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's name
                peer.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
                peer.sessions.append({"tls": session.ssl is not None, "authenticated": session.authenticated,
                                      "login": session.auth_data,
                                      "mail_from": envelope.mail_from, "rcpt_tos": list(envelope.rcpt_tos)})
                return "250 OK"

        def authenticate(server, session, envelope, mechanism, auth_data):
            ok = auth_data.login == user.encode() and auth_data.password == password.encode()
            return AuthResult(success=ok, handled=False, auth_data=auth_data.login if ok else None)

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, key)
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, tls_context=context,
                                     require_starttls=True, auth_required=True, auth_require_tls=True,
                                     authenticator=authenticate, ready_timeout=10)

    def __enter__(self) -> "SmtpPeer":
        self.controller.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.controller.stop()


# ---------------------------------------------------------------- the sender
def _deliver_once() -> None:
    sys.path.insert(0, str(ROOT))
    from tests import dbutil
    from utils.ml import notify

    app = dbutil.make_app(os.environ["DATABASE_URL"], Path(os.environ["ML_MODELS_DIR"]))
    notify.init_app(app)
    print(json.dumps(notify.deliver_pending(app).as_dict()), flush=True)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.peers")
    sub = parser.add_subparsers(dest="what", required=True)
    http = sub.add_parser("http")
    http.add_argument("--port", type=int, required=True)
    http.add_argument("--log", type=Path, required=True)
    http.add_argument("--status", type=int, default=200)
    http.add_argument("--delay", type=float, default=0.0)
    sub.add_parser("deliver")
    args = parser.parse_args(argv)
    if args.what == "http":
        _serve_http(args.port, args.log, args.status, args.delay)
    else:
        _deliver_once()


if __name__ == "__main__":
    main()
