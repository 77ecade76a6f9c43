"""The one place the environment is read.

Every setting the service uses is an attribute of :class:`Config`; modules
read ``current_app.config[...]``, never ``os.environ``.  Tests pass a mapping
to ``create_app(test_config)`` that overrides these values.
"""
from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent


def _bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{name}={raw!r}: expected true or false")


def _int(name: str, default: int, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected a whole number") from None
    if value < minimum:
        raise ValueError(f"{name}={raw!r}: must be at least {minimum}")
    return value


def _float(name: str, default: float, minimum: float = 0.0) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected a number") from None
    if value < minimum:
        raise ValueError(f"{name}={raw!r}: must be at least {minimum}")
    return value


def normalise_database_url(url: str) -> str:
    """Map the contract's PostgreSQL spellings onto the psycopg2 driver we ship.

    ``postgres://`` is what some platforms (Coolify, Heroku) emit, and a bare
    ``postgresql://`` means psycopg 3 to SQLAlchemy 2.1, which we do not install.
    """
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix):]
    return url


class Config:
    """Settings read from the environment once, at import of the class body."""

    SECRET_KEY = os.environ.get("SECRET_KEY") or os.environ.get("ML_ADMIN_TOKEN") or os.urandom(32).hex()
    SQLALCHEMY_DATABASE_URI = normalise_database_url(
        os.environ.get("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'instance' / 'ml.sqlite3'}"
    )
    SQLALCHEMY_TRACK_MODIFICATIONS = False
    # Dashboard sign-in cookie (Flask's signed session): not readable by scripts,
    # not sent on cross-site POSTs, Secure when served over HTTPS.
    SESSION_COOKIE_HTTPONLY = True
    SESSION_COOKIE_SAMESITE = "Lax"
    SESSION_COOKIE_SECURE = _bool("ML_DASHBOARD_SECURE_COOKIE", False)
    PERMANENT_SESSION_LIFETIME = timedelta(hours=_float("ML_DASHBOARD_SESSION_HOURS", 12.0, minimum=0.01))
    # /metrics of `flask ml scheduler` (a process without a web server): 0 = off.
    ML_METRICS_PORT = _int("ML_METRICS_PORT", 0)
    ML_METRICS_ADDR = os.environ.get("ML_METRICS_ADDR") or "0.0.0.0"

    # One JSON object per log line (json) or human-readable lines (text).
    ML_LOG_FORMAT = os.environ.get("ML_LOG_FORMAT") or "json"
    ML_LOG_LEVEL = os.environ.get("ML_LOG_LEVEL") or "INFO"

    ML_ENABLED = _bool("ML_ENABLED", True)
    ML_MODELS_DIR = os.environ.get("ML_MODELS_DIR") or str(BASE_DIR / "ml_models")
    ML_SCHEDULER_ENABLED = _bool("ML_SCHEDULER_ENABLED", False)
    ML_ADMIN_TOKEN = os.environ.get("ML_ADMIN_TOKEN") or None
    ML_KEEP_VERSIONS = _int("ML_KEEP_VERSIONS", 3, minimum=1)
    ML_MAX_MODEL_MB = _float("ML_MAX_MODEL_MB", 10.0, minimum=0.001)
    # Store new models gzip-compressed (.pkl.gz). Off by default: the
    # benchmarks show decompression costs more load time than it saves disk.
    ML_COMPRESS_MODELS = _bool("ML_COMPRESS_MODELS", False)
    # Retry delays (seconds) for transient read errors: the seed's 1, 2, 4.
    ML_LOAD_RETRY_DELAYS = tuple(
        float(x) for x in (os.environ.get("ML_LOAD_RETRY_DELAYS") or "1,2,4").split(",") if x.strip()
    )
    ML_CACHE_SIZE = _int("ML_CACHE_SIZE", 32, minimum=0)
    # A cached model is re-validated against the database at least this often,
    # even when no activation was signalled through the models directory.
    ML_CACHE_TTL_SECONDS = _float("ML_CACHE_TTL_SECONDS", 30.0)
    # Orphan files (no row) younger than this are left alone: a save may be
    # between its rename and its commit.
    ML_ORPHAN_GRACE_SECONDS = _float("ML_ORPHAN_GRACE_SECONDS", 3600.0)
    ML_DISK_WARN_PERCENT = _float("ML_DISK_WARN_PERCENT", 90.0)

    # Scheduler intervals (seconds).
    ML_SCAN_INTERVAL_SECONDS = _float("ML_SCAN_INTERVAL_SECONDS", 3600.0, minimum=1.0)
    ML_TRAIN_INTERVAL_SECONDS = _float("ML_TRAIN_INTERVAL_SECONDS", 86400.0, minimum=1.0)
    ML_CLEANUP_INTERVAL_SECONDS = _float("ML_CLEANUP_INTERVAL_SECONDS", 86400.0, minimum=1.0)
    # Leader election and job locks: how often each process checks or renews
    # its lock, and (SQLite) how long a lease lives without renewal, i.e. how
    # soon another process takes over from a dead leader.
    ML_SCHEDULER_HEARTBEAT_SECONDS = _float("ML_SCHEDULER_HEARTBEAT_SECONDS", 5.0, minimum=0.1)
    ML_SCHEDULER_LEASE_SECONDS = _float("ML_SCHEDULER_LEASE_SECONDS", 30.0, minimum=1.0)

    # Training.
    ML_TRAIN_WINDOW_DAYS = _int("ML_TRAIN_WINDOW_DAYS", 60, minimum=1)
    ML_MIN_TRAIN_SAMPLES = _int("ML_MIN_TRAIN_SAMPLES", 50, minimum=2)
    # Isolation Forest: expected share of anomalies (sets the alert threshold)
    # and number of trees.  See README "Anomaly pipeline" for how 0.02 was chosen.
    ML_CONTAMINATION = _float("ML_CONTAMINATION", 0.02, minimum=0.0001)
    ML_N_ESTIMATORS = _int("ML_N_ESTIMATORS", 200, minimum=10)
    # Observations scored (and alerts committed, watermark advanced) per scan transaction.
    ML_SCAN_BATCH_SIZE = _int("ML_SCAN_BATCH_SIZE", 20000, minimum=100)
