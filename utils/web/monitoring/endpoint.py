"""``GET /metrics`` (Prometheus text format 0.0.4), and the same series on a port of their own.

Each scrape builds a fresh registry: every worker's event series
(:mod:`.counters`) plus the state series (:mod:`.collector`).  The
``flask ml scheduler`` process has no web server: :func:`start_metrics_server`
serves the same registry on ``ML_METRICS_PORT``.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Iterator, Optional

from flask import Blueprint, Flask, Response, current_app
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, generate_latest, start_wsgi_server
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from utils.ml import events
from utils.web.monitoring.collector import StateCollector
from utils.web.monitoring.counters import EventMetrics, event_metrics, multiprocess_enabled, on_event, process_label

logger = logging.getLogger(__name__)

bp = Blueprint("metrics", __name__)


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
    port = int(app.config["ML_METRICS_PORT"])
    if not port:
        return None
    server, _thread = start_wsgi_server(port, addr=app.config["ML_METRICS_ADDR"],
                                        registry=scrape_registry(app))
    logger.info("metrics served on %s:%s/metrics", app.config["ML_METRICS_ADDR"], port)
    return server


def init_app(app: Flask) -> None:
    event_metrics()
    events.add_listener(on_event)
    app.register_blueprint(bp)
