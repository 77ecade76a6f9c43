"""The fingerprint of a training: its data and its settings, so the same training is never saved twice.

Two trainings with the same fingerprint would produce the same model (the
forest's ``random_state`` is fixed), so the trainer saves no new version
when a kept version already carries the fingerprint.  What goes in:

* every observation of the window in time order: id, entity, value,
  timestamp (microseconds) and label (a false-positive mark changes it);
* the settings that shape the model: feature version and features,
  contamination, trees, random state, window length;
* the scikit-learn version (the same data on another version is another model).

The window ends at the newest observation, not at the clock (see
:mod:`utils.ml.model_trainer`), so a restart with no new data sees the very
same window and the same fingerprint.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping, Optional

import numpy as np
import sklearn
from sqlalchemy import select
from sqlalchemy.orm import Session

from utils.models import MLModel

FINGERPRINT_VERSION = 1
KEY = "fingerprint"  # where it is kept in ml_models.parameters


def fingerprint(ids: np.ndarray, entity_ids: np.ndarray, values: np.ndarray, timestamps: list[Any],
                labels: np.ndarray, settings: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the window's observations and the training settings."""
    digest = hashlib.sha256()
    header = {"v": FINGERPRINT_VERSION, "sklearn": sklearn.__version__, "settings": dict(settings)}
    digest.update(json.dumps(header, sort_keys=True, default=str).encode())
    micros = np.fromiter((int(t.timestamp() * 1_000_000) for t in timestamps), dtype=np.int64, count=len(timestamps))
    for array, dtype in ((ids, np.int64), (entity_ids, np.float64), (values, np.float64), (micros, np.int64),
                         (labels, np.int8)):
        digest.update(np.ascontiguousarray(array, dtype=dtype).tobytes())
        digest.update(b"|")  # arrays of different lengths never run into each other
    return digest.hexdigest()


def version_with(session: Session, model_type: str, metric_type: str, value: str) -> Optional[int]:
    """The newest kept version of the type trained with fingerprint ``value``, or None."""
    return session.execute(
        select(MLModel.id).where(MLModel.model_type == model_type, MLModel.metric_type == metric_type,
                                 MLModel.parameters[KEY].as_string() == value)
        .order_by(MLModel.id.desc()).limit(1)
    ).scalar_one_or_none()
