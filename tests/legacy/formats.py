"""Model bytes exactly as the minibar app produced them, made with our installed scikit-learn.

1. BLOB era: ``pickle.dumps`` of a bare IsolationForest(n_estimators=100,
   contamination=0.1, random_state=42) fitted on the raw value column.
2. File era: ``joblib.dump({'model', 'scaler', 'feature_list', 'saved_at'},
   path, compress=3)`` (zlib: the file starts ``78 5e``) at an absolute path,
   the row holding ``model_data = b'FILE_BASED'``.
3. File-save fallback: the bare multi-feature forest of 2, pickled into model_data.
Fitting 100 trees takes a moment, so each model is made once per process.
"""
from __future__ import annotations

import os
import pickle
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.preprocessing import StandardScaler

FILE_BASED = b"FILE_BASED"
# The names the app's feature engineer gives its stock features (24 of them).
STOCK_FEATURES = (
    "mean", "std", "min", "max", "median", "q25", "q75", "trend", "slope", "volatility", "change_rate",
    "avg_change", "max_change", "distance_to_critical", "critical_ratio", "below_critical_count",
    "below_critical_ratio", "days_of_data", "data_points", "data_density", "current_value", "previous_value",
    "z_score", "iqr_score",
)


def _forest() -> IsolationForest:
    return IsolationForest(n_estimators=100, contamination=0.1, random_state=42)


@lru_cache(maxsize=None)
def raw_values(seed: int, n: int = 120) -> np.ndarray:
    rng = np.random.RandomState(seed)
    return rng.normal(loc=40.0 + seed, scale=5.0, size=n)


@lru_cache(maxsize=None)
def blob_forest(seed: int) -> bytes:
    """Format 1: the BLOB era's pickled forest on one raw column."""
    return pickle.dumps(_forest().fit(raw_values(seed).reshape(-1, 1)))


@lru_cache(maxsize=None)
def _feature_fit(seed: int, n_features: int) -> tuple[IsolationForest, StandardScaler, tuple[str, ...]]:
    names = STOCK_FEATURES[:n_features] if n_features <= len(STOCK_FEATURES) else \
        STOCK_FEATURES + tuple(f"feature_{i}" for i in range(len(STOCK_FEATURES), n_features))
    rng = np.random.RandomState(seed)
    matrix = rng.normal(size=(30, n_features)) * np.linspace(1, 50, n_features)  # one row per entity
    scaler = StandardScaler().fit(matrix)
    return _forest().fit(scaler.transform(matrix)), scaler, names


def feature_package(seed: int, n_features: int) -> dict[str, Any]:
    """Format 2's content: the dict the app's ModelManager.save_model_to_file writes."""
    model, scaler, names = _feature_fit(seed, n_features)
    return {"model": model, "scaler": scaler, "feature_list": list(names),
            "saved_at": datetime(2025, 11, 13, 12, 0, tzinfo=timezone.utc).isoformat()}


def write_file_model(models_dir: Path, name: str, seed: int, n_features: int) -> Path:
    """Format 2 on disk: an absolute path, joblib compress=3, mode 644 (as the app left it)."""
    path = Path(models_dir).resolve() / name
    joblib.dump(feature_package(seed, n_features), path, compress=3)
    os.chmod(path, 0o644)
    return path


@lru_cache(maxsize=None)
def fallback_blob(seed: int, n_features: int) -> bytes:
    """Format 3: the bare multi-feature forest (no scaler) pickled into model_data."""
    return pickle.dumps(_feature_fit(seed, n_features)[0])
