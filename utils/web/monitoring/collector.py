"""State series: read from the database and the model store at scrape time.

Model files and bytes, active model age and id, versions kept, the last run
of each job (whichever process ran it: a CLI run, an API run, a scheduled
tick), scheduler leaderships.  They are not stored in mmap files at all, so
every worker computes the same values from the same source and no
multiprocess gauge mode has to guess how to merge them.
"""
from __future__ import annotations

import logging
from typing import Iterable, Iterator

from flask import Flask
from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import func, select, text

from utils.extensions import db
from utils.ml.jobs.locks import LEADER_LOCK_CLASS, LEADER_LOCK_NAME, lock_key
from utils.ml.jobs.records import STATUS_FAILED, STATUS_SUCCESS
from utils.ml.promotion.metrics import promotion_metrics
from utils.models import JobRun, MLModel, SchedulerLease
from utils.time import as_utc, utcnow

logger = logging.getLogger(__name__)

FINISHED_STATUSES = (STATUS_SUCCESS, STATUS_FAILED)


class StateCollector:
    """Series computed from the database and the model store at scrape time.

    Every worker reads the same rows and files, so every worker reports the
    same values.  A database failure does not fail the scrape: the database
    series are left out and ``ml_metrics_database_up`` says 0.
    """

    def __init__(self, app: Flask) -> None:
        self.app = app

    def describe(self) -> Iterable[Metric]:
        return []  # names are only known by collecting; registration must not query

    def collect(self) -> Iterator[Metric]:
        # Its own app context: also called from start_metrics_server's thread,
        # which has none; inside a request it gets a session of its own.
        with self.app.app_context():
            families = list(self._store_metrics())
            try:
                families += list(self._database_metrics())
                up = 1.0
            except Exception as exc:  # any driver error: report it, keep the scrape working
                logger.warning("metrics: database query failed: %s: %s", exc.__class__.__name__, exc)
                up = 0.0
            finally:
                db.session.rollback()  # end the read transaction (or the failed one)
        yield from families
        yield GaugeMetricFamily("ml_metrics_database_up",
                                "1 if the scrape could read the metadata database, else 0.", value=up)

    def _store_metrics(self) -> Iterator[Metric]:
        from utils.ml.model_manager import get_model_manager

        files = GaugeMetricFamily("ml_model_files", "Model files in the model store.")
        size = GaugeMetricFamily("ml_model_files_bytes", "Bytes taken by the model files in the model store.")
        used = GaugeMetricFamily("ml_store_filesystem_used_ratio",
                                 "Used fraction of the filesystem holding the model store (0-1).")
        try:
            store = get_model_manager(self.app).store
            stored = list(store.iter_files())
            files.add_metric([], len(stored))
            size.add_metric([], sum(item.size_bytes for item in stored))
            usage = store.disk_usage()
            if usage:
                used.add_metric([], round(float(usage["percent"]) / 100.0, 4))
        except Exception as exc:  # an unreadable store must not break the scrape
            logger.warning("metrics: model store unreadable: %s: %s", exc.__class__.__name__, exc)
        yield from (files, size, used)

    def _database_metrics(self) -> Iterator[Metric]:
        now = utcnow()
        age = GaugeMetricFamily("ml_active_model_age_seconds",
                                "Seconds since the active model of each type was trained.",
                                labels=["model_type", "metric_type"])
        active_id = GaugeMetricFamily("ml_active_model_id", "Id of the active model version of each type.",
                                      labels=["model_type", "metric_type"])
        rows = db.session.execute(
            select(MLModel.id, MLModel.model_type, MLModel.metric_type, MLModel.training_date)
            .where(MLModel.is_active.is_(True)).order_by(MLModel.model_type, MLModel.metric_type)
        ).all()
        for model_id, model_type, metric_type, trained in rows:
            age.add_metric([model_type, metric_type], max(0.0, (now - as_utc(trained)).total_seconds()))
            active_id.add_metric([model_type, metric_type], model_id)

        versions = GaugeMetricFamily("ml_model_versions", "Model versions kept, per type.",
                                     labels=["model_type", "metric_type"])
        for model_type, metric_type, count in db.session.execute(
            select(MLModel.model_type, MLModel.metric_type, func.count())
            .group_by(MLModel.model_type, MLModel.metric_type).order_by(MLModel.model_type, MLModel.metric_type)
        ):
            versions.add_metric([model_type, metric_type], count)

        yield from (age, active_id, versions)
        yield from _incident_metrics(now)
        yield from promotion_metrics()
        yield from _job_metrics()
        yield GaugeMetricFamily("ml_scheduler_leaders",
                                "Scheduler leaderships the database knows of: 1 is healthy, 0 means no "
                                "process runs the jobs.", value=_leaderships())


def _incident_metrics(now) -> Iterator[Metric]:
    """Incidents by severity (4 label values, whatever the data): all of them, and the open ones.

    Open: its last alert is within ``ML_INCIDENT_GAP_HOURS`` of now, so the
    next anomaly of its entity would still join it.  False positives are left out.
    """
    from datetime import timedelta

    from utils.ml.incidents.models import SEVERITIES, MLIncident
    from utils.settings import current

    cutoff = now - timedelta(hours=float(current("ML_INCIDENT_GAP_HOURS")))
    total = GaugeMetricFamily("ml_incidents", "Incidents recorded (false positives excluded), by severity.",
                              labels=["severity"])
    open_ = GaugeMetricFamily("ml_incidents_open", "Incidents whose last alert is within ML_INCIDENT_GAP_HOURS, "
                              "by severity (false positives excluded).", labels=["severity"])
    real = MLIncident.is_false_positive.is_(False)
    counts = dict(db.session.execute(select(MLIncident.severity, func.count()).where(real)
                                     .group_by(MLIncident.severity)).all())
    opened = dict(db.session.execute(select(MLIncident.severity, func.count())
                                     .where(real, MLIncident.ended_at >= cutoff).group_by(MLIncident.severity)).all())
    for severity in SEVERITIES:
        total.add_metric([severity], counts.get(severity, 0))
        open_.add_metric([severity], opened.get(severity, 0))
    yield from (total, open_)


def _job_metrics() -> Iterator[Metric]:
    """Read from ml_job_runs, so runs of every process count (the scheduler service's too)."""
    last = GaugeMetricFamily("ml_job_last_success_timestamp_seconds",
                             "Unix time of the last successful run of each job.", labels=["job"])
    for job, finished in db.session.execute(
        select(JobRun.job_name, func.max(JobRun.finished_at))
        .where(JobRun.status == STATUS_SUCCESS, JobRun.finished_at.is_not(None))
        .group_by(JobRun.job_name).order_by(JobRun.job_name)
    ):
        last.add_metric([job], as_utc(finished).timestamp())
    duration = GaugeMetricFamily("ml_job_last_duration_seconds",
                                 "Duration of the last finished run (success or failure) of each job.",
                                 labels=["job", "status"])
    latest = (select(func.max(JobRun.id)).where(JobRun.status.in_(FINISHED_STATUSES),
                                                JobRun.finished_at.is_not(None))
              .group_by(JobRun.job_name).scalar_subquery())
    for job, status, started, finished in db.session.execute(
        select(JobRun.job_name, JobRun.status, JobRun.started_at, JobRun.finished_at)
        .where(JobRun.id.in_(latest)).order_by(JobRun.job_name)
    ):
        duration.add_metric([job, status], max(0.0, (as_utc(finished) - as_utc(started)).total_seconds()))
    yield from (last, duration)


def _leaderships() -> int:
    """Holders of the scheduler leader lock: granted advisory locks (PostgreSQL) or unexpired leases."""
    if db.session.get_bind().dialect.name == "postgresql":
        return int(db.session.execute(
            # pg_locks lists the whole cluster; advisory locks are per database.
            text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                 " AND classid = :cls AND objid = :key AND objsubid = 2"
                 " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"),
            {"cls": LEADER_LOCK_CLASS, "key": lock_key(LEADER_LOCK_NAME)},
        ).scalar_one())
    return int(db.session.execute(
        select(func.count()).select_from(SchedulerLease)
        .where(SchedulerLease.name == LEADER_LOCK_NAME, SchedulerLease.expires_at > utcnow())
    ).scalar_one())
