"""What the dashboard shows, as plain data: one query function per panel.

Every function needs an application context and only reads; the view in
``utils/web/dashboard/views.py`` renders what they return.  Time buckets are UTC.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Optional

from flask import current_app
from sqlalchemy import func, select

from utils.extensions import db
from utils.ml.model_manager import get_model_manager
from utils.ml.pipeline.observations import MODEL_LOAD_TIME
from utils.models import METHOD_FILE, MLAlert, MLMetric
from utils.time import as_utc, utcnow
from utils.web.dashboard.svg_charts import Series

ALERT_DAYS = 14
LOAD_WINDOW = timedelta(days=14)
MAX_LOAD_ROWS = 20_000
# Bucket widths tried in order for the load charts: the first giving at most
# MAX_BUCKETS points over the data's span wins.
BUCKET_WIDTHS = (timedelta(minutes=1), timedelta(minutes=5), timedelta(minutes=15), timedelta(hours=1),
                 timedelta(hours=6), timedelta(days=1))
MAX_BUCKETS = 48


@dataclass
class ModelGroup:
    """All kept versions of one (model_type, metric_type), newest first."""

    model_type: str
    metric_type: str
    versions: list[dict[str, Any]]
    active: Optional[dict[str, Any]] = None


@dataclass
class TimeSeries:
    """Categories (bucket labels) and one or more series over them."""

    categories: list[str] = field(default_factory=list)
    series: list[Series] = field(default_factory=list)


def humanize_age(seconds: float) -> str:
    """``42s``, ``5m``, ``3h 20m``, ``2d 4h``: an age an operator reads at a glance."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if seconds < 3600:
        return f"{minutes}m"
    if seconds < 86400:
        return f"{hours}h {minutes % 60}m" if minutes % 60 else f"{hours}h"
    return f"{days}d {hours % 24}h" if hours % 24 else f"{days}d"


def model_groups(now: Optional[datetime] = None) -> list[ModelGroup]:
    """Every kept version, grouped by type; each version gets ``age`` and ``age_seconds``."""
    now = now or utcnow()
    groups: dict[tuple[str, str], ModelGroup] = {}
    for info in get_model_manager().list_models():
        key = (info["model_type"], info["metric_type"])
        group = groups.setdefault(key, ModelGroup(key[0], key[1], []))
        age = (now - info["training_date"]).total_seconds()
        info = dict(info, age_seconds=age, age=humanize_age(age))
        group.versions.append(info)
        if info["is_active"]:
            group.active = info
    for group in groups.values():
        active_id = group.active["id"] if group.active else None
        for version in group.versions:
            # Older than the active version: activating it is a rollback.
            version["action"] = ("active" if version["id"] == active_id else
                                 "rollback" if group.active and version["created_at"] < group.active["created_at"]
                                 else "promote")
    db.session.rollback()
    return sorted(groups.values(), key=lambda g: (g.metric_type, g.model_type))


def _day_expression(column):
    """``YYYY-MM-DD`` of a timestamp column in UTC, on PostgreSQL and SQLite."""
    if db.session.get_bind().dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD")
    # SQLite stores the UTC wall time as text.
    return func.strftime("%Y-%m-%d", column)


def alerts_per_day(days: int = ALERT_DAYS, now: Optional[datetime] = None) -> TimeSeries:
    """Alerts raised per UTC day and metric type over the last ``days`` days (zero-filled)."""
    now = now or utcnow()
    first_day = (now - timedelta(days=days - 1)).date()
    since = datetime.combine(first_day, datetime.min.time(), tzinfo=now.tzinfo)
    day = _day_expression(MLAlert.detected_at)
    rows = db.session.execute(
        select(day, MLAlert.metric_type, func.count())
        .where(MLAlert.detected_at >= since)
        .group_by(day, MLAlert.metric_type)
    ).all()
    db.session.rollback()
    categories = [(first_day + timedelta(days=i)).isoformat() for i in range(days)]
    index = {name: i for i, name in enumerate(categories)}
    counts: dict[str, list[Optional[float]]] = defaultdict(lambda: [0.0] * days)
    for day_name, metric_type, count in rows:
        if str(day_name) in index:
            counts[metric_type][index[str(day_name)]] += count
    return TimeSeries([c[5:] for c in categories],
                      [Series(name, values) for name, values in sorted(counts.items())])


def _bucket_width(span: timedelta) -> timedelta:
    for width in BUCKET_WIDTHS:
        if span / width <= MAX_BUCKETS:
            return width
    return BUCKET_WIDTHS[-1]


def _bucket_label(start: datetime, width: timedelta) -> str:
    return f"{start:%m-%d}" if width >= timedelta(days=1) else f"{start:%m-%d %H:%M}"


def is_fallback(extra: dict[str, Any]) -> bool:
    """A load-time row whose detection was not answered by the model file."""
    return bool(extra.get("fallback_reasons")) or (extra.get("method") not in (None, METHOD_FILE))


def load_history(now: Optional[datetime] = None) -> tuple[TimeSeries, TimeSeries, dict[str, Any]]:
    """Model load latency (mean ms per source, successful loads) and fallback rate (%) over time.

    Read from the ``model_load_time`` rows the scans write to ``ml_metrics``
    (``metric_value`` in ms, ``extra_data`` with source, method and
    fallback_reasons).  Also returns totals for the panel's caption.
    """
    now = now or utcnow()
    rows = db.session.execute(
        select(MLMetric.timestamp, MLMetric.metric_value, MLMetric.extra_data)
        .where(MLMetric.metric_type == MODEL_LOAD_TIME, MLMetric.timestamp >= now - LOAD_WINDOW)
        .order_by(MLMetric.timestamp.desc()).limit(MAX_LOAD_ROWS)
    ).all()
    db.session.rollback()
    if not rows:
        return TimeSeries(), TimeSeries(), {"loads": 0, "fallbacks": 0}
    points = sorted((as_utc(ts), float(value), extra or {}) for ts, value, extra in rows)
    first, last = points[0][0], points[-1][0]
    width = _bucket_width(max(last - first, timedelta(seconds=1)))
    epoch = datetime(2000, 1, 1, tzinfo=first.tzinfo)
    start = epoch + ((first - epoch) // width) * width
    n = int((last - start) // width) + 1
    starts = [start + width * i for i in range(n)]

    sums: dict[str, list[float]] = defaultdict(lambda: [0.0] * n)
    counts: dict[str, list[int]] = defaultdict(lambda: [0] * n)
    loads, fallbacks = [0] * n, [0] * n
    for ts, ms, extra in points:
        i = int((ts - start) // width)
        source = extra.get("source")
        if source and source != "none":  # a failed load has no latency worth plotting
            sums[source][i] += ms
            counts[source][i] += 1
        loads[i] += 1
        fallbacks[i] += 1 if is_fallback(extra) else 0

    categories = [_bucket_label(s, width) for s in starts]
    latency = TimeSeries(categories, [
        Series(source, [sums[source][i] / counts[source][i] if counts[source][i] else None for i in range(n)])
        for source in sorted(sums)
    ])
    rate = TimeSeries(categories, [
        Series("fallback rate", [100.0 * fallbacks[i] / loads[i] if loads[i] else None for i in range(n)])
    ])
    return latency, rate, {"loads": len(points), "fallbacks": sum(fallbacks),
                           "bucket": humanize_age(width.total_seconds())}


def store_usage() -> dict[str, Any]:
    """Model files and bytes in the store, and the filesystem's usage."""
    store = get_model_manager().store
    files = list(store.iter_files())
    temp = list(store.iter_temp_files())
    return {
        "location": current_app.config["ML_MODELS_DIR"],
        "files": len(files),
        "bytes": sum(f.size_bytes for f in files),
        "mb": round(sum(f.size_bytes for f in files) / (1024 * 1024), 2),
        "temp_files": len(temp),
        "disk": store.disk_usage() or {},
    }


def last_job_runs() -> list[dict[str, Any]]:
    """The latest run of each job that has run (:func:`utils.ml.jobs.last_runs`), for display."""
    from utils.ml.jobs import last_runs

    result = []
    for name, run in sorted(last_runs().items()):
        if run is None:
            continue
        started = datetime.fromisoformat(run["started_at"])
        result.append({
            "job": name, "status": run["status"], "started_at": started,
            "duration": humanize_age(run["duration_s"]) if run["duration_s"] is not None else None,
            "age": humanize_age((utcnow() - started).total_seconds()),
            "where": f"{run['host'] or '?'}:{run['pid'] or '?'}", "error": run["error"],
            "trigger": (run["details"] or {}).get("trigger"),
        })
    return result
