"""The bench's own world: a throw-away PostgreSQL database, a models directory, the app.

Nothing outside it is touched: the database is created under a fresh
``mlbench_*`` name (``tests/dbutil.py``), migrated with the real chain and
dropped at the end; the models directory is a temporary directory.
"""
from __future__ import annotations

import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests import dbutil  # noqa: E402  (the same helpers the test suite uses)

DB_PREFIX = "mlbench"


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def ram_gib() -> Optional[float]:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024 / 1024, 1)
    return None


def load_average() -> Optional[list[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def machine_description(server_version: Optional[str]) -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, RAM and every version that matters."""
    import joblib
    import numpy
    import psycopg2
    import sklearn
    import sqlalchemy

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "ram_gib": ram_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "sklearn": sklearn.__version__,
        "numpy": numpy.__version__,
        "joblib": joblib.__version__,
        "sqlalchemy": sqlalchemy.__version__,
        "psycopg2": psycopg2.__version__.split()[0],
        "postgresql": server_version,
        "git_commit": git_commit(),
        "load_average_at_start": load_average(),
    }


@dataclass
class BenchEnv:
    """One PostgreSQL database and one models directory, owned by this run."""

    db_name: str
    url: str
    models_dir: Path
    workdir: Path
    app: Any = None
    log_path: Optional[Path] = None
    _handler: Optional[logging.Handler] = field(default=None, repr=False)
    _saved_handlers: list[logging.Handler] = field(default_factory=list, repr=False)

    @classmethod
    def create(cls) -> "BenchEnv":
        problem = dbutil.pg_problem()
        if problem:
            raise SystemExit(f"bench: PostgreSQL is required at {dbutil.PG_ADMIN_URL}: {problem}")
        workdir = Path(tempfile.mkdtemp(prefix="mlbench-"))
        models_dir = workdir / "ml_models"
        models_dir.mkdir(mode=0o755)
        name = dbutil.create_pg_database(prefix=DB_PREFIX)
        env = cls(db_name=name, url=dbutil.pg_url(name), models_dir=models_dir, workdir=workdir)
        try:
            env._log_like_production()
            dbutil.migrate(env.url, workdir / "migrate_models")
            env.app = dbutil.make_app(env.url, models_dir)
        except BaseException:
            env.close()
            raise
        return env

    def _log_like_production(self) -> None:
        """Production logs every event at INFO as a JSON line: pay that cost here too.

        The lines go to a file in the work directory instead of the terminal:
        the root logger's handlers are swapped for that file's until ``close``
        (the bench's apps are testing apps, which configure no logging).
        """
        from utils.logging_setup import JsonFormatter

        self.log_path = self.workdir / "bench-events.log"
        handler = logging.FileHandler(self.log_path)
        handler.setFormatter(JsonFormatter())
        root = logging.getLogger()
        self._saved_handlers = list(root.handlers)
        root.handlers = [handler]
        root.setLevel(logging.INFO)
        self._handler = handler

    def server_version(self) -> Optional[str]:
        import sqlalchemy as sa

        engine = sa.create_engine(self.url)
        try:
            with engine.connect() as conn:
                return conn.execute(sa.text("SHOW server_version")).scalar()
        finally:
            engine.dispose()

    def close(self) -> None:
        if self._handler is not None:
            logging.getLogger().handlers = self._saved_handlers
            self._handler.close()
        if self.app is not None:
            dbutil.dispose(self.app)
        dbutil.drop_pg_database(self.db_name)
        shutil.rmtree(self.workdir, ignore_errors=True)


def write_report(report: dict[str, Any], started: float, output: Path, render: Any) -> None:
    """Stamp the run's duration and end load average on ``report``, write it as JSON, print ``render(report)``."""
    import json
    import time

    report["duration_seconds"] = round(time.perf_counter() - started, 1)
    report["machine"]["load_average_at_end"] = load_average()
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(render(report))
    print(f"wrote {output}")
