"""Which model store the settings select, and the readiness probe of that store.

``ML_STORE_URL`` unset: the models live in ``ML_MODELS_DIR`` (the local
store).  ``ML_STORE_URL=s3://bucket/prefix``: they live in the bucket and
``ML_MODELS_DIR`` is this host's bounded cache of it (``ML_S3_CACHE_MB``).
The S3 backend (and boto3) is imported only in that case.

``/ready`` asks :func:`store_readiness`: a real write and delete of a probe
object on S3 costs a round trip and two requests, so the answer is kept for
:data:`PROBE_TTL_SECONDS` and shared by every request of the process.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Mapping, Optional

from utils.ml.store import open_store
from utils.ml.store.base import ModelStore, ModelStoreError

MB = 1024 * 1024
# How long one probe's answer stands (success or failure) before /ready probes again.
PROBE_TTL_SECONDS = 10.0


def store_location(models_dir: str, store_url: Optional[str], s3_cache_mb: float) -> tuple[str, dict[str, Any]]:
    """``(location, options)`` for :func:`utils.ml.store.open_store`."""
    if store_url:
        return store_url, {"cache_dir": str(models_dir), "cache_max_bytes": int(float(s3_cache_mb) * MB)}
    return str(models_dir), {}


def open_configured_store(config: Mapping[str, Any], create: bool = True) -> ModelStore:
    """The store an app's settings select (``ML_STORE_URL``, else ``ML_MODELS_DIR``)."""
    location, options = store_location(config["ML_MODELS_DIR"], config.get("ML_STORE_URL"),
                                       config.get("ML_S3_CACHE_MB", 256.0))
    return open_store(location, create=create, **options)


class StoreProbe:
    """The last answer of ``check_writable()`` on one store, reused for ``ttl`` seconds.

    One thread probes at a time; the others wait for its answer rather than
    sending their own requests.
    """

    def __init__(self, config: Mapping[str, Any], ttl: float = PROBE_TTL_SECONDS) -> None:
        self.config = {key: config.get(key) for key in ("ML_MODELS_DIR", "ML_STORE_URL", "ML_S3_CACHE_MB")}
        self.ttl = ttl
        self._store: Optional[ModelStore] = None
        self._answer: Optional[dict[str, Any]] = None
        self._at = float("-inf")
        self._lock = threading.Lock()

    def check(self) -> dict[str, Any]:
        """``{"ok": bool, "url": ..., "age_s": seconds since the probe, "error": ...}``."""
        with self._lock:
            now = time.monotonic()
            if self._answer is None or now - self._at >= self.ttl:
                self._answer, self._at = self._probe(), time.monotonic()
            return {**self._answer, "age_s": round(time.monotonic() - self._at, 3)}

    def _probe(self) -> dict[str, Any]:
        url = self.config["ML_STORE_URL"]
        started = time.perf_counter()
        try:
            if self._store is None:
                # create=False: the models_dir check owns the local directory.
                self._store = open_configured_store(self.config, create=False)
            self._store.check_writable()
        except (OSError, ModelStoreError, ValueError) as exc:
            return {"ok": False, "url": url, "error": f"{exc.__class__.__name__}: {exc}"}
        return {"ok": True, "url": url, "ms": round((time.perf_counter() - started) * 1000, 2)}


_probe_lock = threading.Lock()


def store_readiness(app: Any) -> Optional[dict[str, Any]]:
    """The ``model_store`` check of ``/ready`` for ``app``, or None when models are only local."""
    if not app.config.get("ML_STORE_URL"):
        return None
    with _probe_lock:
        probe = app.extensions.get("ml_store_probe")
        if probe is None:
            probe = app.extensions["ml_store_probe"] = StoreProbe(app.config)
    return probe.check()
