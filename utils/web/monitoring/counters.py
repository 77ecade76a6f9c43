"""Event series: what this process did (loads, fallbacks, job runs, alerts, leadership).

Fed by :func:`utils.ml.events.add_listener` (:func:`on_event`): each process
counts what it did.  Under gunicorn, ``PROMETHEUS_MULTIPROC_DIR`` (created by
``gunicorn.conf.py`` in ``on_starting``) makes prometheus_client keep them in
per-process mmap files that any worker's scrape merges, so every scrape sees
the sum over all workers, whichever worker answers it.  The metric objects
are created on first use (:func:`event_metrics`), after gunicorn has set the
environment variable in the master and forked the worker, never at import.
"""
from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass
from typing import Any, Optional

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client import values as prometheus_values

from utils.ml.jobs.records import STATUS_FAILED, STATUS_SUCCESS
from utils.ml.pipeline.features import MODEL_TYPE
from utils.models import ALERT_TYPE_FOR_METRIC

LOAD_SOURCES = ("cache", "file", "database")
# Model loads take from well under a millisecond (cache) to seconds (a large
# file with retries); jobs from a second to an hour.
LOAD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
JOB_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0)


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


# Label values that come from callers (metric and model types) are bounded:
# every value is a series in every process for the life of the process, so
# 3,000 invented metric types sent to POST /api/ml/detect must not become
# 3,000 series.  Known by name: the minibar app's metric types, and up to
# MAX_LEARNED_NAMES more that the service has a model for (seen saved,
# activated or loaded here).  Everything else is counted as OTHER.
OTHER = "other"
MAX_LEARNED_NAMES = 200
_known: dict[str, set[str]] = {"metric_type": set(ALERT_TYPE_FOR_METRIC), "model_type": {MODEL_TYPE}}
_learned = {"count": 0}
_known_lock = threading.Lock()


def learn(kind: str, value: Any) -> None:
    """Admit ``value`` as a label of ``kind`` (a type the service has a model for), within the bound."""
    if not isinstance(value, str) or not value or value in _known[kind]:
        return
    with _known_lock:
        if _learned["count"] < MAX_LEARNED_NAMES and value not in _known[kind]:
            _known[kind].add(value)
            _learned["count"] += 1


def bounded(fields: dict[str, Any], kind: str) -> str:
    """The label value of ``kind`` for a metric series: the name when known, else :data:`OTHER`."""
    value = _label(fields, kind)
    return value if value in _known[kind] or value == "unknown" else OTHER


def _learn_models(fields: dict[str, Any]) -> None:
    learn("metric_type", fields.get("metric_type"))
    learn("model_type", fields.get("model_type"))


def _number(value: Any) -> Optional[float]:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def on_event(event: str, fields: dict[str, Any]) -> None:
    """Update the event metrics from one :func:`utils.ml.events.emit` call."""
    m = event_metrics()
    if event in ("model_loaded", "model_saved", "model_activated"):
        _learn_models(fields)  # a model exists for this pair: its names are real
    if event == "model_loaded":
        ms = _number(fields.get("ms"))
        if ms is not None:
            m.load_seconds.labels(source=_label(fields, "source")).observe(ms / 1000.0)
    elif event == "model_load_failed":
        m.load_failures.labels(reason=_label(fields, "reason")).inc()
    elif event == "model_fallback":
        m.fallbacks.labels(metric_type=bounded(fields, "metric_type"), from_method=_label(fields, "from_method"),
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
            m.alerts.labels(metric_type=bounded(fields, "metric_type"), method=_label(fields, "method")).inc(count)
    elif event == "model_saved":
        m.models_saved.labels(model_type=bounded(fields, "model_type"), metric_type=bounded(fields, "metric_type")).inc()
    elif event == "model_activated":
        m.activations.labels(model_type=bounded(fields, "model_type"),
                             metric_type=bounded(fields, "metric_type")).inc()
    elif event == "cleanup_done":
        deleted = _number(fields.get("deleted_count"))
        if deleted:
            m.cleanup_deleted.inc(deleted)
    elif event == "scheduler_leadership":
        m.scheduler_leader.labels(process=process_label()).set(1 if fields.get("leader") else 0)
