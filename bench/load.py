"""Section 1: load one model every way there is, interleaved, same model, same minutes."""
from __future__ import annotations

import hashlib
import pickle
import time
from pathlib import Path
from typing import Any, Callable

import joblib
import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from bench.fixtures import FEATURES, LOAD_MODEL_TYPE, legacy_query, save_with_blob, train_model
from bench.stats import summarize_ns, time_interleaved

PLAIN = "plain"  # metric type of the uncompressed file-backed model
GZIP = "gzipped"  # the same model saved with ML_COMPRESS_MODELS=true


def legacy_load(session: Session, model_type: str, metric_type: str) -> Any:
    """SELECT the row with its BLOB and unpickle it, as the legacy code did."""
    row = session.execute(legacy_query(model_type, metric_type)).scalars().first()
    model = pickle.loads(row.model_data)
    session.expunge(row)  # a request's session would end here; do not let the BLOB pile up
    return model


def floor_load(path: Path) -> Any:
    """The least any verified load can do: read the bytes, SHA-256 them, C-unpickle them."""
    with open(path, "rb") as handle:
        data = handle.read()
    hashlib.sha256(data).hexdigest()
    return pickle.loads(data)


def floor_with_lookup(cursor: Any, model_type: str, metric_type: str, root: Path) -> Any:
    """The floor of any design that verifies against the database: one bare DB-API query, then the floor."""
    cursor.execute(
        "SELECT id, model_path, checksum_sha256 FROM ml_models"
        " WHERE model_type = %s AND metric_type = %s AND is_active",
        (model_type, metric_type),
    )
    _id, key, checksum = cursor.fetchone()
    with open(root / key, "rb") as handle:
        data = handle.read()
    if hashlib.sha256(data).hexdigest() != checksum:
        raise RuntimeError("checksum mismatch in the bench's own file")
    return pickle.loads(data)


def prepare(env: Any, sizes: Any) -> dict[str, Any]:
    """Train the model and store it every way the variants read it."""
    from utils.extensions import db
    from utils.ml.model_manager import ModelManager

    model = train_model(sizes.train_rows, sizes.trees, seed=1)
    plain_manager = ModelManager(db, models_dir=str(env.models_dir))
    gzip_manager = ModelManager(db, models_dir=str(env.models_dir), compress=True)
    plain = save_with_blob(plain_manager, model, LOAD_MODEL_TYPE, PLAIN)
    gzipped = gzip_manager.save_model(model, LOAD_MODEL_TYPE, GZIP, actor="bench")
    joblib_dir = env.workdir / "joblib"
    joblib_dir.mkdir()
    joblib_plain = joblib_dir / "model.joblib"
    joblib_zlib = joblib_dir / "model.joblib.z"
    joblib.dump(model, joblib_plain)
    joblib.dump(model, joblib_zlib, compress=3)  # joblib's usual "compress=3" (zlib)
    # The same model in pickle protocol 5, the contrast to the protocol 4 the
    # store writes (PICKLE_PROTOCOL): protocol 5 numpy arrays unpickle through
    # PickleBuffers and a Python-level helper.
    protocol5 = joblib_dir / "model.p5.pkl"
    protocol5.write_bytes(pickle.dumps(model, protocol=5))
    return {
        "model": model,
        "plain": plain,
        "plain_path": env.models_dir / plain.key,
        "gzip_key": gzipped.model_path,
        "gzip_size": gzipped.size_bytes,
        "joblib_plain": joblib_plain,
        "joblib_zlib": joblib_zlib,
        "protocol5": protocol5,
    }


def run(env: Any, sizes: Any, prepared: dict[str, Any]) -> dict[str, Any]:
    from utils.extensions import db
    from utils.ml.model_manager import ModelManager

    manager = ModelManager(db, models_dir=str(env.models_dir))
    fresh_engine = sa.create_engine(env.url, poolclass=NullPool)
    raw_connection = db.engine.raw_connection()
    raw_cursor = raw_connection.cursor()

    def legacy_new_connection() -> Any:
        with Session(fresh_engine) as session:
            return legacy_load(session, LOAD_MODEL_TYPE, PLAIN)

    def ours_cold() -> Any:
        return _checked(manager.load_model_from_file(LOAD_MODEL_TYPE, PLAIN))

    variants: dict[str, Callable[[], Any]] = {
        "legacy_blob_reused_connection": lambda: legacy_load(db.session, LOAD_MODEL_TYPE, PLAIN),
        "legacy_blob_new_connection": legacy_new_connection,
        "joblib_load_uncompressed": lambda: joblib.load(prepared["joblib_plain"]),
        "joblib_load_compressed": lambda: joblib.load(prepared["joblib_zlib"]),
        "ours_cold": ours_cold,
        "ours_cold_gzip_file": lambda: _checked(manager.load_model_from_file(LOAD_MODEL_TYPE, GZIP)),
        "ours_blob_fallback": lambda: _checked(manager.load_model_from_database(LOAD_MODEL_TYPE, PLAIN).model),
        "floor_read_sha256_unpickle": lambda: floor_load(prepared["plain_path"]),
        "floor_with_db_lookup": lambda: floor_with_lookup(raw_cursor, LOAD_MODEL_TYPE, PLAIN, env.models_dir),
        "floor_pickle_protocol5": lambda: floor_load(prepared["protocol5"]),
    }
    before = {"ours_cold": manager.clear_cache, "ours_cold_gzip_file": manager.clear_cache}
    try:
        samples = time_interleaved(variants, sizes.load_repetitions, before=before)
    finally:
        fresh_engine.dispose()
        raw_connection.close()
    results = {name: summarize_ns(values) for name, values in samples.items()}

    # Warm: the same manager with its cache populated; many calls, microseconds.
    _checked(manager.load_model_from_file(LOAD_MODEL_TYPE, PLAIN))
    warm: list[int] = []
    for _ in range(sizes.warm_repetitions):
        started = time.perf_counter_ns()
        manager.load_model_from_file(LOAD_MODEL_TYPE, PLAIN)
        warm.append(time.perf_counter_ns() - started)
    outcome = manager.load_active(LOAD_MODEL_TYPE, PLAIN)
    if outcome.source != "cache":
        raise RuntimeError(f"warm load did not come from the cache: {outcome}")
    results["ours_warm"] = summarize_ns(warm, unit="us")
    db.session.rollback()

    plain = prepared["plain"]
    return {
        "model": {
            "estimator": "IsolationForest",
            "n_estimators": sizes.trees,
            "training_rows": sizes.train_rows,
            "features": FEATURES,
            "pickle_bytes": plain.size_bytes,
            "gzip_bytes": prepared["gzip_size"],
        },
        "repetitions": sizes.load_repetitions,
        "note": "all files are in the OS page cache; 'cold' means our model cache was cleared",
        "variants": results,
        "ratios": {
            "cold_over_floor": _ratio(results["ours_cold"], results["floor_read_sha256_unpickle"]),
            "legacy_reused_over_cold": _ratio(results["legacy_blob_reused_connection"], results["ours_cold"]),
            "legacy_new_connection_over_cold": _ratio(results["legacy_blob_new_connection"],
                                                      results["ours_cold"]),
            "joblib_over_cold": _ratio(results["joblib_load_uncompressed"], results["ours_cold"]),
            "cold_over_floor_with_db_lookup": _ratio(results["ours_cold"], results["floor_with_db_lookup"]),
            "protocol4_over_protocol5_floor": _ratio(results["floor_read_sha256_unpickle"],
                                                     results["floor_pickle_protocol5"]),
        },
    }


def _ratio(numerator: dict[str, Any], denominator: dict[str, Any]) -> float:
    return round(numerator["median"] / denominator["median"], 3)


def _checked(model: Any) -> Any:
    if model is None:
        raise RuntimeError("ModelManager returned no model: see the bench event log")
    return model
