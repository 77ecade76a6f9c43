"""Training: one per-entity causal detector per metric type, saved through the ModelManager.

For each metric type with observations in the last ``ML_TRAIN_WINDOW_DAYS``
days (internal figures such as ``model_load_time`` excluded):

1. **Gate** — fewer than ``ML_MIN_TRAIN_SAMPLES`` observations (or fewer
   usable ones: every entity still warming up): skipped, with the reason,
   and the current model (if any) stays active.
2. **Evaluation, only where labels exist** — labels come from
   ``extra_data.label`` (``"anomaly"`` / ``"normal"``, as the demo data and
   any labelled import carry) and from alerts marked false positive (their
   observations count as *normal*, overriding anything else).  The window is
   split in time: a model is fitted on the older 80 % and judged on the
   labelled observations of the newest 20 %, which it has never seen, each
   scored causally (against its entity's observations before it).
   Accuracy, precision and recall come from that held-out part; any of them
   whose denominator is zero, and all of them when the held-out part has no
   labels, are NULL.  Nothing is ever scored on its own training rows.
3. **Same data, same settings** — the window's fingerprint
   (:mod:`utils.ml.promotion.fingerprint`) matches a kept version: no new
   version (status ``unchanged``).  The window ends at the newest
   observation (not the clock), so a restart with no new data changes nothing.
4. **Final model** — refitted on the whole window and saved as a
   *challenger*: a :class:`utils.ml.detector.model.TrainedDetector`
   (feature version 2: per-entity state, one forest over causal deviations,
   thresholds calibrated per entity; ``ML_CONTAMINATION`` is its calibration
   target and ``ML_FALSE_ALERTS_PER_ENTITY_DAY`` its alert budget, see the
   README).  ``parameters`` records the settings, the window, the label
   counts, the fingerprint and how the metrics were obtained.  Models of
   feature version 1 (the pooled pipeline) keep loading and scoring until
   this replaces them.
5. **Promotion** — :func:`utils.ml.promotion.decide.decide` compares it with
   the champion on the recent part of the window (each judged causally, with
   the rows before that part as history) and promotes, rejects, keeps
   (``promote="never"``) or holds it (a pin), recording the decision.

Labels are never used for fitting: the detector stays unsupervised.

The window is read by :mod:`utils.ml.pipeline.training_window`; the held-out
evaluation and the saved ``parameters`` are built by
:mod:`utils.ml.pipeline.training_record`.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from datetime import datetime, timedelta
from typing import Any, Optional

import numpy as np

from utils.ml import events
from utils.ml.jobs.interrupt import JobInterrupted, checkpoint
from utils.ml.pipeline import bad_rows, training_record, training_window
from utils.ml.detector import model as causal_detector
from utils.ml.pipeline.features import MODEL_TYPE
from utils.ml.pipeline.history import entity_codes
from utils.ml.pipeline.observations import check_observed_metric_type
from utils.ml.pipeline.scoring import score_window
from utils.ml.pipeline.training_data import (  # noqa: F401 (re-exported)
    _LABEL_CODES,
    HOLDOUT_FRACTION,
    LABEL_ANOMALY,
    LABEL_NORMAL,
    LABEL_UNKNOWN,
    TrainingData,
    evaluate,
)
from utils.ml.promotion.decide import check_mode, decide
from utils.ml.promotion.gate import GateSettings, budget_rate
from utils.ml.promotion.fingerprint import fingerprint, version_with
from utils.settings import current
from utils.time import as_utc, utcnow

logger = logging.getLogger(__name__)


class ModelTrainer:
    """The seed's trainer: ``ModelTrainer(db).train(metric_type=None) -> list[dict]``."""

    def __init__(self, db: Any, model_manager: Any = None, *, window_days: Optional[int] = None,
                 min_samples: Optional[int] = None, contamination: Optional[float] = None,
                 n_estimators: Optional[int] = None, random_state: int = 42,
                 alert_budget: Optional[float] = None, actor: str = "trainer", promote: str = "auto") -> None:
        self.db = db
        self._model_manager = model_manager
        self.window_days = int(window_days if window_days is not None else current("ML_TRAIN_WINDOW_DAYS"))
        self.min_samples = int(min_samples if min_samples is not None else current("ML_MIN_TRAIN_SAMPLES"))
        self.contamination = float(contamination if contamination is not None else current("ML_CONTAMINATION"))
        self.n_estimators = int(n_estimators if n_estimators is not None else current("ML_N_ESTIMATORS"))
        self.random_state = random_state
        self.alert_budget = float(alert_budget if alert_budget is not None
                                  else current("ML_FALSE_ALERTS_PER_ENTITY_DAY"))
        self.actor = actor
        self.promote = check_mode(promote)

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
    # Methods, not bare calls to utils.ml.pipeline.training_window, so a subclass or a test can replace them.
    def metric_types(self, since: datetime) -> list[str]:
        """Metric types with observations since ``since``, internal figures excluded."""
        return training_window.metric_types(self.session, since)

    def newest(self, metric_type: str, until: datetime) -> Optional[datetime]:
        """The time of the newest observation of ``metric_type`` at or before ``until``."""
        return training_window.newest(self.session, metric_type, until)

    def load(self, metric_type: str, since: datetime, until: Optional[datetime] = None) -> TrainingData:
        """The window's observations of ``metric_type`` (time order) with their labels.

        Rows no model can use (non-finite value, no timestamp) are dropped and
        counted in ``bad_rows``, so one bad row never fails the metric type.
        """
        return training_window.load_window(self.session, metric_type, since, until)

    # ------------------------------------------------------------ training
    def settings(self) -> causal_detector.DetectorSettings:
        """The detector's settings from the service's (a bad combination raises ValueError naming it)."""
        return causal_detector.DetectorSettings(
            contamination=self.contamination, false_alerts_per_entity_day=self.alert_budget,
            n_estimators=self.n_estimators, random_state=self.random_state)

    def _fit(self, data: TrainingData, upto: int, now: float) -> Optional[causal_detector.TrainedDetector]:
        return causal_detector.train(entity_codes(data.entity_ids[:upto]), data.epoch[:upto], data.values[:upto],
                                     self.settings(), now=now)

    def _evaluate_on_holdout(self, data: TrainingData) -> dict[str, Any]:
        return training_record.evaluate_on_holdout(data, self._fit)  # self._fit: a subclass's fit is judged

    def _skip(self, result: dict[str, Any], metric_type: str, reason: str, samples: int, started: float,
              code: str) -> dict[str, Any]:
        result["skipped"] = reason
        result["seconds"] = round(time.perf_counter() - started, 3)
        events.emit("training_skipped", f"Training skipped for {metric_type}: {reason}",
                    metric_type=metric_type, samples=samples, reason=code)
        return result

    def _fingerprint(self, data: TrainingData) -> str:
        # Every setting of the detector as built (a subclass's changes count, and so does
        # the subclass itself: its _fit may build something else), plus the window.
        built = dataclasses.asdict(self.settings())
        settings = {"feature_version": causal_detector.FEATURE_VERSION, "detector": built,
                    "trainer": type(self).__qualname__, "window_days": self.window_days}
        return fingerprint(data.ids, data.entity_ids, data.values, data.timestamps, data.labels, settings)

    @staticmethod
    def _recent(data: TrainingData, end: datetime) -> np.ndarray:
        """Mask of the window's last ``ML_GATE_WINDOW_DAYS``: the sample the gate judges both models on."""
        cutoff = end - timedelta(days=int(current("ML_GATE_WINDOW_DAYS")))
        return np.fromiter((as_utc(t) >= cutoff for t in data.timestamps), dtype=bool, count=len(data))

    def train_one(self, metric_type: str, now: Optional[datetime] = None) -> dict[str, Any]:
        """Train, evaluate (if labelled) and save one metric type's model; return its summary.

        The window is ``[end - window_days, end]`` where ``end`` is the newest
        observation at or before ``now`` (default: the current time).
        """
        started = time.perf_counter()
        now = self.newest(metric_type, now or utcnow()) or now or utcnow()
        since = now - timedelta(days=self.window_days)
        result: dict[str, Any] = {
            "metric_type": metric_type, "model_type": MODEL_TYPE, "status": "skipped", "model_id": None,
            "samples": 0, "entities": 0, "labelled": 0, "accuracy": None, "precision": None, "recall": None,
            "skipped": None, "error": None, "seconds": None, "bad_rows": 0, "promotion": None,
        }
        data = self.load(metric_type, since, now)
        self.session.rollback()  # end the read transaction before the long fit
        result["samples"] = len(data)
        result["bad_rows"] = data.bad_rows
        bad_rows.report("train_models", metric_type, data.bad_rows)
        if len(data) < self.min_samples:
            return self._skip(result, metric_type, f"{len(data)} observations in the last {self.window_days} days, "
                              f"fewer than ML_MIN_TRAIN_SAMPLES={self.min_samples}", len(data), started,
                              "min_samples")

        data_print = self._fingerprint(data)
        existing = version_with(self.session, MODEL_TYPE, metric_type, data_print)
        self.session.rollback()
        if existing is not None:
            result.update(status="unchanged", model_id=existing, seconds=round(time.perf_counter() - started, 3),
                          skipped=f"same data and settings as model {existing}: no new version")
            events.emit("training_unchanged", f"Training of {metric_type} skipped: {result['skipped']}",
                        metric_type=metric_type, model_id=existing, samples=len(data))
            return result

        checkpoint(f"before evaluating {metric_type}")
        evaluation = self._evaluate_on_holdout(data)
        checkpoint(f"before fitting {metric_type}")
        model = self._fit(data, len(data), now.timestamp())
        if model is None:
            return self._skip(result, metric_type, f"fewer than {self.settings().min_samples} "
                              "observations with enough earlier ones of their entity", len(data), started,
                              "min_samples")
        entities = training_record.entity_count(data)
        parameters = training_record.model_parameters(
            model, data, evaluation, window_days=self.window_days, since=since, end=now, entities=entities,
            data_print=data_print, started=started)
        scores = {k: evaluation.get(k) for k in ("accuracy", "precision", "recall")}
        row = self.model_manager.save_model(
            model, MODEL_TYPE, metric_type, scores["accuracy"], scores["precision"], scores["recall"],
            parameters=parameters, training_date=now, actor=self.actor, activate=False,
        )
        recent = self._recent(data, now)  # a suffix: the rows are in time order
        start = int(np.argmax(recent)) if recent.any() else len(data)
        epoch = data.epoch
        promotion = decide(self.model_manager, model_type=MODEL_TYPE, metric_type=metric_type, challenger_id=row.id,
                           challenger=model, labels=data.labels[start:], mode=self.promote, actor=self.actor,
                           score=lambda candidate: score_window(candidate, data.entity_ids, epoch, data.values, start),
                           fingerprint=data_print,
                           budget_rate=budget_rate(GateSettings.current().alert_budget, data.entity_ids[start:],
                                                   epoch[start:]))
        result["promotion"] = {k: promotion[k] for k in ("decision", "reason", "champion_id", "method")}
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
                                "error": f"{type(exc).__name__}: {exc}", "seconds": None, "promotion": None})
        return results


def train_models(metric_type: Optional[str] = None, actor: str = "trainer", promote: str = "auto") -> list[dict[str, Any]]:
    """Train every metric type (or one) in the current app; the scheduler's and the CLI's entry point.

    ``promote``: ``auto`` (the gate decides), ``never`` or ``always``.
    """
    from utils.extensions import db

    return ModelTrainer(db, actor=actor, promote=promote).train(metric_type)
