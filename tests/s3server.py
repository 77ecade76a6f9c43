"""A real S3 server on loopback for the tests: nanio (PyPI), started as a subprocess.

nanio verifies AWS Signature V4 on every request, checks Content-MD5, writes
each object to a temp file and renames it into place (a killed server never
shows a partial object) and keeps its data in a directory, so it can be
SIGKILLed and restarted on the same data.  It does not implement
``If-None-Match`` on PUT (see /work/notes/s3.md).

``S3Server`` starts it on a free port with its own data directory and
credentials, waits (bounded) until a signed request succeeds, and can stop,
SIGKILL and restart it.  The server runs in its own session with
PR_SET_PDEATHSIG, so it dies with the test process even if that is killed;
``running_server`` is the context manager the fixtures use.
"""
from __future__ import annotations

import ctypes
import os
import secrets
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from tests.procutil import VENV_BIN, free_port, tail

REGION = "us-east-1"
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    os.setsid()
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class S3Server:
    """One nanio process on 127.0.0.1 with its own data directory and credentials."""

    def __init__(self, root: Path, access_key: Optional[str] = None, secret_key: Optional[str] = None) -> None:
        self.root = Path(root)
        self.data_dir = self.root / "data"
        self.log = self.root / "nanio.log"
        self.access_key = access_key or "AKTEST" + secrets.token_hex(6).upper()
        self.secret_key = secret_key or secrets.token_urlsafe(30)
        self.port = free_port()
        self.proc: Optional[subprocess.Popen] = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "server not started"
        return self.proc.pid

    def env(self, **overrides: str) -> dict[str, str]:
        """The standard AWS_* variables a process of ours needs to use this server."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": REGION,
                "AWS_EC2_METADATA_DISABLED": "true", **overrides}

    def client(self, secret_key: Optional[str] = None, timeout: float = 5.0):
        """A boto3 client signed with this server's (or the given) secret; no retries."""
        return boto3.session.Session(
            aws_access_key_id=self.access_key, aws_secret_access_key=secret_key or self.secret_key,
            region_name=REGION,
        ).client("s3", endpoint_url=self.endpoint, config=Config(
            connect_timeout=timeout, read_timeout=timeout, retries={"total_max_attempts": 1},
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required", response_checksum_validation="when_required",
        ))

    def start(self, timeout: float = 30.0) -> "S3Server":
        """Start (or restart on the same data and port) and wait until a signed request succeeds."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "HOME": str(self.root), "LANG": "C.UTF-8",
               "NANIO_ACCESS_KEY": self.access_key, "NANIO_SECRET_KEY": self.secret_key}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [str(VENV_BIN / "nanio"), "serve", "--data-dir", str(self.data_dir), "--host", "127.0.0.1",
                 "--port", str(self.port), "--region", REGION, "--no-access-log", "--log-level", "warning"],
                env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
            )
        probe = self.client(timeout=1.0)
        deadline = time.monotonic() + timeout
        while True:
            try:
                probe.list_buckets()
                return self
            except (BotoCoreError, ClientError) as exc:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"nanio exited ({self.proc.returncode}):\n{tail([self.log])}") from exc
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"nanio not ready within {timeout}s ({exc}):\n{tail([self.log])}") from exc
                time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the server's process group (no shutdown of any kind) and reap it."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)

    def restart(self) -> "S3Server":
        self.kill()
        return self.start()

    def create_bucket(self, name: Optional[str] = None) -> str:
        name = name or "b-" + secrets.token_hex(6)
        self.client().create_bucket(Bucket=name)
        return name

    def open_files(self) -> list[str]:
        """Paths the server process has open right now (from /proc): shows a request in flight."""
        fd_dir = Path(f"/proc/{self.pid}/fd")
        found = []
        try:
            fds = list(fd_dir.iterdir())
        except OSError:
            return []
        for fd in fds:
            try:
                found.append(os.readlink(fd))
            except OSError:
                continue
        return found


@contextmanager
def running_server(root: Path) -> Iterator[S3Server]:
    """A started server that is killed on exit, whatever happened inside."""
    server = S3Server(root)
    try:
        yield server.start()
    finally:
        server.kill()
