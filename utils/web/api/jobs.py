"""Job routes: ``POST /train``, ``/scan``, ``/cleanup`` run the scheduler's own jobs through the one job runner."""
from __future__ import annotations

from utils.extensions import db
from utils.ml.jobs import TRIGGER_API, JobBusyError, run_job_now
from utils.ml.jobs.interrupt import JobInterrupted
from utils.web.api import schemas as s
from utils.web.api.framework import ApiError, actor_of, operation
from utils.web.errors import is_database_unavailable


def _run_job(name: str, body: s.JobRequest | s.TrainRequest | s.CleanupRequest) -> s.JobResult:
    actor = actor_of(body.actor)
    try:
        # The scheduler's runner: same job, same cross-process busy check, a recorded run.
        outcome = run_job_now(name, actor, trigger=TRIGGER_API, **body.params())
    except JobBusyError as exc:
        raise ApiError(409, str(exc)) from None
    except JobInterrupted as exc:  # recorded as interrupted; the service is going down
        raise ApiError(503, f"job {name} {exc}; everything before that point is kept, retry later") from None
    except Exception as exc:  # recorded as failed in ml_job_runs (with the traceback) by run_job_now
        if is_database_unavailable(exc):
            raise  # the database is down or frozen: 503 (framework), not a failed job
        db.session.rollback()
        raise ApiError(500, f"job {name} failed: {exc.__class__.__name__}: {str(exc)[:300]} "
                            "(the traceback is in ml_job_runs and the server log)") from None
    return s.JobResult.model_validate({**outcome, "actor": actor})


@operation("POST", "/train", response=s.JobResult, body=s.TrainRequest, body_required=False, errors=(409, 500),
           tag="jobs", summary="Train the models now (the same job the scheduler runs); the gate decides promotion")
def train(body: s.TrainRequest) -> s.JobResult:
    """409 while training is already running in any process.  ``promote``: auto (default), never or always."""
    return _run_job("train_models", body)


@operation("POST", "/scan", response=s.JobResult, body=s.JobRequest, body_required=False, errors=(409, 500),
           tag="jobs", summary="Scan new observations for anomalies now")
def scan(body: s.JobRequest) -> s.JobResult:
    """409 while a scan is already running in any process."""
    return _run_job("anomaly_scan", body)


@operation("POST", "/cleanup", response=s.JobResult, body=s.CleanupRequest, body_required=False, errors=(409, 500),
           tag="jobs", summary="Delete old model versions now (keeps ML_KEEP_VERSIONS and the active one)")
def cleanup(body: s.CleanupRequest) -> s.JobResult:
    """409 while a cleanup is already running in any process."""
    return _run_job("cleanup_models", body)
