"""Models pickled before the package layout changed keep loading and scoring.

``tests/fixtures/pickle_compat_v1.pkl`` was fitted and pickled (protocol 4,
as the store writes) by the code of commit 502c876, when the feature
transformer was ``utils.ml.features.EntityRelativeFeatures``; the JSON beside
it holds its SHA-256, the observations it was probed with and the scores that
code produced (``tests/fixtures/make_pickle_compat.py`` shows how).  Here a
row points at a copy of that file with its checksum, and the model goes
through the real model store and the real detector, on both databases.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from utils.extensions import db
from utils.ml.anomaly_detector import AnomalyDetector
from utils.ml.model_manager import get_model_manager
from utils.ml.pipeline.features import EntityRelativeFeatures
from utils.models import MLModel

FIXTURES = Path(__file__).resolve().parent / "fixtures"
META = json.loads((FIXTURES / "pickle_compat_v1.json").read_text())
T, M = "isolation_forest", "stok_seviye"
KEY = "isolation_forest_stok_seviye_20250101_000000_0000000000.pkl"


def _install(models_dir: Path, checksum: str) -> int:
    """Copy the old file into the store and record it as the active version with ``checksum``."""
    shutil.copyfile(FIXTURES / META["file"], models_dir / KEY)
    row = MLModel(model_type=T, metric_type=M, model_path=KEY, checksum_sha256=checksum,
                  size_bytes=META["size_bytes"], parameters={}, is_active=True,
                  sklearn_version=META["sklearn_version"], numpy_version=META["numpy_version"])
    db.session.add(row)
    db.session.commit()
    return row.id


def test_the_fixture_is_an_old_pickle():
    data = (FIXTURES / META["file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == META["sha256"] and len(data) == META["size_bytes"]
    # It names the transformer by its old module, and nothing newer.
    assert META["pickled_class"] == "utils.ml.features.EntityRelativeFeatures"
    assert b"utils.ml.features" in data and b"EntityRelativeFeatures" in data
    assert b"utils.ml.pipeline" not in data


def test_an_old_model_loads_through_the_store_and_scores_identically(app_ctx, models_dir):
    model_id = _install(models_dir, META["sha256"])
    outcome = get_model_manager().load_active(T, M)
    assert (outcome.model_id, outcome.source, outcome.reason) == (model_id, "file", None)
    # The old name resolves to the class that now lives in utils.ml.pipeline.features.
    import utils.ml.features as old_module

    assert old_module.EntityRelativeFeatures is EntityRelativeFeatures
    assert type(outcome.model.steps[0][1]) is EntityRelativeFeatures

    result = AnomalyDetector(db).detect_anomalies_with_fallback(M, META["observations"])
    assert (result.method, result.model_id, result.fallback_reasons) == ("isolation_forest_file", model_id, [])
    # The same numbers up to the last bits: with the same numpy and scikit-learn, another machine
    # gave one score that differed in its 16th digit (2026-11-30), as vectorised sums may.
    assert [row["score"] for row in result.results] == pytest.approx(META["scores"], rel=1e-12, abs=0)
    assert [row["is_anomaly"] for row in result.results] == META["is_anomaly"]
    assert [row["severity"] for row in result.results] == META["severity"]
    assert [row["expected_value"] for row in result.results] == pytest.approx(META["expected_value"], rel=1e-12,
                                                                              abs=0)
    assert result.threshold == pytest.approx(META["threshold"], rel=1e-12, abs=0)


def test_the_old_file_is_refused_when_its_checksum_does_not_match(app_ctx, models_dir):
    _install(models_dir, "0" * 64)
    outcome = get_model_manager().load_active(T, M)
    assert (outcome.model, outcome.reason) == (None, "checksum_mismatch")
