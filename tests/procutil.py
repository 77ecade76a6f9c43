"""Real processes for multi-process tests: start, signal, wait, read their JSON logs.

Every process is started in its own session so teardown ends exactly that
process group (by its id), whatever state the test left it in.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = ROOT / ".venv" / "bin"


# What a fresh checkout does not have: git state, local databases, caches, the venv.
COPY_SKIP = {".venv", "instance", ".pytest_cache", "__pycache__", "test-artifacts", ".git"}


def copy_tree(source: Path, target: Path) -> Path:
    """The project's files as a fresh checkout has them (no model files, no bench results), ``.venv`` linked."""
    for path in source.rglob("*"):
        relative = path.relative_to(source)
        if COPY_SKIP & set(relative.parts) or path.is_dir():
            continue
        if relative.parts[0] == "ml_models" and path.name not in (".gitkeep", "README.md"):
            continue
        if relative.parts[0] == "bench" and "results" in relative.parts:
            continue
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(path.read_bytes())
        destination.chmod(path.stat().st_mode & 0o777)
    (target / ".venv").symlink_to(source / ".venv")
    return target


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def base_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """A clean environment (our venv first on PATH) plus ``overrides``."""
    env = {"PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8",
           "PYTHONUNBUFFERED": "1"}
    env.update(overrides)
    return env


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop_group(proc: subprocess.Popen) -> None:
    """Teardown: SIGKILL the process group we created, if anything is left of it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover - a zombie we cannot reap
        pass


def terminate(proc: subprocess.Popen, timeout: float = 20.0) -> int:
    """SIGTERM ``proc`` and return its exit status (fails the test if it hangs)."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"pid {proc.pid} did not exit within {timeout}s of SIGTERM")


def wait_until(condition: Callable[[], Any], timeout: float, what: str,
               procs: Iterable[subprocess.Popen] = (), logs: Iterable[Path] = ()) -> Any:
    """Poll ``condition`` until it returns something truthy; fail with the logs otherwise."""
    deadline = time.monotonic() + timeout
    procs, logs = list(procs), list(logs)
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        for proc in procs:
            if proc.poll() is not None:
                pytest.fail(f"pid {proc.pid} exited ({proc.returncode}) before {what}:\n{tail(logs)}")
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout}s waiting for {what}:\n{tail(logs)}")


def tail(logs: Iterable[Path], lines: int = 40) -> str:
    out = []
    for log in logs:
        if log.exists():
            text = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {log.name} ---\n" + "\n".join(text))
    return "\n".join(out)


def http_status(url: str) -> Optional[int]:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def json_events(*logs: Path, name: Optional[str] = None) -> list[dict[str, Any]]:
    """The ``utils.ml.events`` records (JSON lines with an ``event``) in ``logs``."""
    found = []
    for log in logs:
        for line in log.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if "event" in record and (name is None or record["event"] == name):
                found.append(record)
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
