"""Jobs: what runs on a schedule or on demand, and the guarantees around every run.

* :mod:`.definitions` — the jobs (``anomaly_scan``, ``train_models``, ``cleanup_models``,
  ``drift_check``, ``notify_deliver``);
* :mod:`.runner` — the one runner the CLI, the API and the scheduler all use
  (job lock, tick claim, a recorded run with its trigger);
* :mod:`.records` — run rows in ``ml_job_runs``;
* :mod:`.locks` — cross-process locks (PostgreSQL advisory locks; :func:`~.locks.make_lock` picks one);
* :mod:`.lease` — the SQLite lease lock (a row that expires unless renewed);
* :mod:`.leader` — scheduler leader election;
* :mod:`.scheduler` — the APScheduler jobs of a process, started explicitly, never at import.
"""
from __future__ import annotations

from utils.ml.jobs.definitions import JOBS, JobError, UnknownJobError
from utils.ml.jobs.records import last_runs
from utils.ml.jobs.runner import (
    TRIGGER_API,
    TRIGGER_CLI,
    TRIGGER_SCHEDULE,
    JobBusyError,
    job_lock,
    run_job_now,
    run_scheduled_tick,
    tick_for,
)

__all__ = ["JOBS", "TRIGGER_API", "TRIGGER_CLI", "TRIGGER_SCHEDULE", "JobBusyError", "JobError", "UnknownJobError",
           "job_lock", "last_runs", "run_job_now", "run_scheduled_tick", "tick_for"]
