"""The soak's own world: a private PostgreSQL cluster, the migrated and seeded app, gunicorn.

Everything listens on 127.0.0.1 only and lives in one temporary directory;
:meth:`SoakStack.close` (also run at interpreter exit and on SIGTERM/SIGINT by
the soak command) ends gunicorn's process group and the cluster and removes
the directory, whatever state the run left them in.

It talks to the app only through its command line (``flask db upgrade``,
``flask ml demo-data``, ``flask ml train``) and HTTP, as an operator does.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.pgcluster import PgCluster, children, free_port  # noqa: E402  (the fault tests' cluster)

VENV_BIN = ROOT / ".venv" / "bin"


def rss_kib(pid: int) -> Optional[int]:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@dataclass
class AppSettings:
    """The environment gunicorn runs with (short job intervals so jobs run during the soak)."""

    workers: int = 2
    threads: int = 4
    scan_interval: float = 10.0
    train_interval: float = 45.0
    cleanup_interval: float = 30.0
    demo_rooms: int = 40
    demo_products: int = 20
    demo_attendants: int = 6
    demo_days: int = 21
    extra_env: dict[str, str] = field(default_factory=dict)


class SoakStack:
    """One cluster, one database, one models directory, one gunicorn."""

    def __init__(self, settings: AppSettings, say=lambda message: None) -> None:
        self.settings = settings
        self.say = say
        self.workdir = Path(tempfile.mkdtemp(prefix="mlsoak-"))
        self.models_dir = self.workdir / "ml_models"
        self.models_dir.mkdir()
        self.prom_dir = self.workdir / "prom"
        self.log_path = self.workdir / "gunicorn.log"
        self.token = secrets.token_urlsafe(32)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.cluster: Optional[PgCluster] = None
        self.database = ""
        self.gunicorn: Optional[subprocess.Popen] = None
        self._closed = False

    # -------------------------------------------------------------- set-up
    @property
    def database_url(self) -> str:
        assert self.cluster is not None
        return self.cluster.url(self.database)

    def env(self) -> dict[str, str]:
        s = self.settings
        env = {
            "PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.workdir),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "FLASK_APP": "app:app",
            "DATABASE_URL": self.database_url,
            "ML_MODELS_DIR": str(self.models_dir),
            "ML_ADMIN_TOKEN": self.token,
            "SECRET_KEY": secrets.token_hex(32),
            "ML_SCHEDULER_ENABLED": "true",
            "ML_SCAN_INTERVAL_SECONDS": str(s.scan_interval),
            "ML_TRAIN_INTERVAL_SECONDS": str(s.train_interval),
            "ML_CLEANUP_INTERVAL_SECONDS": str(s.cleanup_interval),
            "GUNICORN_BIND": f"127.0.0.1:{self.port}",
            "GUNICORN_WORKERS": str(s.workers),
            "GUNICORN_THREADS": str(s.threads),
            "PROMETHEUS_MULTIPROC_DIR": str(self.prom_dir),
        }
        env.update(s.extra_env)
        return env

    def _flask(self, *args: str, timeout: float = 600) -> str:
        env = dict(self.env(), ML_LOG_LEVEL="WARNING", ML_SCHEDULER_ENABLED="false")
        env.pop("PROMETHEUS_MULTIPROC_DIR")  # gunicorn's on_starting creates it; a CLI needs none
        done = subprocess.run([str(VENV_BIN / "flask"), *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"flask {' '.join(args)} failed ({done.returncode}): "
                               f"{(done.stderr or done.stdout).strip()[-1500:]}")
        return done.stdout

    def prepare(self) -> None:
        """Start the cluster, create and migrate the database, seed demo data and train once."""
        s = self.settings
        self.say("starting a private PostgreSQL cluster")
        self.cluster = PgCluster.create()
        self.database = self.cluster.create_database("mlsoak")
        self.say(f"flask db upgrade ({self.cluster.url(self.database)})")
        self._flask("db", "upgrade")
        self.say("flask ml demo-data")
        self._flask("ml", "demo-data", "--rooms", str(s.demo_rooms), "--products", str(s.demo_products),
                    "--attendants", str(s.demo_attendants), "--days", str(s.demo_days))
        self.say("flask ml train")
        self._flask("ml", "train")

    def start_gunicorn(self, timeout: float = 60.0) -> None:
        """Start ``gunicorn -c gunicorn.conf.py app:app`` (the quick start's command) and wait for /health."""
        with open(self.log_path, "ab") as log:
            self.gunicorn = subprocess.Popen(
                [str(VENV_BIN / "gunicorn"), "-c", "gunicorn.conf.py", "app:app"], cwd=ROOT, env=self.env(),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.gunicorn.poll() is not None:
                raise RuntimeError(f"gunicorn exited ({self.gunicorn.returncode}):\n{self.log_tail()}")
            if self.http_status("/ready") == 200 and len(self.worker_pids()) == self.settings.workers:
                return
            time.sleep(0.2)
        raise RuntimeError(f"gunicorn was not ready within {timeout:g}s:\n{self.log_tail()}")

    # ---------------------------------------------------------- observing
    def http_status(self, path: str, timeout: float = 3.0) -> Optional[int]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=timeout) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return None

    def worker_pids(self) -> list[int]:
        return children(self.gunicorn.pid) if self.gunicorn and self.gunicorn.poll() is None else []

    def worker_rss_kib(self) -> dict[int, Optional[int]]:
        return {pid: rss_kib(pid) for pid in self.worker_pids()}

    def connections(self) -> Optional[dict[str, int]]:
        """Client connections to the app's database now, by application_name (the request pool
        has none; the lock connections say ml-scheduler-leader / ml-job-lock); None when the
        server does not answer."""
        try:
            rows = self.cluster.query(
                "SELECT coalesce(nullif(application_name, ''), 'app pool'), count(*) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
                " GROUP BY 1 ORDER BY 1", (self.database,))
        except Exception:  # down, frozen or restarting: no sample
            return None
        return {name: int(count) for name, count in rows}

    def log_bytes(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # ----------------------------------------------------------- stopping
    def stop_gunicorn(self, timeout: float = 40.0) -> Optional[float]:
        """SIGTERM gunicorn's master (as Ctrl-C/`docker stop` do); seconds until it exited, None if killed."""
        proc, self.gunicorn = self.gunicorn, None
        if proc is None or proc.poll() is not None:
            return None
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
            return round(time.monotonic() - started, 2)
        except subprocess.TimeoutExpired:
            return None
        finally:
            _kill_group(proc)

    def close(self) -> None:
        """End everything this stack started and delete its directory (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.cluster is not None:
                self.cluster.thaw()  # a frozen database would hold gunicorn's shutdown up
            if self.gunicorn is not None:
                self.stop_gunicorn(timeout=30.0)
        finally:
            if self.cluster is not None:
                self.cluster.close()
            shutil.rmtree(self.workdir, ignore_errors=True)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL what is left of the process group we started (workers included)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover
        pass
