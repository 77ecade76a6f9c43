"""The ``drift_check`` job: measure drift per metric type, store the reports, trigger ONE retraining.

For each active model (internal figures excluded), :func:`run_drift_check`
stores an ``ml_drift_reports`` row.  A drifted report triggers a retraining
of that metric type through the job runner (``train_models``, trigger
``drift``, actor ``drift``; the gate then decides as for any training) —
once per drift episode: an episode is the run of drifted reports since the
type's last calm (not drifted) report, and once one of them triggered, the
rest record ``triggered`` false.  So a persisting shift retrains once, not
every interval, whether the retrained model was promoted or not; the next
calm report ends the episode.  The trigger also enqueues a ``drift`` notification (key
``drift:<metric_type>:<report id>``) in the report's transaction and emits
``drift_retraining_triggered``.  Training busy elsewhere: not triggered now,
the next check tries again.
"""
from __future__ import annotations

import logging
from typing import Any, Optional

from sqlalchemy import func, select

from utils.extensions import db
from utils.ml import events
from utils.ml.pipeline.observations import INTERNAL_METRIC_TYPES
from utils.ml.promotion.drift import DriftSettings, measure_type
from utils.ml.promotion.models import DriftReport
from utils.models import JobRun, MLModel
from utils.time import utcnow

logger = logging.getLogger(__name__)
DRIFT_ACTOR = "drift"


def _already_triggered(metric_type: str) -> bool:
    """Did a report of the current drift episode (since the last calm report) trigger a retraining?"""
    last_calm = db.session.execute(
        select(func.max(DriftReport.id)).where(DriftReport.metric_type == metric_type,
                                               DriftReport.drifted.is_(False))
    ).scalar() or 0
    return db.session.execute(
        select(func.count()).select_from(DriftReport).where(
            DriftReport.metric_type == metric_type, DriftReport.triggered.is_(True), DriftReport.id > last_calm)
    ).scalar_one() > 0


def _retrain(metric_type: str) -> tuple[Optional[int], str]:
    """Run the retraining through the job runner; ``(run id, outcome)``."""
    from utils.ml.jobs import JobBusyError, JobError, run_job_now
    from utils.ml.jobs.runner import TRIGGER_DRIFT

    try:
        outcome = run_job_now("train_models", DRIFT_ACTOR, trigger=TRIGGER_DRIFT, metric_type=metric_type)
        return outcome["run_id"], "success"
    except JobBusyError as exc:
        return None, f"not triggered: {exc}"
    except Exception as exc:  # noqa: BLE001 - the run is recorded as failed by the runner; still one run
        db.session.rollback()
        run_id = db.session.execute(select(func.max(JobRun.id)).where(JobRun.job_name == "train_models")).scalar()
        return run_id, f"failed: {exc.__class__.__name__}: {str(exc)[:200]}"


def check_one(model_type: str, metric_type: str, cfg: DriftSettings) -> dict[str, Any]:
    """Measure, store and (once per champion) act on the drift of one type."""
    from utils.ml.model_manager import get_model_manager
    from utils.ml.model_trainer import ModelTrainer

    manager = get_model_manager()
    outcome = manager.load_active(model_type, metric_type)
    if not outcome.ok:
        return {"skipped": f"active model not loadable: {outcome.reason}"}
    parameters = db.session.execute(select(MLModel.parameters).where(MLModel.id == outcome.model_id)).scalar()
    numbers = measure_type(ModelTrainer(db), outcome.model, parameters or {}, metric_type, utcnow(), cfg)
    db.session.rollback()
    if "skipped" in numbers:
        return numbers
    report = DriftReport(model_type=model_type, metric_type=metric_type, model_id=outcome.model_id,
                         reference_samples=numbers["reference_samples"], recent_samples=numbers["recent_samples"],
                         psi=numbers["psi"], ks=numbers["ks"], features=numbers["features"],
                         drifted=numbers["drifted"], triggered=False)
    db.session.add(report)
    db.session.commit()
    summary = {"report_id": report.id, "model_id": outcome.model_id, "psi": report.psi, "ks": report.ks,
               "drifted": report.drifted, "triggered": False}
    if not report.drifted:
        return summary
    events.emit("drift_detected", f"drift on {metric_type}: PSI {report.psi:.3f}, KS {report.ks:.3f}",
                level=logging.WARNING, metric_type=metric_type, model_id=outcome.model_id, psi=report.psi,
                ks=report.ks)
    if _already_triggered(metric_type):
        summary["note"] = "retraining already triggered in this drift episode"
        db.session.rollback()
        return summary
    run_id, result = _retrain(metric_type)
    summary.update(retraining=result, job_run_id=run_id)
    if run_id is None:
        return summary
    report = db.session.get(DriftReport, summary["report_id"])
    report.triggered, report.job_run_id = True, run_id
    _notify(metric_type, report, result)
    db.session.commit()
    summary["triggered"] = True
    events.emit("drift_retraining_triggered", f"drift on {metric_type} triggered training run {run_id} ({result})",
                metric_type=metric_type, model_id=outcome.model_id, job_run_id=run_id, psi=report.psi, ks=report.ks)
    return summary


def _notify(metric_type: str, report: DriftReport, result: str) -> None:
    from utils.ml.notify.producers import notify_drift

    payload = {"metric_type": metric_type, "model_id": report.model_id, "psi": report.psi, "ks": report.ks,
               "features": report.features, "job_run_id": report.job_run_id, "retraining": result,
               "recent_samples": report.recent_samples, "reference_samples": report.reference_samples}
    try:
        notify_drift(metric_type, report.id, payload, session=db.session)
    except Exception as exc:  # noqa: BLE001 - the trigger stands; the log says what was not recorded
        logger.warning("drift notification not recorded: %s", exc)


def run_drift_check(actor: str, metric_type: Optional[str] = None) -> dict[str, Any]:
    """The job: every active model's type (or one); ``{"metric_types": {name: summary}}``."""
    cfg = DriftSettings.current()
    query = select(MLModel.model_type, MLModel.metric_type).where(
        MLModel.is_active.is_(True), MLModel.metric_type.not_in(INTERNAL_METRIC_TYPES)).order_by(MLModel.metric_type)
    if metric_type is not None:
        query = query.where(MLModel.metric_type == metric_type)
    types = db.session.execute(query).all()
    db.session.rollback()
    results: dict[str, Any] = {}
    for model_type, name in types:
        try:
            results[name] = check_one(model_type, name, cfg)
        except Exception as exc:  # noqa: BLE001 - one type must not stop the others
            db.session.rollback()
            logger.exception("drift check of %s failed", name)
            results[name] = {"error": f"{exc.__class__.__name__}: {exc}"}
    return {"metric_types": results}
