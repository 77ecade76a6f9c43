"""Liveness (``/health``) and readiness (``/ready``) probes.

``/health`` touches nothing (no database, no pool, no disk): it answers as
long as the process can serve a request, so a liveness probe never restarts
a healthy app because its database is down.

``/ready`` checks the database under the ``probe`` bounds (answer within
``ML_READY_TIMEOUT_SECONDS``, or at once while the breaker is open; see
:mod:`utils.db_bounds`), the models directory (free space at least
``ML_READY_MIN_FREE_MB`` and a real 1-byte write + fsync) and, with
``ML_STORE_URL``, the bucket.  It is unauthenticated, so it names no path,
host or URL: only what failed and why.
"""
from __future__ import annotations

import shutil
import time

from flask import Blueprint, Flask, current_app, jsonify
from sqlalchemy import text

from utils.db_bounds import PROBE, bounds_profile
from utils.extensions import db
from utils.ml.store import ModelStoreError, open_store
from utils.ml.store.setup import store_readiness

bp = Blueprint("health", __name__)


@bp.get("/health")
def health():
    """The process is up; it touches nothing else."""
    return jsonify({"status": "ok"})


def _database_check() -> dict:
    started = time.perf_counter()
    try:
        with bounds_profile(PROBE):
            db.session.execute(text("SELECT 1"))
            db.session.rollback()
        return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 2)}
    except Exception as exc:  # any driver error means "not ready"
        try:
            db.session.rollback()
        except Exception:  # the connection is gone; the pool replaces it
            pass
        from utils.db_bounds import DatabaseUnavailable

        # The class and our own wording only: a driver message names the host and port.
        reason = str(exc) if isinstance(exc, DatabaseUnavailable) else f"{exc.__class__.__name__} (see the server log)"
        current_app.logger.warning("readiness: database check failed: %s", str(exc).splitlines()[0][:300] if str(exc) else exc)
        return {"ok": False, "error": reason, "ms": round((time.perf_counter() - started) * 1000, 2)}


def _models_dir_check() -> dict:
    minimum_mb = float(current_app.config["ML_READY_MIN_FREE_MB"])
    root = None
    try:
        store = open_store(current_app.config["ML_MODELS_DIR"])
        root = store.local_root
        if root is not None:
            free_mb = shutil.disk_usage(root).free / 1024 ** 2
            if free_mb < minimum_mb:
                return {"ok": False, "free_mb": round(free_mb, 1),
                        "error": f"{free_mb:.1f} MB free, below ML_READY_MIN_FREE_MB={minimum_mb:g}"}
        store.check_writable()
        return {"ok": True}
    except (OSError, ModelStoreError, ValueError) as exc:
        current_app.logger.warning("readiness: models directory check failed: %s", exc)
        # Unauthenticated: never the path itself.
        message = str(exc).replace(f" {root}", "") if root is not None else str(exc)
        for secret in (str(root), current_app.config["ML_MODELS_DIR"]):
            message = message.replace(secret, "<models dir>")
        return {"ok": False, "error": message}


def readiness_checks() -> dict[str, dict]:
    """Run each readiness check; every entry has ``ok`` and, when failing, ``error``."""
    checks: dict[str, dict] = {"database": _database_check(), "models_dir": _models_dir_check()}
    store = store_readiness(current_app)  # ML_STORE_URL only: a probe object, its answer kept a few seconds
    if store is not None:
        checks["model_store"] = store
    return checks


@bp.get("/ready")
def ready():
    """200 when the database answers, the models directory has room and takes a write and
    (ML_STORE_URL) the bucket takes a write, else 503 naming the failed checks."""
    checks = readiness_checks()
    failed = [name for name, check in checks.items() if not check["ok"]]
    body = {"status": "ready" if not failed else "not ready", "checks": checks}
    if failed:
        body["failed"] = failed
        body["error"] = "not ready: " + ", ".join(f"{name} ({checks[name]['error']})" for name in failed)
        return jsonify(body), 503
    return jsonify(body), 200


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
