"""Prometheus metrics at ``GET /metrics``, correct under gunicorn with several workers.

Two kinds of series:

* **Event series** (load latency, fallbacks, job durations, alerts, leadership)
  are fed by :func:`utils.ml.events.add_listener`: each process counts what it
  did.  Under gunicorn, ``PROMETHEUS_MULTIPROC_DIR`` (created by
  ``gunicorn.conf.py`` in ``on_starting``) makes prometheus_client keep them in
  per-process mmap files that any worker's scrape merges, so every scrape sees
  the sum over all workers, whichever worker answers it.
* **State series** (model files and bytes, active model age, last job success)
  are read from the database and the store *at scrape time* by
  :class:`StateCollector`.  They are not stored in mmap files at all, so every
  worker computes the same values from the same source and no multiprocess
  gauge mode has to guess how to merge them.

The metric objects are created lazily by :func:`init_app`, after gunicorn has
set the environment variable in the master and forked the worker (no
``preload_app``), never at import.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional

from flask import Blueprint, Flask, Response, current_app
from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    start_wsgi_server,
)
from prometheus_client import values as prometheus_values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import func, select, text

from utils.extensions import db
from utils.ml import events
from utils.ml.jobs import STATUS_FAILED, STATUS_SUCCESS
from utils.ml.leader import LEADER_LOCK_CLASS, LEADER_LOCK_NAME, lock_key
from utils.models import JobRun, MLModel, SchedulerLease
from utils.time import as_utc, utcnow

logger = logging.getLogger(__name__)

bp = Blueprint("metrics", __name__)

LOAD_SOURCES = ("cache", "file", "database")
# Model loads take from well under a millisecond (cache) to seconds (a large
# file with retries); jobs from a second to an hour.
LOAD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
JOB_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0)
FINISHED_STATUSES = (STATUS_SUCCESS, STATUS_FAILED)


@dataclass(frozen=True)
class EventMetrics:
    """The metric objects one process updates from operational events."""

    load_seconds: Histogram
    load_failures: Counter
    fallbacks: Counter
    job_seconds: Histogram
    job_runs: Counter
    alerts: Counter
    models_saved: Counter
    activations: Counter
    cleanup_deleted: Counter
    scheduler_leader: Gauge

    def all(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__dataclass_fields__)


_metrics: Optional[EventMetrics] = None
_build_lock = threading.Lock()


def multiprocess_enabled() -> bool:
    """True when prometheus_client keeps values in PROMETHEUS_MULTIPROC_DIR files."""
    return bool(getattr(prometheus_values.ValueClass, "_multiprocess", False))


def _choose_value_class() -> None:
    """Let prometheus_client pick its value class again, before any metric exists.

    The library decides between in-memory and mmap-backed values when it is
    first imported.  If that import happened before the environment variable
    was set (a process that imported it, then had gunicorn's ``on_starting``
    set ``PROMETHEUS_MULTIPROC_DIR``), deciding again here, while no metric
    object exists yet, gives the right mode instead of silently per-process
    numbers.  ``get_value_class`` reads the variable itself.
    """
    if not multiprocess_enabled():
        prometheus_values.ValueClass = prometheus_values.get_value_class()


def event_metrics() -> EventMetrics:
    """The process-wide event metrics, created on first use."""
    global _metrics
    if _metrics is not None:
        return _metrics
    with _build_lock:
        if _metrics is None:
            _choose_value_class()
            # *_created series exist only in single-process mode; dropping them
            # makes both modes expose the same series.
            disable_created_metrics()
            # registry=None: nothing is put in prometheus_client's global
            # REGISTRY; each scrape builds its own registry (see scrape_registry).
            _metrics = EventMetrics(
                load_seconds=Histogram(
                    "ml_model_load_seconds", "Time to obtain the active model, by where it came from.",
                    ["source"], buckets=LOAD_BUCKETS, registry=None),
                load_failures=Counter(
                    "ml_model_load_failures", "Model loads that produced no model, by reason.",
                    ["reason"], registry=None),
                fallbacks=Counter(
                    "ml_model_fallbacks", "Detections answered by a fallback method, by reason.",
                    ["metric_type", "from_method", "reason"], registry=None),
                job_seconds=Histogram(
                    "ml_job_duration_seconds", "Duration of job runs (train, scan, cleanup), by outcome.",
                    ["job", "status"], buckets=JOB_BUCKETS, registry=None),
                job_runs=Counter(
                    "ml_job_runs", "Finished job runs, by job and outcome.", ["job", "status"], registry=None),
                alerts=Counter(
                    "ml_alerts_raised", "Alerts written by scans, by metric type and detection method.",
                    ["metric_type", "method"], registry=None),
                models_saved=Counter(
                    "ml_models_saved", "Model versions saved.", ["model_type", "metric_type"], registry=None),
                activations=Counter(
                    "ml_model_activations", "Changes of the active version (promotion or rollback).",
                    ["model_type", "metric_type"], registry=None),
                cleanup_deleted=Counter(
                    "ml_cleanup_deleted_models", "Model versions deleted by cleanup.", registry=None),
                # One series per process that runs a scheduler: 1 for the leader.
                # 'livemax' drops prometheus_client's own pid label (we carry a
                # host:pid label that also works without multiprocess mode) and
                # deletes a dead worker's value in gunicorn's child_exit hook, so a
                # killed leader does not keep claiming leadership.
                scheduler_leader=Gauge(
                    "ml_scheduler_leader", "1 if this process holds the scheduler leadership, else 0.",
                    ["process"], multiprocess_mode="livemax", registry=None),
            )
            for source in LOAD_SOURCES:
                # Zero-valued series exist from the start, so rate() works at once.
                _metrics.load_seconds.labels(source=source)
    return _metrics


def process_label() -> str:
    """``host:pid`` of this process (the leader gauge's label)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _label(fields: dict[str, Any], name: str, default: str = "unknown") -> str:
    value = fields.get(name)
    return default if value is None or value == "" else str(value)


def _number(value: Any) -> Optional[float]:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def on_event(event: str, fields: dict[str, Any]) -> None:
    """Update the event metrics from one :func:`utils.ml.events.emit` call."""
    m = event_metrics()
    if event == "model_loaded":
        ms = _number(fields.get("ms"))
        if ms is not None:
            m.load_seconds.labels(source=_label(fields, "source")).observe(ms / 1000.0)
    elif event == "model_load_failed":
        m.load_failures.labels(reason=_label(fields, "reason")).inc()
    elif event == "model_fallback":
        m.fallbacks.labels(metric_type=_label(fields, "metric_type"), from_method=_label(fields, "from_method"),
                           reason=_label(fields, "reason")).inc()
    elif event in ("job_finished", "job_failed"):
        job = _label(fields, "job")
        status = _label(fields, "status", STATUS_FAILED if event == "job_failed" else STATUS_SUCCESS)
        duration = _number(fields.get("duration_s"))
        if duration is not None:
            m.job_seconds.labels(job=job, status=status).observe(duration)
        m.job_runs.labels(job=job, status=status).inc()
    elif event == "alerts_raised":
        count = _number(fields.get("count"))
        if count:
            m.alerts.labels(metric_type=_label(fields, "metric_type"), method=_label(fields, "method")).inc(count)
    elif event == "model_saved":
        m.models_saved.labels(model_type=_label(fields, "model_type"), metric_type=_label(fields, "metric_type")).inc()
    elif event == "model_activated":
        m.activations.labels(model_type=_label(fields, "model_type"), metric_type=_label(fields, "metric_type")).inc()
    elif event == "cleanup_done":
        deleted = _number(fields.get("deleted_count"))
        if deleted:
            m.cleanup_deleted.inc(deleted)
    elif event == "scheduler_leadership":
        m.scheduler_leader.labels(process=process_label()).set(1 if fields.get("leader") else 0)


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
        yield from _job_metrics()
        yield GaugeMetricFamily("ml_scheduler_leaders",
                                "Scheduler leaderships the database knows of: 1 is healthy, 0 means no "
                                "process runs the jobs.", value=_leaderships())


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


class _LocalCollector:
    """The event metrics of this process (single-process mode, no mmap files)."""

    def __init__(self, metrics: EventMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        for metric in self.metrics.all():
            yield from metric.collect()


def scrape_registry(app: Flask) -> CollectorRegistry:
    """A fresh registry for one scrape: every worker's event metrics plus the state series."""
    registry = CollectorRegistry(auto_describe=False)
    if multiprocess_enabled():
        MultiProcessCollector(registry)
    else:
        registry.register(_LocalCollector(event_metrics()))
    registry.register(StateCollector(app))
    return registry


@bp.get("/metrics")
def metrics_endpoint() -> Response:
    """Prometheus text format.  Unauthenticated, as scrapers expect: it carries
    counts and ages, no hotel data; restrict it at the network if needed."""
    started = time.perf_counter()
    body = generate_latest(scrape_registry(current_app._get_current_object()))
    # Text format 0.0.4: every name here is a classic one, and every Prometheus
    # (2.x included) and promtool reads it.
    response = Response(body, content_type=CONTENT_TYPE_PLAIN_0_0_4)
    response.headers["X-Scrape-Ms"] = f"{(time.perf_counter() - started) * 1000:.1f}"
    # Which worker answered: lets an operator (and the tests) compare workers.
    response.headers["X-Metrics-Process"] = process_label()
    return response


def start_metrics_server(app: Flask) -> Optional[Any]:
    """Serve the same series on ``ML_METRICS_PORT`` from a process without a web server.

    For ``flask ml scheduler``: its scans, trainings and leadership happen in
    that process, so Prometheus scrapes it as a target of its own.  Returns
    the server (``shutdown()`` stops it), or None when the port is 0 (off).
    """
    port = int(app.config.get("ML_METRICS_PORT") or 0)
    if not port:
        return None
    server, _thread = start_wsgi_server(port, addr=app.config.get("ML_METRICS_ADDR", "0.0.0.0"),
                                        registry=scrape_registry(app))
    logger.info("metrics served on %s:%s/metrics", app.config.get("ML_METRICS_ADDR", "0.0.0.0"), port)
    return server


def init_app(app: Flask) -> None:
    event_metrics()
    events.add_listener(on_event)
    app.register_blueprint(bp)
