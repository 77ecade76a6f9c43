"""One memory measurement in a fresh process: ``python -m bench.memory_worker VARIANT URL DIR TYPE ROWS``.

Prints one JSON object: the process's resident set before the measured phase,
its peak during the phase (``VmHWM`` after resetting it through
``/proc/self/clear_refs``) and the difference.  A fresh process per variant
means no variant inherits another's heap.
"""
from __future__ import annotations

import json
import pickle
import resource
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.fixtures import FEATURES, legacy_query  # noqa: E402  (imported before any phase is measured)

MIB = 1024.0


def _status_kib() -> dict[str, int]:
    values: dict[str, int] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0])
    return values


def _reset_peak() -> bool:
    """Make VmHWM start again from the current RSS (Linux >= 4.0); False where that is refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _score(model: Any, rows: np.ndarray) -> int:
    return int((model.predict(rows) == -1).sum())


def legacy_scan(model_type: str, metric_types: list[str], rows: np.ndarray) -> dict[str, Any]:
    """The legacy ORM loaded ``model_data`` with every row: all versions' BLOBs come along."""
    from sqlalchemy import select
    from sqlalchemy.orm import undefer

    from utils.extensions import db
    from utils.models import MLModel

    records = db.session.execute(
        select(MLModel).options(undefer(MLModel.model_data)).where(MLModel.model_type == model_type)
        .order_by(MLModel.created_at.desc())
    ).scalars().all()
    flagged = 0
    for metric_type in metric_types:
        record = next(r for r in records if r.metric_type == metric_type and r.is_active)
        flagged += _score(pickle.loads(record.model_data), rows)
    return {"rows_with_blobs": len(records), "flagged": flagged}


def legacy_scan_active_rows(model_type: str, metric_types: list[str], rows: np.ndarray) -> dict[str, Any]:
    """The kindest reading of the legacy code: only each type's active row, BLOB included."""
    from utils.extensions import db

    flagged = 0
    for metric_type in metric_types:
        record = db.session.execute(legacy_query(model_type, metric_type)).scalars().first()
        flagged += _score(pickle.loads(record.model_data), rows)
    return {"rows_with_blobs": len(metric_types), "flagged": flagged}


def ours_scan(model_type: str, metric_types: list[str], rows: np.ndarray) -> dict[str, Any]:
    from utils.ml.model_manager import get_model_manager

    manager = get_model_manager()
    flagged = 0
    for metric_type in metric_types:
        model = manager.load_model_from_file(model_type, metric_type)
        if model is None:
            raise RuntimeError(f"no model for {model_type}/{metric_type}")
        flagged += _score(model, rows)
    return {"rows_with_blobs": 0, "flagged": flagged}


def ours_list(model_type: str, metric_types: list[str], rows: np.ndarray) -> dict[str, Any]:
    from utils.ml.model_manager import get_model_manager

    listed = get_model_manager().list_models(model_type=model_type)
    return {"listed": len(listed)}


def legacy_list(model_type: str, metric_types: list[str], rows: np.ndarray) -> dict[str, Any]:
    """Listing with the legacy ORM: every row's BLOB is fetched to show its metadata."""
    from sqlalchemy import select
    from sqlalchemy.orm import undefer

    from utils.extensions import db
    from utils.models import MLModel

    records = db.session.execute(
        select(MLModel).options(undefer(MLModel.model_data)).where(MLModel.model_type == model_type)
    ).scalars().all()
    listed = [{"id": r.id, "metric_type": r.metric_type, "size_kb": len(r.model_data) / 1024} for r in records]
    return {"listed": len(listed)}


VARIANTS: dict[str, Callable[[str, list[str], np.ndarray], dict[str, Any]]] = {
    "legacy_scan": legacy_scan,
    "legacy_scan_active_rows": legacy_scan_active_rows,
    "ours_scan": ours_scan,
    "legacy_list": legacy_list,
    "ours_list": ours_list,
}


def measure(variant: str, url: str, models_dir: str, model_type: str, score_rows: int) -> dict[str, Any]:
    from sqlalchemy import select, text

    from tests import dbutil
    from utils.extensions import db
    from utils.models import MLModel

    app = dbutil.make_app(url, Path(models_dir))
    with app.app_context():
        # Everything both sides need before the phase: a connection, the ORM
        # mapped and its statement cache used once, the rows to score.
        db.session.execute(text("SELECT 1"))
        metric_types = sorted(db.session.execute(
            select(MLModel.metric_type).where(MLModel.model_type == model_type).distinct()
        ).scalars())
        db.session.execute(select(MLModel).where(MLModel.id == -1)).scalars().all()
        rows = np.random.default_rng(7).normal(size=(score_rows, FEATURES))
        before = _status_kib()
        reset = _reset_peak()
        facts = VARIANTS[variant](model_type, metric_types, rows)
        after = _status_kib()
        db.session.rollback()
    peak_kib = after["VmHWM"] if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "variant": variant,
        "metric_types": len(metric_types),
        "rss_before_mib": round(before["VmRSS"] / MIB, 1),
        "peak_rss_mib": round(peak_kib / MIB, 1),
        "added_mib": round((peak_kib - before["VmRSS"]) / MIB, 2),
        "peak_source": "VmHWM after clear_refs" if reset else "ru_maxrss (whole process)",
        **facts,
    }


if __name__ == "__main__":
    name, db_url, directory, mtype, score = sys.argv[1:6]
    print(json.dumps(measure(name, db_url, directory, mtype, int(score))))
