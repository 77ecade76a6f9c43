"""Monitoring: Prometheus series at ``GET /metrics``, correct under gunicorn with several workers.

* :mod:`.counters` — event series (what this process did), merged across workers;
* :mod:`.collector` — state series read from the database and the store at scrape time;
* :mod:`.endpoint` — the ``/metrics`` route and the metrics server of ``flask ml scheduler``.
"""
from __future__ import annotations

from utils.web.monitoring.counters import multiprocess_enabled
from utils.web.monitoring.endpoint import init_app, scrape_registry, start_metrics_server

__all__ = ["init_app", "multiprocess_enabled", "scrape_registry", "start_metrics_server"]
