"""Training: one Isolation Forest pipeline per metric type, saved through the ModelManager.

For each metric type with observations in the last ``ML_TRAIN_WINDOW_DAYS``
days (internal figures such as ``model_load_time`` excluded):

1. **Gate** — fewer than ``ML_MIN_TRAIN_SAMPLES`` observations: skipped, with
   the reason, and the current model (if any) stays active.
2. **Evaluation, only where labels exist** — labels come from
   ``extra_data.label`` (``"anomaly"`` / ``"normal"``, as the demo data and
   any labelled import carry) and from alerts marked false positive (their
   observations count as *normal*, overriding anything else).  The window is
   split in time: a model is fitted on the older 80 % and judged on the
   labelled observations of the newest 20 %, which it has never seen.
   Accuracy, precision and recall come from that held-out part; any of them
   whose denominator is zero, and all of them when the held-out part has no
   labels, are NULL.  Nothing is ever scored on its own training rows.
3. **Final model** — refitted on the whole window (the recent data matters
   most for the per-entity baselines) and saved as the new active version;
   ``parameters`` records the settings, the window, the label counts and how
   the metrics were obtained.

Labels are never used for fitting: the forest stays unsupervised.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Optional

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import DataError

from utils.ml import events
from utils.ml.jobs.interrupt import JobInterrupted, checkpoint
from utils.ml.pipeline import bad_rows
from utils.ml.pipeline.features import (
    DEFAULT_FEATURES,
    FEATURE_VERSION,
    INPUT_COLUMNS,
    MODEL_TYPE,
    build_pipeline,
    observation_matrix,
)
from utils.ml.pipeline.observations import INTERNAL_METRIC_TYPES, check_observed_metric_type
from utils.ml.pipeline.scoring import score_with_model
from utils.models import MLAlert, MLMetric
from utils.settings import current
from utils.time import as_utc, utcnow

logger = logging.getLogger(__name__)

HOLDOUT_FRACTION = 0.2
LABEL_UNKNOWN, LABEL_NORMAL, LABEL_ANOMALY = -1, 0, 1
_LABEL_CODES = {"anomaly": LABEL_ANOMALY, "normal": LABEL_NORMAL}


@dataclass
class TrainingData:
    """One metric type's window, ordered by time."""

    ids: np.ndarray
    entity_ids: np.ndarray  # float, NaN for none
    values: np.ndarray
    timestamps: list[datetime]
    labels: np.ndarray  # -1 unknown, 0 normal, 1 anomaly
    false_positives: int
    bad_rows: int = 0  # rows of the window dropped as unusable (see utils.ml.pipeline.bad_rows)

    def __len__(self) -> int:
        return int(self.values.shape[0])

    @property
    def matrix(self) -> np.ndarray:
        return observation_matrix(self.entity_ids, self.values)


def _ratio(numerator: int, denominator: int) -> Optional[float]:
    return None if denominator == 0 else round(numerator / denominator, 6)


def evaluate(predicted: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Confusion counts and accuracy/precision/recall over the labelled entries (label >= 0).

    A metric whose denominator is zero is None, never a made-up 0 or 1.
    """
    known = labels >= 0
    pred, truth = predicted[known].astype(bool), labels[known] == LABEL_ANOMALY
    tp = int(np.sum(pred & truth))
    fp = int(np.sum(pred & ~truth))
    tn = int(np.sum(~pred & ~truth))
    fn = int(np.sum(~pred & truth))
    return {
        "labelled": int(known.sum()), "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        "accuracy": _ratio(tp + tn, tp + fp + tn + fn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
    }


class ModelTrainer:
    """The seed's trainer: ``ModelTrainer(db).train(metric_type=None) -> list[dict]``."""

    def __init__(self, db: Any, model_manager: Any = None, *, window_days: Optional[int] = None,
                 min_samples: Optional[int] = None, contamination: Optional[float] = None,
                 n_estimators: Optional[int] = None, random_state: int = 42,
                 features: tuple[str, ...] = DEFAULT_FEATURES, actor: str = "trainer") -> None:
        self.db = db
        self._model_manager = model_manager
        self.window_days = int(window_days if window_days is not None else current("ML_TRAIN_WINDOW_DAYS"))
        self.min_samples = int(min_samples if min_samples is not None else current("ML_MIN_TRAIN_SAMPLES"))
        self.contamination = float(contamination if contamination is not None else current("ML_CONTAMINATION"))
        self.n_estimators = int(n_estimators if n_estimators is not None else current("ML_N_ESTIMATORS"))
        self.random_state = random_state
        self.features = tuple(features)
        self.actor = actor

    @property
    def model_manager(self) -> Any:
        if self._model_manager is None:
            from utils.ml.model_manager import get_model_manager

            self._model_manager = get_model_manager()
        return self._model_manager

    @property
    def session(self) -> Any:
        return self.db.session

    # ---------------------------------------------------------------- data
    def metric_types(self, since: datetime) -> list[str]:
        """Metric types with observations since ``since``, internal figures excluded."""
        rows = self.session.execute(
            select(MLMetric.metric_type).where(
                MLMetric.timestamp >= since, MLMetric.metric_type.not_in(INTERNAL_METRIC_TYPES)
            ).distinct().order_by(MLMetric.metric_type)
        ).scalars().all()
        return list(rows)

    def _rows(self, metric_type: str, since: datetime, until: datetime) -> list[Any]:
        """(id, entity_id, metric_value, timestamp, label) of the window, in time order.

        The label is read in SQL (``->>``); a legacy ``json`` column holding a
        NUL makes that conversion fail for the whole query, so the rows are
        then read again with the raw document and the label taken in Python.
        """
        where = (MLMetric.metric_type == metric_type, MLMetric.timestamp >= since, MLMetric.timestamp <= until)
        order = (MLMetric.timestamp, MLMetric.id)
        label = MLMetric.extra_data["label"].as_string()
        try:
            return list(self.session.execute(
                select(MLMetric.id, MLMetric.entity_id, MLMetric.metric_value, MLMetric.timestamp, label)
                .where(*where).order_by(*order)).all())
        except DataError:
            self.session.rollback()
            logger.warning("labels of %s cannot be read in SQL (a NUL in extra_data?); reading them row by row",
                           metric_type)
        rows = self.session.execute(
            select(MLMetric.id, MLMetric.entity_id, MLMetric.metric_value, MLMetric.timestamp, MLMetric.extra_data)
            .where(*where).order_by(*order)).all()
        return [(r[0], r[1], r[2], r[3], bad_rows.label_of(r[4])) for r in rows]

    def load(self, metric_type: str, since: datetime, until: Optional[datetime] = None) -> TrainingData:
        """The window's observations of ``metric_type`` (time order) with their labels.

        Rows no model can use (non-finite value, no timestamp) are dropped and
        counted in ``bad_rows``, so one bad row never fails the metric type.
        """
        rows, dropped = bad_rows.finite_rows(self._rows(metric_type, since, until or utcnow()), 2, 3)
        n = len(rows)
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=n)
        entities = np.fromiter((np.nan if r[1] is None else r[1] for r in rows), dtype=float, count=n)
        values = np.fromiter((r[2] for r in rows), dtype=float, count=n)
        labels = np.fromiter((_LABEL_CODES.get(r[4], LABEL_UNKNOWN) for r in rows), dtype=np.int8, count=n)
        false_positive_ids = np.asarray(self.session.execute(
            select(MLAlert.observation_id).where(
                MLAlert.metric_type == metric_type, MLAlert.is_false_positive.is_(True),
                MLAlert.observation_id.is_not(None),
            )
        ).scalars().all(), dtype=np.int64)
        marked = np.isin(ids, false_positive_ids) if false_positive_ids.size else np.zeros(n, dtype=bool)
        labels[marked] = LABEL_NORMAL  # an operator said so: that overrides any other label
        return TrainingData(ids, entities, values, [r[3] for r in rows], labels, int(marked.sum()), dropped)

    # ------------------------------------------------------------ training
    def _pipeline(self):
        return build_pipeline(contamination=self.contamination, n_estimators=self.n_estimators,
                              random_state=self.random_state, features=self.features)

    def _evaluate_on_holdout(self, data: TrainingData) -> dict[str, Any]:
        n = len(data)
        split = int(n * (1 - HOLDOUT_FRACTION))
        info: dict[str, Any] = {"method": "time_split", "holdout_fraction": HOLDOUT_FRACTION,
                                "train_samples": split, "holdout_samples": n - split}
        holdout_labels = data.labels[split:]
        if not np.any(holdout_labels >= 0):
            info.update(method=None, reason="no labelled observations in the held-out (newest) part of the window")
            return info
        if split < 2:
            info.update(method=None, reason="too few observations before the held-out part to fit a model")
            return info
        info["split_at"] = as_utc(data.timestamps[split]).isoformat()
        matrix = data.matrix
        model = self._pipeline().fit(matrix[:split])
        predicted = score_with_model(model, matrix[split:]).is_anomaly
        info.update(evaluate(predicted, holdout_labels))
        info["note"] = "metrics of a model fitted on the older part, judged on the newer; the saved model is refitted on the whole window"
        return info

    def train_one(self, metric_type: str, now: Optional[datetime] = None) -> dict[str, Any]:
        """Train, evaluate (if labelled) and save one metric type's model; return its summary.

        The window is ``[now - window_days, now]``; ``now`` defaults to the current time.
        """
        started = time.perf_counter()
        now = now or utcnow()
        since = now - timedelta(days=self.window_days)
        result: dict[str, Any] = {
            "metric_type": metric_type, "model_type": MODEL_TYPE, "status": "skipped", "model_id": None,
            "samples": 0, "entities": 0, "labelled": 0, "accuracy": None, "precision": None, "recall": None,
            "skipped": None, "error": None, "seconds": None, "bad_rows": 0,
        }
        data = self.load(metric_type, since, now)
        self.session.rollback()  # end the read transaction before the long fit
        result["samples"] = len(data)
        result["bad_rows"] = data.bad_rows
        bad_rows.report("train_models", metric_type, data.bad_rows)
        if len(data) < self.min_samples:
            result["skipped"] = (f"{len(data)} observations in the last {self.window_days} days, "
                                 f"fewer than ML_MIN_TRAIN_SAMPLES={self.min_samples}")
            result["seconds"] = round(time.perf_counter() - started, 3)
            events.emit("training_skipped", f"Training skipped for {metric_type}: {result['skipped']}",
                        metric_type=metric_type, samples=len(data), reason="min_samples")
            return result

        checkpoint(f"before evaluating {metric_type}")
        evaluation = self._evaluate_on_holdout(data)
        checkpoint(f"before fitting {metric_type}")
        model = self._pipeline().fit(data.matrix)
        forest = model.steps[-1][1]
        transformer = model.steps[0][1]
        entities = int(np.unique(data.entity_ids[~np.isnan(data.entity_ids)]).size)
        labels = {"anomaly": int(np.sum(data.labels == LABEL_ANOMALY)),
                  "normal": int(np.sum(data.labels == LABEL_NORMAL)),
                  "false_positive_alerts": data.false_positives}
        parameters = {
            "feature_version": FEATURE_VERSION,
            "input_columns": list(INPUT_COLUMNS),
            "features": list(transformer.features),
            "min_entity_samples": transformer.min_entity_samples,
            "entities_with_baseline": int(transformer.entity_ids_.size),
            "iforest": {"n_estimators": forest.n_estimators, "max_samples": forest.max_samples,
                        "contamination": forest.contamination, "random_state": forest.random_state},
            "threshold": round(-float(forest.offset_), 6),
            "window": {
                "days": self.window_days, "start": since.isoformat(), "end": now.isoformat(),
                "first_observation": as_utc(data.timestamps[0]).isoformat(),
                "last_observation": as_utc(data.timestamps[-1]).isoformat(),
                "samples": len(data), "entities": entities, "max_observation_id": int(data.ids.max()),
            },
            "labels": labels,
            "evaluation": evaluation,
            "fit_seconds": round(time.perf_counter() - started, 3),
        }
        scores = {k: evaluation.get(k) for k in ("accuracy", "precision", "recall")}
        row = self.model_manager.save_model(
            model, MODEL_TYPE, metric_type, scores["accuracy"], scores["precision"], scores["recall"],
            parameters=parameters, training_date=now, actor=self.actor,
        )
        result.update(status="trained", model_id=row.id, entities=entities,
                      labelled=int(evaluation.get("labelled", 0)), **scores,
                      seconds=round(time.perf_counter() - started, 3))
        events.emit(
            "model_trained",
            f"Trained {MODEL_TYPE}/{metric_type} on {len(data)} observations: model {row.id}",
            model_id=row.id, metric_type=metric_type, samples=len(data), labelled=result["labelled"],
            accuracy=scores["accuracy"], precision=scores["precision"], recall=scores["recall"],
            seconds=result["seconds"],
        )
        return result

    def train(self, metric_type: Optional[str] = None) -> list[dict[str, Any]]:
        """Train ``metric_type`` (or every metric type with data in the window).

        One metric type's failure is reported in its entry (``status``
        ``"failed"``, ``error``) and does not stop the others.
        """
        now = utcnow()
        if metric_type is not None:
            types = [check_observed_metric_type(metric_type, "trained on")]
        else:
            types = self.metric_types(now - timedelta(days=self.window_days))
            self.session.rollback()
        results = []
        for name in types:
            checkpoint(f"before training {name}")
            try:
                results.append(self.train_one(name, now=now))
            except JobInterrupted:
                raise
            except Exception as exc:  # one metric type must not stop the others
                try:
                    self.session.rollback()
                except Exception:  # pragma: no cover - the session is beyond help; report the original error
                    pass
                logger.exception("training %s failed", name)
                events.emit("training_failed", f"Training failed for {name}: {exc}", level=logging.ERROR,
                            metric_type=name, error=str(exc))
                results.append({"metric_type": name, "model_type": MODEL_TYPE, "status": "failed", "model_id": None,
                                "samples": None, "entities": None, "labelled": None, "accuracy": None,
                                "precision": None, "recall": None, "skipped": None,
                                "error": f"{type(exc).__name__}: {exc}", "seconds": None})
        return results


def train_models(metric_type: Optional[str] = None, actor: str = "trainer") -> list[dict[str, Any]]:
    """Train every metric type (or one) in the current app; the scheduler's and the CLI's entry point."""
    from utils.extensions import db

    return ModelTrainer(db, actor=actor).train(metric_type)
