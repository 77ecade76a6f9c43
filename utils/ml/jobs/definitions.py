"""The jobs: what each runs, and which setting sets its interval.

Each job function takes the run's ``actor`` (who asked: a user, ``cli`` or
``scheduler``) plus its own parameters, and returns what it did.  A job that
finished but did not do all of its work raises :class:`JobError` carrying its
result, so the run is recorded as failed with that result.  The job runner
(:mod:`utils.ml.jobs.runner`) is the only caller: the CLI, the API and the
scheduler all run jobs through it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from flask import current_app

from utils.ml.validation import InvalidInput


class JobError(RuntimeError):
    """A job that finished but did not do all of its work; ``result`` says what it did."""

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result


class UnknownJobError(InvalidInput):
    """The job name is not one of :data:`JOBS`."""

    def __init__(self, name: Any) -> None:
        super().__init__("job", f"must be one of {', '.join(sorted(JOBS))} (got {name!r})")
        self.job = name


def _anomaly_scan(actor: str, **params: Any) -> Any:
    from utils.ml.pipeline.scan import run_scan  # imported when run: keeps web start-up light

    result = run_scan(**params)
    failed = [name for name, entry in result["metric_types"].items() if entry.get("error")]
    if failed:
        # Other metric types were scanned and committed; the run still failed.
        raise JobError(f"scan failed for {', '.join(failed)}", result)
    return result


def _train_models(actor: str, **params: Any) -> Any:
    from utils.ml.model_trainer import train_models

    results = train_models(actor=actor, **params)  # the activation audit names who trained
    failed = [entry["metric_type"] for entry in results if entry.get("status") == "failed"]
    if failed:
        # A skipped type (too little data) is fine; a failed one is not a success.
        raise JobError(f"training failed for {', '.join(failed)}", results)
    return results


def _cleanup_models(actor: str, keep_versions: Optional[int] = None) -> dict[str, Any]:
    from utils.ml.model_manager import get_model_manager

    from utils.extensions import db
    from utils.ml.pipeline.retention import RetentionPolicy, run_retention

    keep = keep_versions if keep_versions is not None else int(current_app.config["ML_KEEP_VERSIONS"])
    result = get_model_manager().cleanup_old_models(keep)
    # Old observations, our closed alerts and finished job runs, in small batches.
    result["retention"] = run_retention(db.engine, RetentionPolicy.from_config(current_app.config))
    if result.get("errors"):
        # Rows are gone but some files were not: that is not a success an
        # operator should stop worrying about.
        raise JobError(f"cleanup finished with {len(result['errors'])} error(s): {result['errors'][0]}", result)
    return result


def _drift_check(actor: str, **params: Any) -> dict[str, Any]:
    from utils.ml.promotion.drift_job import run_drift_check

    result = run_drift_check(actor, **params)
    failed = [name for name, entry in result["metric_types"].items() if entry.get("error")]
    if failed:
        raise JobError(f"drift check failed for {', '.join(failed)}", result)
    return result


def _notify_deliver(actor: str) -> dict[str, int]:
    from utils.ml.notify import deliver_pending

    # Failed sends are retried by later passes (the outbox keeps them): not a failed run.
    return deliver_pending().as_dict()


@dataclass(frozen=True)
class Job:
    name: str
    func: Callable[..., Any]
    interval_setting: str
    description: str


JOBS: dict[str, Job] = {
    job.name: job
    for job in (
        Job("anomaly_scan", _anomaly_scan, "ML_SCAN_INTERVAL_SECONDS", "score new observations, record alerts"),
        Job("train_models", _train_models, "ML_TRAIN_INTERVAL_SECONDS", "train one model per metric type"),
        Job("cleanup_models", _cleanup_models, "ML_CLEANUP_INTERVAL_SECONDS",
            "keep ML_KEEP_VERSIONS versions per type, remove orphans; retention of old rows"),
        Job("drift_check", _drift_check, "ML_DRIFT_INTERVAL_SECONDS",
            "PSI/KS of recent features vs the champion's window; a drift triggers one retraining"),
        Job("notify_deliver", _notify_deliver, "ML_NOTIFY_DELIVER_INTERVAL_SECONDS",
            "deliver due notifications from the outbox (webhook, e-mail)"),
    )
}


def get_job(name: str) -> Job:
    try:
        return JOBS[name]
    except (KeyError, TypeError):
        raise UnknownJobError(name) from None
