"""Section 5: bytes on disk per model and for the whole store after cleanup at ML_KEEP_VERSIONS."""
from __future__ import annotations

import gzip
import os
import pickle
from typing import Any

from bench.fixtures import STORE_MODEL_TYPE, store_metric_types

GZIP_MODEL_TYPE = "bench_store_gz"


def _allocated(path: os.PathLike[str]) -> int:
    """Bytes the filesystem really allocates (blocks), not only the file length."""
    return os.stat(path).st_blocks * 512


def _store_figures(env: Any, model_type: str) -> dict[str, Any]:
    from sqlalchemy import select

    from utils.extensions import db
    from utils.models import MLModel

    keys = list(db.session.execute(
        select(MLModel.model_path).where(MLModel.model_type == model_type, MLModel.model_path.is_not(None))
    ).scalars())
    paths = [env.models_dir / key for key in keys]
    size = sum(p.stat().st_size for p in paths)
    return {"files": len(paths), "bytes": size, "mib": round(size / 2 ** 20, 2),
            "allocated_mib": round(sum(_allocated(p) for p in paths) / 2 ** 20, 2)}


def run(env: Any, sizes: Any, load_prepared: dict[str, Any]) -> dict[str, Any]:
    """Run last: ``cleanup_old_models`` deletes the versions the memory section used."""
    import joblib
    from sqlalchemy import text

    from utils.extensions import db
    from utils.ml.model_manager import ModelManager

    keep = int(env.app.config["ML_KEEP_VERSIONS"])
    model = load_prepared["model"]
    raw = pickle.dumps(model, protocol=5)
    per_model = {
        "pickle_bytes": len(raw),
        "pickle_gzip6_bytes": len(gzip.compress(raw, compresslevel=6)),
        "joblib_bytes": load_prepared["joblib_plain"].stat().st_size,
        "joblib_zlib3_bytes": load_prepared["joblib_zlib"].stat().st_size,
    }

    # The same models, saved compressed: keep + 1 versions per type, so cleanup has work to do.
    gzip_manager = ModelManager(db, models_dir=str(env.models_dir), compress=True)
    for metric_type in store_metric_types(sizes.store_metric_types):
        source = ModelManager(db, models_dir=str(env.models_dir)).load_model_from_file(STORE_MODEL_TYPE,
                                                                                      metric_type)
        for _ in range(keep + 1):
            gzip_manager.save_model(source, GZIP_MODEL_TYPE, metric_type, actor="bench")

    # The legacy table holds the same bytes as BLOBs (TOAST, pglz-compressed where it helps).
    legacy_table_bytes = db.session.execute(text("SELECT pg_total_relation_size('ml_models')")).scalar()
    blob_stored_bytes = db.session.execute(text(
        "SELECT avg(pg_column_size(model_data)) FROM ml_models WHERE model_data IS NOT NULL"
    )).scalar()
    before = {"plain": _store_figures(env, STORE_MODEL_TYPE), "gzip": _store_figures(env, GZIP_MODEL_TYPE)}
    cleanup = ModelManager(db, models_dir=str(env.models_dir)).cleanup_old_models(keep_versions=keep)
    after = {"plain": _store_figures(env, STORE_MODEL_TYPE), "gzip": _store_figures(env, GZIP_MODEL_TYPE)}
    db.session.rollback()
    return {
        "keep_versions": keep,
        "metric_types": sizes.store_metric_types,
        "per_model": per_model,
        "gzip_ratio": round(per_model["pickle_gzip6_bytes"] / per_model["pickle_bytes"], 3),
        "store_before_cleanup": before,
        "store_at_keep_versions": after,
        "cleanup": {k: cleanup[k] for k in ("deleted_count", "freed_space_mb")},
        "legacy_blob_stored_bytes_per_model": int(blob_stored_bytes or 0),
        "legacy_ml_models_table_mib_with_all_blobs": round(legacy_table_bytes / 2 ** 20, 2),
    }
