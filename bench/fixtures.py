"""The models and rows every section measures.

One model is the issue's: an ``IsolationForest`` with 100 trees trained on
10,000 rows.  The "store" is what a legacy database looks like after the
migration keeps its BLOBs as the fallback: N versions over M metric types,
each row with a file *and* the identical bytes in ``model_data``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.ensemble import IsolationForest

# One feature: the raw value, as the legacy BLOB forests took it.  A bare forest of
# several features reads as the minibar app's aggregate-feature model, which this
# service records as an input it cannot compute and does not load.
FEATURES = 1
LOAD_MODEL_TYPE = "bench_load"
# Not the pipeline's "isolation_forest": the scan section trains those, and
# the disk section must count the store's versions alone.
STORE_MODEL_TYPE = "bench_store"
# The minibar metric types first, then made-up ones up to the store's size.
MINIBAR_METRICS = ("stok_seviye", "tuketim_miktar", "dolum_sure")


def store_metric_types(count: int) -> list[str]:
    extra = [f"bench_metric_{i:02d}" for i in range(max(0, count - len(MINIBAR_METRICS)))]
    return list(MINIBAR_METRICS[:count]) + extra


def training_rows(rows: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(rows, FEATURES))


def train_model(rows: int, trees: int, seed: int = 0) -> IsolationForest:
    """The benchmark model: ``trees`` trees on ``rows`` rows of ``FEATURES`` features."""
    return IsolationForest(n_estimators=trees, random_state=seed).fit(training_rows(rows, seed))


@dataclass(frozen=True)
class StoredModel:
    model_id: int
    model_type: str
    metric_type: str
    key: str
    size_bytes: int


def legacy_query(model_type: str, metric_type: str) -> Any:
    """The legacy ORM query: the active row with its BLOB (model_data was not deferred then)."""
    from sqlalchemy import select
    from sqlalchemy.orm import undefer

    from utils.models import MLModel

    return select(MLModel).options(undefer(MLModel.model_data)).where(
        MLModel.model_type == model_type, MLModel.metric_type == metric_type, MLModel.is_active.is_(True)
    )


def save_with_blob(manager: Any, model: Any, model_type: str, metric_type: str) -> StoredModel:
    """Save through ``ModelManager`` (file + row), then put the same bytes in ``model_data``.

    That is the state ``migrate`` leaves a legacy row in (the BLOB stays as
    the fallback), and it gives the legacy path a BLOB identical to the file.
    """
    from sqlalchemy import update

    from utils.models import MLModel

    row = manager.save_model(model, model_type, metric_type, actor="bench")
    data = manager.store.read(row.model_path, manager.max_bytes)
    manager.session.execute(
        update(MLModel).where(MLModel.id == row.id).values(model_data=data)
        .execution_options(synchronize_session=False)
    )
    manager.session.commit()
    return StoredModel(row.id, model_type, metric_type, row.model_path, len(data))
