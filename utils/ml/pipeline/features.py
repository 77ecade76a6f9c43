"""The features of the anomaly models: one definition for training and detection.

A saved model is a scikit-learn :class:`~sklearn.pipeline.Pipeline`::

    Pipeline([("features", EntityRelativeFeatures()), ("iforest", IsolationForest(...))])

Its input is the observation matrix of :func:`observation_matrix` — two
columns, ``entity_id`` (NaN when the observation has none) and
``metric_value`` — and :class:`EntityRelativeFeatures` turns it into the
columns named by its ``features`` parameter:

* ``entity_robust_z`` (the default, alone): ``(value - entity median) /
  entity robust scale``, with the median and IQR-based scale of that entity's
  observations in the training window.  It catches *contextual* anomalies
  (ordinary for the hotel, far outside that room's / product's / attendant's
  own history) and *global* ones (far outside the whole metric's range is
  far outside every entity's range too);
* ``value``: the raw value;
* ``entity_log_ratio``: ``log((|value| + 1) / (|entity median| + 1))``.

Why not ``value`` by default: on the demo hotel, adding it made the forest
isolate ordinary observations of entities whose normal level is rare in the
hotel (the largest-stock products, suites), which cost precision without
finding a single extra anomaly (the former ``scripts/detection_report.py --features`` showed
the comparison). Feature version 1: what models saved before the causal detector use.

The per-entity statistics are learnt in ``fit`` and pickled with the model, so
detection computes exactly the features training saw, with the same code.
Entities the model has not seen (or saw fewer than ``min_entity_samples``
times) are compared with the whole metric's median and scale instead.

Models pickled before this module moved here refer to
``utils.ml.features.EntityRelativeFeatures``: ``utils/ml/features.py``
re-exports everything in ``__all__`` so they keep unpickling.  Renaming or
removing anything listed there breaks saved models.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.ensemble import IsolationForest
from sklearn.pipeline import Pipeline

__all__ = ["AVAILABLE_FEATURES", "DEFAULT_FEATURES", "FEATURE_VERSION", "INPUT_COLUMNS", "MODEL_TYPE",
           "EntityRelativeFeatures", "build_pipeline", "is_feature_pipeline", "model_input", "observation_matrix"]

# The model_type of every model build_pipeline makes (ml_models.model_type).
MODEL_TYPE = "isolation_forest"
# Bump when the meaning of the features changes; recorded in every model's parameters.
FEATURE_VERSION = 1
INPUT_COLUMNS: tuple[str, ...] = ("entity_id", "metric_value")
AVAILABLE_FEATURES: tuple[str, ...] = ("value", "entity_robust_z", "entity_log_ratio")
DEFAULT_FEATURES: tuple[str, ...] = ("entity_robust_z",)
# IQR / 1.349 estimates the standard deviation of a normal distribution.
_IQR_TO_SIGMA = 1.349


def observation_matrix(entity_ids: Sequence[Any] | np.ndarray, values: Sequence[Any] | np.ndarray) -> np.ndarray:
    """The model input: float columns ``entity_id`` (NaN for none) and ``metric_value``."""
    values = np.asarray(values, dtype=float).reshape(-1)
    entities = np.asarray([np.nan if e is None else e for e in entity_ids] if not isinstance(entity_ids, np.ndarray)
                          else entity_ids, dtype=float).reshape(-1)
    if entities.shape != values.shape:
        raise ValueError(f"entity_ids ({entities.shape[0]}) and values ({values.shape[0]}) differ in length")
    return np.column_stack([entities, values])


def _group_quantiles(sorted_values: np.ndarray, starts: np.ndarray, counts: np.ndarray,
                     q: float) -> np.ndarray:
    """Quantile ``q`` of each group of a group-wise sorted array (linear interpolation, vectorised)."""
    position = starts + q * (counts - 1)
    lower = np.floor(position).astype(np.int64)
    upper = np.ceil(position).astype(np.int64)
    fraction = position - lower
    return sorted_values[lower] * (1.0 - fraction) + sorted_values[upper] * fraction


def _robust_scale(q25: np.ndarray | float, q75: np.ndarray | float, floor: float) -> np.ndarray:
    return np.maximum((np.asarray(q75) - np.asarray(q25)) / _IQR_TO_SIGMA, floor)


class EntityRelativeFeatures(TransformerMixin, BaseEstimator):
    """Observation matrix -> the ``features`` columns (see the module docstring).

    Parameters
    ----------
    features:
        Names from :data:`AVAILABLE_FEATURES`, in output order.
    min_entity_samples:
        Entities with fewer training observations use the metric-wide median/scale.
    scale_floor_fraction:
        An entity's scale is at least this fraction of the metric-wide scale,
        so a perfectly constant entity does not turn every tiny change into
        an infinite deviation.
    """

    def __init__(self, features: tuple[str, ...] = DEFAULT_FEATURES, min_entity_samples: int = 5,
                 scale_floor_fraction: float = 0.05) -> None:
        self.features = features
        self.min_entity_samples = min_entity_samples
        self.scale_floor_fraction = scale_floor_fraction

    def _check(self, X: Any) -> np.ndarray:
        X = np.asarray(X, dtype=float)
        if X.ndim != 2 or X.shape[1] != len(INPUT_COLUMNS):
            width = X.shape[1] if X.ndim == 2 else X.ndim
            raise ValueError(
                f"X has {width} columns, but {type(self).__name__} expects {len(INPUT_COLUMNS)}: "
                f"{', '.join(INPUT_COLUMNS)}"
            )
        if not np.all(np.isfinite(X[:, 1])):
            raise ValueError("metric_value must be finite")
        return X

    def fit(self, X: Any, y: Any = None) -> "EntityRelativeFeatures":
        unknown = [name for name in self.features if name not in AVAILABLE_FEATURES]
        if unknown or not self.features:
            raise ValueError(f"features must be a non-empty selection of {AVAILABLE_FEATURES} (got {self.features!r})")
        X = self._check(X)
        if X.shape[0] == 0:
            raise ValueError("cannot fit on zero observations")
        entities, values = X[:, 0], X[:, 1]
        self.n_features_in_ = X.shape[1]
        self.global_median_ = float(np.median(values))
        q25, q75 = np.percentile(values, [25, 75])
        spread = max(abs(self.global_median_), 1.0)
        # A constant metric still needs a positive scale; 1e-6 of its size is "any change".
        self.global_scale_ = float(_robust_scale(q25, q75, 1e-6 * spread))
        floor = max(self.global_scale_ * float(self.scale_floor_fraction), 1e-6 * spread)

        known = ~np.isnan(entities)
        ent, val = entities[known], values[known]
        if ent.size:
            order = np.lexsort((val, ent))
            ent, val = ent[order], val[order]
            ids, starts, counts = np.unique(ent, return_index=True, return_counts=True)
            keep = counts >= int(self.min_entity_samples)
            ids, starts, counts = ids[keep], starts[keep], counts[keep]
            self.entity_ids_ = ids
            self.entity_median_ = _group_quantiles(val, starts, counts, 0.5)
            self.entity_scale_ = _robust_scale(
                _group_quantiles(val, starts, counts, 0.25), _group_quantiles(val, starts, counts, 0.75), floor
            )
            self.entity_count_ = counts
        else:
            self.entity_ids_ = np.empty(0)
            self.entity_median_ = np.empty(0)
            self.entity_scale_ = np.empty(0)
            self.entity_count_ = np.empty(0, dtype=np.int64)
        return self

    def reference(self, X: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per row: (median, scale, known) — the entity's if it was seen in training, else the metric's."""
        X = self._check(X)
        entities = X[:, 0]
        median = np.full(X.shape[0], self.global_median_)
        scale = np.full(X.shape[0], self.global_scale_)
        known = np.zeros(X.shape[0], dtype=bool)
        if self.entity_ids_.size:
            index = np.searchsorted(self.entity_ids_, entities)
            index = np.clip(index, 0, self.entity_ids_.size - 1)
            known = (~np.isnan(entities)) & (self.entity_ids_[index] == entities)
            median[known] = self.entity_median_[index[known]]
            scale[known] = self.entity_scale_[index[known]]
        return median, scale, known

    def transform(self, X: Any) -> np.ndarray:
        X = self._check(X)
        median, scale, _known = self.reference(X)
        values = X[:, 1]
        columns = {
            "value": lambda: values,
            "entity_robust_z": lambda: (values - median) / scale,
            "entity_log_ratio": lambda: np.log((np.abs(values) + 1.0) / (np.abs(median) + 1.0)),
        }
        return np.column_stack([columns[name]() for name in self.features])

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return np.asarray(list(self.features), dtype=object)


def build_pipeline(*, contamination: float | str = 0.02, n_estimators: int = 200,
                   max_samples: int | str = "auto", random_state: Optional[int] = 42,
                   min_entity_samples: int = 5, features: tuple[str, ...] = DEFAULT_FEATURES) -> Pipeline:
    """A fresh, unfitted model: entity-relative features, then an Isolation Forest."""
    return Pipeline([
        ("features", EntityRelativeFeatures(features=tuple(features), min_entity_samples=min_entity_samples)),
        ("iforest", IsolationForest(n_estimators=n_estimators, max_samples=max_samples,
                                    contamination=contamination, random_state=random_state)),
    ])


def is_feature_pipeline(model: Any) -> bool:
    """True for models built by :func:`build_pipeline` (they take the observation matrix)."""
    return isinstance(model, Pipeline) and len(model.steps) > 0 and isinstance(model.steps[0][1],
                                                                               EntityRelativeFeatures)


def model_input(model: Any, matrix: np.ndarray) -> np.ndarray:
    """What to pass to ``model``: the observation matrix for our pipelines.

    Legacy models (a bare estimator fitted on the raw value, as the original
    system stored them in BLOBs) get the value column only, as they always did.
    """
    if is_feature_pipeline(model):
        return matrix
    _forget_column_names(model)
    return matrix[:, 1:2]


def _forget_column_names(model: Any) -> None:
    """Score a legacy estimator the way it is called: with an array, names dropped on both sides.

    The original app fitted on a one-column DataFrame, so the estimator keeps
    ``feature_names_in_``; scoring it with an array (pandas is not a
    dependency) made scikit-learn warn on every call, and the warning filters
    its joblib threads swap around each tree let the warning through hundreds
    of times a minute.  The single column is the value either way.
    """
    names = getattr(model, "feature_names_in_", None)
    if names is not None and len(names) == 1:
        try:
            del model.feature_names_in_
        except AttributeError:  # another thread got there first
            pass
