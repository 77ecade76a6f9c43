"""A model's input signature: what it must be given, and whether this service can compute that.

Recorded in ``ml_models.input_signature`` (revision 0012) as JSON:

* ``{"kind": "raw_value"}`` — a bare estimator fitted on one column, the raw
  ``metric_value`` (the minibar app's BLOB era);
* ``{"kind": "pipeline", "features": [...], "feature_version": N}`` — our saved
  pipeline (:func:`utils.ml.pipeline.features.build_pipeline`), given the observation matrix;
* ``{"kind": "detector", "feature_version": N}`` — our causal per-entity detector
  (:mod:`utils.ml.detector`), given observations with their entity and time;
* ``{"kind": "aggregate_features", "n_features": N, "features": [names] | null}`` —
  the app's file era and its fallback BLOBs: N per-entity aggregates (mean, std,
  trend, ...) computed by its feature engineer, which this service does not have;
* ``{"kind": "unknown"}`` — an object none of the above describes.

Detection uses a model only when :func:`compatible` says so; an incompatible
model falls back with the reason ``incompatible_input`` (never fed values it
was not trained on).  ``unknown`` is let through: scoring it either works or
falls back with ``predict_failed``.
"""
from __future__ import annotations

from typing import Any, Optional

from utils.ml.pipeline.features import AVAILABLE_FEATURES, FEATURE_VERSION, is_feature_pipeline
from utils.ml.store.safe_load import FILE_BASED

RAW_VALUE = "raw_value"
PIPELINE = "pipeline"
DETECTOR = "detector"
AGGREGATE = "aggregate_features"
UNKNOWN = "unknown"
KINDS = (RAW_VALUE, PIPELINE, DETECTOR, AGGREGATE, UNKNOWN)


def _names(value: Any) -> Optional[list[str]]:
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return [str(v) for v in value]
    return None


def of_object(obj: Any, parameters: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The signature of a loaded model (a legacy dict package is looked into)."""
    names = _names((parameters or {}).get("feature_list"))
    if isinstance(obj, dict) and "model" in obj:  # the app's joblib package
        names = _names(obj.get("feature_list")) or names
        inner = obj["model"]
        n = getattr(inner, "n_features_in_", None)
        return {"kind": AGGREGATE, "n_features": int(n) if n is not None else (len(names) if names else None),
                "features": names, "has_scaler": obj.get("scaler") is not None}
    if type(obj).__module__.startswith("utils.ml.detector"):
        return {"kind": DETECTOR, "feature_version": getattr(obj, "feature_version", None)}
    if is_feature_pipeline(obj):
        return {"kind": PIPELINE, "features": list(obj.steps[0][1].features), "feature_version": FEATURE_VERSION}
    n = getattr(obj, "n_features_in_", None)
    if n is None:
        return {"kind": UNKNOWN}
    if int(n) == 1 and not names:
        return {"kind": RAW_VALUE}
    feature_names = getattr(obj, "feature_names_in_", None)
    return {"kind": AGGREGATE, "n_features": int(n),
            "features": names or (_names(list(feature_names)) if feature_names is not None else None)}


def of_row(model_data_is_marker: bool, parameters: Optional[dict[str, Any]],
           recorded: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """What a row says without loading anything: its recorded signature, else what its legacy marks imply."""
    if recorded:
        return recorded
    names = _names((parameters or {}).get("feature_list"))
    if model_data_is_marker or names:
        # The app's file era: always its aggregate features.
        return {"kind": AGGREGATE, "n_features": len(names) if names else None, "features": names}
    return None


def compatible(signature: Optional[dict[str, Any]]) -> bool:
    """True when this service can compute the model's input (or cannot tell: unknown / not recorded)."""
    if not signature:
        return True
    kind = signature.get("kind")
    if kind == AGGREGATE:
        return False
    if kind == PIPELINE:
        return set(signature.get("features") or ()) <= set(AVAILABLE_FEATURES) and \
            int(signature.get("feature_version") or 0) <= FEATURE_VERSION
    return True


def explain(signature: Optional[dict[str, Any]]) -> str:
    """One phrase for logs, the CLI and the dashboard."""
    if not signature:
        return "not recorded"
    kind = signature.get("kind")
    if kind == RAW_VALUE:
        return "raw value"
    if kind == PIPELINE:
        return "pipeline (" + ", ".join(signature.get("features") or ()) + ")"
    if kind == DETECTOR:
        return "observations (per-entity detector)"
    if kind == AGGREGATE:
        n = signature.get("n_features")
        return f"{n if n is not None else 'several'} aggregate features"
    return "unknown"


def is_marker(data: Optional[bytes]) -> bool:
    return data is not None and bytes(data) == FILE_BASED


def incompatible_detail(model_id: Optional[int], sig: Optional[dict[str, Any]]) -> str:
    return (f"model {model_id} expects {explain(sig)}, an input this service does not compute; "
            "it is replaced by the next training of its metric type")
