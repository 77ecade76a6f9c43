"""Shared helpers of the model-store tests: small real models, legacy databases,
event capture, tmpfs mounts and injected database faults.

Everything here produces *real* conditions (real pickles, real mounts, real
locks and triggers in the test database); nothing is mocked.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import sqlite3
import subprocess
import sys
import threading
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import pytest
import sqlalchemy as sa
from sklearn.ensemble import IsolationForest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = np.linspace(-4.0, 4.0, 41).reshape(-1, 1)


def make_model(seed: int = 0, n_estimators: int = 5) -> IsolationForest:
    """A small fitted Isolation Forest; different seeds give different scores."""
    rng = np.random.RandomState(seed)
    data = rng.normal(loc=seed % 7, scale=1.0 + seed % 3, size=(64, 1))
    return IsolationForest(n_estimators=n_estimators, max_samples=32, random_state=seed).fit(data)


def scores(model: Any) -> np.ndarray:
    return model.score_samples(SAMPLE)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def listing(directory: Path) -> dict[str, tuple[int, str]]:
    """Every entry of ``directory`` with its size and content hash (hidden files too)."""
    out: dict[str, tuple[int, str]] = {}
    for entry in sorted(Path(directory).iterdir()):
        if entry.is_file() and not entry.is_symlink():
            data = entry.read_bytes()
            out[entry.name] = (len(data), sha256(data))
        else:
            out[entry.name] = (-1, "not a regular file")
    return out


def model_files(directory: Path) -> set[str]:
    return {p.name for p in Path(directory).iterdir() if p.name.endswith((".pkl", ".pkl.gz"))}


def temp_files(directory: Path) -> set[str]:
    return {p.name for p in Path(directory).iterdir() if p.name.startswith(".tmp-")}


class Booby:
    """A valid pickle whose *unpickling* creates a directory: proof it was (not) unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def booby_pickle(marker: Path) -> bytes:
    return pickle.dumps(Booby(marker), protocol=5)


class EventLog:
    """Collects ``utils.ml.events`` emitted while active (the real listener mechanism)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def __call__(self, event: str, fields: dict[str, Any]) -> None:
        with self._lock:
            self.items.append((event, dict(fields)))

    def of(self, name: str) -> list[dict[str, Any]]:
        with self._lock:
            return [fields for event, fields in self.items if event == name]


@contextmanager
def recorded_events() -> Iterator[EventLog]:
    from utils.ml import events

    log = EventLog()
    events.add_listener(log)
    try:
        yield log
    finally:
        events.remove_listener(log)


# ------------------------------------------------------------------ mounts
@contextmanager
def tmpfs(path: Path, size: str = "1m", read_only: bool = False) -> Iterator[Path]:
    """Mount a fresh tmpfs on ``path`` (real filesystem limits: size, read-only)."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size},mode=755" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, read_only: bool) -> None:
    subprocess.run(["mount", "-o", f"remount,{'ro' if read_only else 'rw'}", str(path)], check=True)


# ------------------------------------------------------------------ managers
def new_manager(app, **options: Any):
    """A separate ModelManager (own cache) on the app's database and directory."""
    from utils.extensions import db
    from utils.ml.model_manager import ModelManager

    with app.app_context():
        return ModelManager(db, models_dir=app.config["ML_MODELS_DIR"], **options)


def backend_of(app) -> str:
    return "postgresql" if app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql") else "sqlite"


def sql(url: str, statement: str, params: Optional[dict[str, Any]] = None, autocommit: bool = True) -> list[tuple]:
    """Run one statement on its own connection (outside the app's session)."""
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT" if autocommit and url.startswith("postgresql")
                              else None)
    try:
        with engine.begin() as conn:
            result = conn.execute(sa.text(statement), params or {})
            return [tuple(r) for r in result] if result.returns_rows else []
    finally:
        engine.dispose()


def sqlite_path(url: str) -> str:
    return sa.engine.make_url(url).database


@contextmanager
def sqlite_reader_lock(url: str) -> Iterator[None]:
    """Hold a SHARED lock (an open read transaction) on an SQLite file.

    Writers can still write, but their COMMIT needs an EXCLUSIVE lock and
    fails with "database is locked" once their busy timeout runs out: a real
    commit failure.
    """
    conn = sqlite3.connect(sqlite_path(url), isolation_level=None)
    try:
        conn.execute("BEGIN")
        conn.execute("SELECT count(*) FROM ml_models").fetchall()
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


@contextmanager
def pg_commit_refused(url: str, table: str, operation: str) -> Iterator[None]:
    """A deferred constraint trigger that makes COMMIT fail (check_violation) after ``operation`` on ``table``."""
    sql(url, f"""
        CREATE OR REPLACE FUNCTION test_refuse_commit() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'injected: commit refused by test trigger' USING ERRCODE = 'check_violation'; END $$;
        CREATE CONSTRAINT TRIGGER test_refuse_commit AFTER {operation} ON {table}
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION test_refuse_commit();
    """)
    try:
        yield
    finally:
        # A session left idle in a transaction would make the DROP wait forever: fail fast instead.
        sql(url, f"SET lock_timeout = '10s'; DROP TRIGGER IF EXISTS test_refuse_commit ON {table}; "
                 "DROP FUNCTION IF EXISTS test_refuse_commit();")


# ------------------------------------------------------------------ legacy databases
LEGACY_TABLE = sa.table(
    "ml_models",
    sa.column("id", sa.Integer), sa.column("model_type", sa.String), sa.column("metric_type", sa.String),
    sa.column("model_data", sa.LargeBinary), sa.column("parameters", sa.JSON),
    sa.column("training_date", sa.DateTime(timezone=True)), sa.column("accuracy", sa.Float),
    sa.column("precision", sa.Float), sa.column("recall", sa.Float), sa.column("is_active", sa.Boolean),
    sa.column("created_at", sa.DateTime(timezone=True)),
)


def legacy_rows(specs: list[tuple[str, bool]], start_seed: int = 0) -> list[dict[str, Any]]:
    """Rows as the legacy code wrote them: (metric_type, is_active) -> pickled IsolationForest BLOB."""
    base = datetime(2025, 11, 1, 12, 0, tzinfo=timezone.utc)
    rows = []
    for i, (metric_type, active) in enumerate(specs):
        seed = start_seed + i
        rows.append({
            "model_type": "isolation_forest", "metric_type": metric_type,
            "model_data": pickle.dumps(make_model(seed), protocol=4),
            "parameters": {"contamination": 0.1, "n_estimators": 5, "random_state": seed},
            "training_date": base + timedelta(hours=i), "accuracy": None, "precision": None, "recall": None,
            "is_active": active, "created_at": base + timedelta(hours=i),
        })
    return rows


def build_legacy_database(url: str, models_dir: Path, rows: list[dict[str, Any]], upgrade: bool = True) -> None:
    """Create the legacy schema (revision 0001), insert BLOB rows, then (optionally) upgrade to head."""
    from tests import dbutil

    dbutil.migrate(url, models_dir, revision="0001_legacy_schema")
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(LEGACY_TABLE.insert(), rows)
    finally:
        engine.dispose()
    if upgrade:
        dbutil.migrate(url, models_dir)


def table_dump(url: str, table: str = "ml_models") -> list[tuple]:
    """Every row of ``table``, every column (BLOBs hashed), ordered by id."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            result = conn.execute(sa.text(f"SELECT * FROM {table} ORDER BY 1"))
            return [tuple(sha256(bytes(v)) if isinstance(v, (bytes, memoryview)) else v for v in row)
                    for row in result]
    finally:
        engine.dispose()


def run_python(code: str, env: Optional[dict[str, str]] = None, **kwargs: Any) -> subprocess.Popen:
    """Start ``python -c code`` in the repository (caller kills it)."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen([sys.executable, "-c", code], cwd=str(ROOT), env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)
