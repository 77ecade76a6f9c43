"""ModelManager: model files on a store, metadata in the database (the contract's facade).

The contract (``shared/CONTRACT.md``) fixes the public methods and their return
keys; the work is done by :mod:`utils.ml.store`:

* saves are atomic (temp file, fsync, no-clobber rename) and the row is
  committed only once the file is in place; a failed commit removes the file
  (:mod:`~utils.ml.store.registry`);
* every activation, a save's included, goes through one function that
  serialises it per (model_type, metric_type), audits it, and is a no-op for
  the version already active; a partial unique index makes two active rows
  impossible;
* loads check size, containment and SHA-256 against the row *before*
  unpickling and retry transient read errors (:mod:`~utils.ml.store.integrity`),
  and keep a bounded, thread-safe cache (:mod:`~utils.ml.store.cache`) that any
  activation invalidates in every process sharing the store;
* metadata queries never fetch ``model_data``.
"""
from __future__ import annotations

import logging
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from flask import Flask, current_app
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from utils.ml import events
from utils.ml.store import (ModelManagerError, ModelStore, ModelStoreError, ModelTooLargeError,
                            ModelValidationError, open_store)
from utils.ml.store import legacy, queries, registry, retention
from utils.ml.store.cache import ModelCache
from utils.ml.store.integrity import LoadOutcome, finish_load, read_verified, serialize, verify_file
from utils.ml.store.legacy import INCOMPATIBLE
from utils.ml.store.setup import store_location
from utils.ml.store.signature import compatible as input_compatible
from utils.ml.store.signature import incompatible_detail, of_object
from utils.ml.validation import check_name, check_score
from utils.models import MLModel
from utils.settings import current
from utils.time import utcnow

logger = logging.getLogger(__name__)

__all__ = ["LoadOutcome", "ModelManager", "ModelManagerError", "ModelValidationError", "get_model_manager",
           "init_app"]

# Constructor options and the settings they override (their defaults are the table's).
_OPTIONS = {
    "max_model_mb": "ML_MAX_MODEL_MB",
    "retry_delays": "ML_LOAD_RETRY_DELAYS",
    "cache_size": "ML_CACHE_SIZE",
    "cache_ttl": "ML_CACHE_TTL_SECONDS",
    "orphan_grace_seconds": "ML_ORPHAN_GRACE_SECONDS",
    "compress": "ML_COMPRESS_MODELS",
    "disk_warn_percent": "ML_DISK_WARN_PERCENT",
    "store_url": "ML_STORE_URL",  # s3://bucket/prefix: models_dir is then the local cache
    "s3_cache_mb": "ML_S3_CACHE_MB",
    "create_directory": None,  # not a setting: False only for dry runs
}


class ModelManager:
    """Central model storage service (the seed's ``ModelManager``)."""

    def __init__(self, db: Any, models_dir: Optional[str] = None, **options: Any) -> None:
        """``options`` override the app config (outside an app: the settings' defaults):
        max_model_mb, retry_delays, cache_size, cache_ttl, orphan_grace_seconds, compress,
        disk_warn_percent, store_url and s3_cache_mb (``ML_STORE_URL``: the models live in that bucket
        and ``models_dir`` is the bounded local cache), create_directory (False: never create the
        models directory, for dry runs)."""
        self.db = db
        unknown = set(options) - set(_OPTIONS)
        if unknown:
            raise TypeError(f"unknown ModelManager options: {sorted(unknown)}")
        settings = {name: options[name] if name in options else (current(key) if key else True)
                    for name, key in _OPTIONS.items()}
        if models_dir is None:
            models_dir = current("ML_MODELS_DIR")
        self.max_bytes = int(float(settings["max_model_mb"]) * 1024 * 1024)
        self.retry_delays = tuple(float(d) for d in settings["retry_delays"])
        self.cache_size = int(settings["cache_size"])
        self.cache_ttl = float(settings["cache_ttl"])
        self.orphan_grace_seconds = float(settings["orphan_grace_seconds"])
        self.compress = bool(settings["compress"])
        self.disk_warn_percent = float(settings["disk_warn_percent"])
        self.logger = logger
        self.create_directory = bool(settings["create_directory"])
        location, store_options = store_location(str(models_dir), settings["store_url"], settings["s3_cache_mb"])
        self.store: ModelStore = open_store(location, create=self.create_directory, **store_options)
        self.models_dir: Optional[Path] = self.store.local_root
        self._cache = ModelCache(self.cache_size, self.cache_ttl)
        self._ensure_directory_exists()

    # ----------------------------------------------------- the seed's helpers
    @property
    def session(self):
        return self.db.session

    def _ensure_directory_exists(self) -> None:
        """The local store creates its directory (755) on construction."""
        if self.models_dir is not None and self.create_directory:
            self.models_dir.mkdir(mode=0o755, parents=True, exist_ok=True)

    def _generate_filename(self, model_type: str, metric_type: str, suffix: str = ".pkl") -> str:
        return registry.generate_filename(model_type, metric_type, suffix)

    def _get_file_size_kb(self, filepath: Path) -> float:
        return round(filepath.stat().st_size / 1024, 2)

    def _validate_model_file(self, filepath: Path) -> bool:
        """True when ``filepath`` is a model file of this store whose bytes match its row."""
        try:
            key = self.store.key_for(filepath)
        except ValueError:
            return False
        checksum = self.session.execute(
            select(MLModel.checksum_sha256).where(MLModel.model_path == key)
        ).scalar_one_or_none()
        return verify_file(self.store, key, checksum, self.max_bytes)[1] is None

    def _check_disk_space(self) -> dict[str, float]:
        """Disk figures of the store: total_gb, used_gb, free_gb, percent (warns past the threshold)."""
        return retention.check_disk_space(self.store, self.disk_warn_percent)

    def _active_meta(self, model_type: str, metric_type: str) -> Optional[queries.ActiveMeta]:
        return queries.active_meta(self.session, model_type, metric_type)

    def _signal_activation(self) -> None:
        """Tell every process sharing the store that an active version changed."""
        self._cache.clear()
        try:
            self.store.signal_change()
        except (OSError, ModelStoreError) as exc:
            # Other processes still notice within ML_CACHE_TTL_SECONDS.
            logger.warning("could not signal an activation through the model store: %s", exc)

    def clear_cache(self) -> None:
        self._cache.clear()

    # -------------------------------------------------------------------- save
    def save_model(
        self,
        model: Any,
        model_type: str,
        metric_type: str,
        accuracy: Optional[float] = None,
        precision: Optional[float] = None,
        recall: Optional[float] = None,
        *,
        parameters: Optional[dict[str, Any]] = None,
        training_date: Optional[datetime] = None,
        actor: str = "trainer",
        activate: bool = True,
    ) -> MLModel:
        """Write ``model`` to a new file, then commit its row (active by default).

        Returns the committed row.  On any failure nothing is left behind: the
        file is removed if the row could not be committed, and the previous
        active version stays active.
        """
        check_name("model_type", model_type, error=ModelValidationError)
        check_name("metric_type", metric_type, error=ModelValidationError)
        scores = {name: check_score(name, value, error=ModelValidationError)
                  for name, value in (("accuracy", accuracy), ("precision", precision), ("recall", recall))}
        data, suffix = serialize(model, self.compress)
        if len(data) > self.max_bytes:
            raise ModelTooLargeError(f"model is {len(data)} bytes, over the limit of {self.max_bytes} bytes "
                                     "(ML_MAX_MODEL_MB)")
        self._check_disk_space()
        started = time.perf_counter()
        row = registry.save_version(self.session, self.store, data, suffix, actor=actor, activate=activate,
                                    model_type=model_type, metric_type=metric_type, parameters=parameters or {},
                                    training_date=training_date or utcnow(), input_signature=of_object(model),
                                    **scores)
        if activate:
            self._signal_activation()
        events.emit("model_saved", f"Model saved: {self.store.locate(row.model_path)}, size: {len(data) / 1024:.1f}KB",
                    model_id=row.id, model_type=model_type, metric_type=metric_type, key=row.model_path,
                    size_bytes=len(data), ms=round((time.perf_counter() - started) * 1000, 2),
                    accuracy=scores["accuracy"], active=activate)
        return row

    def save_model_to_file(self, model: Any, model_type: str, metric_type: str, accuracy: Optional[float] = None,
                           precision: Optional[float] = None, recall: Optional[float] = None,
                           **kwargs: Any) -> str:
        """Save ``model`` as the new active version; return the file's path (contract)."""
        row = self.save_model(model, model_type, metric_type, accuracy, precision, recall, **kwargs)
        return self.store.locate(row.model_path)

    # -------------------------------------------------------------- activation
    def activate_model(self, model_id: int, actor: str, reason: Optional[str] = None) -> dict[str, Any]:
        """Make ``model_id`` the active version of its type (promotion or rollback).

        The file is verified (size, containment, checksum) first; the switch
        and its audit row are one transaction; the version already active is
        a no-op (``changed`` false, nothing audited).  Returns ``model_id``,
        ``model_type``, ``metric_type``, ``from_model_id``, ``actor``,
        ``reason`` and ``changed`` (see :func:`utils.ml.store.registry.activate_version`).
        """
        result = registry.activate_version(self.session, self.store, model_id, actor, reason, self.max_bytes)
        if result["changed"]:
            self._signal_activation()
            events.emit("model_activated", f"Model {model_id} activated by {actor}",
                        **{k: result[k] for k in ("model_id", "model_type", "metric_type", "from_model_id",
                                                  "actor")})
        return result

    # -------------------------------------------------------------------- load
    def load_model_from_file(self, model_type: str, metric_type: str) -> Optional[Any]:
        """The active model of this type from its file, or None (logged) if it cannot be trusted."""
        return self.load_active(model_type, metric_type).model

    def load_active(self, model_type: str, metric_type: str) -> LoadOutcome:
        """Load the active file-backed model, saying where it came from or why not."""
        started = time.perf_counter()
        key = (model_type, metric_type)
        token = self.store.change_token()
        entry = self._cache.get(key, token)
        if entry is not None:
            return self._usable(entry.model, entry.model_id, "cache", None, started, key)
        try:
            meta = queries.active_meta(self.session, model_type, metric_type)
        except SQLAlchemyError as exc:
            registry.rollback_quietly(self.session)
            stale = self._cache.get(key, token, fresh_only=False)
            if stale is not None:
                logger.warning("database unavailable (%s); using the cached model %s", exc.__class__.__name__,
                               stale.model_id)
                return finish_load(stale.model, stale.model_id, "cache", None, started, key)
            return finish_load(None, None, "none", "database_unavailable", started, key, str(exc))
        if meta is None:
            return finish_load(None, None, "none", "no_active_model", started, key,
                               f"no active model for {model_type}/{metric_type}")
        if not input_compatible(meta.signature):  # known from the row: not even read
            return finish_load(None, meta.id, "none", INCOMPATIBLE, started, key, incompatible_detail(
                meta.id, meta.signature))
        if not meta.model_path:
            return finish_load(None, meta.id, "none", "no_model_file", started, key,
                               f"model {meta.id} is a legacy row without a file")
        model, source, reason, detail = self._cache.get_or_load(
            key, token, meta.id, meta.checksum_sha256,
            lambda: read_verified(self.store, meta.id, meta.model_path, meta.checksum_sha256, meta.sklearn_version,
                                  self.max_bytes, self.retry_delays))
        if model is None:
            return finish_load(None, meta.id, "none", reason, started, key, detail)
        return self._usable(model, meta.id, source, meta.recorded_signature, started, key)

    @staticmethod
    def _usable(model: Any, model_id: int, source: str, recorded: Optional[dict[str, Any]], started: float,
                key: tuple[str, str]) -> LoadOutcome:
        """The loaded model, unless its input is one detection cannot compute (``incompatible_input``)."""
        sig = recorded or of_object(model)
        if not input_compatible(sig):
            return finish_load(None, model_id, "none", INCOMPATIBLE, started, key, incompatible_detail(model_id, sig))
        return finish_load(model, model_id, source, None, started, key)

    def load_model_from_database(self, model_type: str, metric_type: str) -> LoadOutcome:
        """The legacy path: unpickle the active row's BLOB (verified when a checksum applies)."""
        return legacy.load_from_database(self.session, model_type, metric_type, self.max_bytes)

    # ---------------------------------------------------------------- metadata
    def describe(self, row: MLModel) -> dict[str, Any]:
        """Every metadata field of ``row``; never the bytes."""
        return queries.describe(row, self.store)

    def list_models(self, model_type: Optional[str] = None, metric_type: Optional[str] = None,
                    active: Optional[bool] = None) -> list[dict[str, Any]]:
        """All versions (file-backed and legacy), newest first, optionally filtered."""
        return queries.list_models(self.session, self.store, model_type, metric_type, active)

    def list_available_models(self) -> list[dict[str, Any]]:
        """File-backed models, newest first (keys: model_type, metric_type, path, size_kb, created_at, accuracy...)."""
        return queries.list_models(self.session, self.store, files_only=True)

    def get_model_info(self, model_type: str, metric_type: str) -> Optional[dict[str, Any]]:
        """The active version's metadata (the newest if none is active), or None."""
        return queries.model_info(self.session, self.store, model_type, metric_type)

    # -------------------------------------------------------- cleanup, migrate
    def cleanup_old_models(self, keep_versions: int = 3) -> dict[str, Any]:
        """Keep the newest ``keep_versions`` per type (and always the active one); remove
        orphan and temporary files (see :func:`utils.ml.store.retention.cleanup_old_models`)."""
        return retention.cleanup_old_models(self.session, self.store, keep_versions,
                                            orphan_grace_seconds=self.orphan_grace_seconds,
                                            disk_warn_percent=self.disk_warn_percent)

    def migrate_from_database(self, dry_run: bool = False, purge_blobs: bool = False) -> dict[str, Any]:
        """Copy every legacy BLOB model to a verified file (see :func:`utils.ml.store.legacy.migrate_from_database`)."""
        return legacy.migrate_from_database(self.session, self.store, self.max_bytes, dry_run=dry_run,
                                            purge_blobs=purge_blobs)


_manager_lock = threading.Lock()


def get_model_manager(app: Optional[Flask] = None) -> ModelManager:
    """The process-wide manager of ``app`` (its cache is shared by every request and job)."""
    app = app or current_app._get_current_object()
    manager = app.extensions.get("ml_model_manager")
    if manager is None:
        from utils.extensions import db

        with _manager_lock:
            manager = app.extensions.get("ml_model_manager")
            if manager is None:
                with app.app_context():
                    manager = ModelManager(db, models_dir=app.config["ML_MODELS_DIR"])
                app.extensions["ml_model_manager"] = manager
    return manager


def init_app(app: Flask) -> None:
    # Created lazily: a misconfigured models directory must not stop the app
    # from starting and reporting it on /ready.
    app.extensions.setdefault("ml_model_manager", None)
