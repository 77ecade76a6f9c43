"""Liveness (``/health``) and readiness (``/ready``) probes."""
from __future__ import annotations

import time
from pathlib import Path

from flask import Blueprint, Flask, current_app, jsonify
from sqlalchemy import text

from utils.extensions import db
from utils.ml.store import ModelStoreError, open_store
from utils.ml.store.setup import store_readiness

bp = Blueprint("health", __name__)


@bp.get("/health")
def health():
    """The process is up; it touches nothing else."""
    return jsonify({"status": "ok"})


def _public_error(exc: BaseException, hide: tuple[str, ...] = ()) -> str:
    """What an unauthenticated caller may see of a failed check: never a path or a database host.

    A database error is named by its class only (the driver's text names the
    host); other messages have each string of ``hide`` replaced by ``ML_MODELS_DIR``.
    """
    if hasattr(exc, "orig"):  # SQLAlchemy's wrapper of a driver error
        return exc.__class__.__name__
    message = str(exc)
    for secret in sorted({h for h in hide if h}, key=len, reverse=True):
        message = message.replace(secret, "ML_MODELS_DIR")
    return message


def readiness_checks() -> dict[str, dict]:
    """Run each readiness check; every entry has ``ok`` and, when failing, ``error``."""
    checks: dict[str, dict] = {}
    started = time.perf_counter()
    try:
        db.session.execute(text("SELECT 1"))
        db.session.rollback()
        checks["database"] = {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 2)}
    except Exception as exc:  # any driver error means "not ready"
        db.session.rollback()
        checks["database"] = {"ok": False, "error": _public_error(exc)}
    try:
        open_store(current_app.config["ML_MODELS_DIR"]).check_writable()
        checks["models_dir"] = {"ok": True}
    except (OSError, ModelStoreError, ValueError) as exc:
        configured = current_app.config["ML_MODELS_DIR"]
        hide = (configured, str(Path(configured).expanduser().resolve()), configured.removeprefix("file://"))
        checks["models_dir"] = {"ok": False, "error": _public_error(exc, hide)}
    store = store_readiness(current_app)  # ML_STORE_URL only: a probe object, its answer kept a few seconds
    if store is not None:
        checks["model_store"] = store
    return checks


@bp.get("/ready")
def ready():
    """200 when the database answers, the models directory is writable and (ML_STORE_URL) the
    bucket takes a write, else 503 naming the failed checks."""
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
