"""What the soak found: database checks, log analysis, the targets and the printed table."""
from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from bench.soak_traffic import Outcome, Recorder

_ACCESS = re.compile(r'^\S+ - \S+ \[[^\]]+\] "')
_GUNICORN = re.compile(r"^\[[^\]]+\] \[\d+\] \[(\w+)\] (.*)")
_NUMBERS = re.compile(r"\d+(\.\d+)?")


# ------------------------------------------------------------------ database
def database_checks(cluster: Any, database: str, recorder: Recorder, run_id: str) -> dict[str, Any]:
    """Compare what the server accepted with what the database holds; count duplicate alerts."""
    stored = cluster.query(
        "SELECT extra_data->>'soak_key', metric_value, count(*) OVER (PARTITION BY extra_data->>'soak_key')"
        " FROM ml_metrics WHERE extra_data->>'soak_run' = %s", (run_id,), database=database)
    values = {key: value for key, value, _ in stored}
    lost = sorted(key for key in recorder.accepted if key not in values)
    wrong = sorted(key for key, value in recorder.accepted.items()
                   if key in values and abs(values[key] - value) > 1e-9)
    duplicated = sorted({key for key, _, copies in stored if copies > 1})
    duplicate_alerts = cluster.query(
        "SELECT count(*) FROM (SELECT observation_id FROM ml_alerts WHERE observation_id IS NOT NULL"
        " GROUP BY observation_id HAVING count(*) > 1) AS d", database=database)[0][0]
    soak_alerts = cluster.query(
        "SELECT count(*) FROM ml_alerts a JOIN ml_metrics m ON m.id = a.observation_id"
        " WHERE m.extra_data->>'soak_run' = %s", (run_id,), database=database)[0][0]
    runs = cluster.query(
        "SELECT job_name, status, count(*) FROM ml_job_runs WHERE details->>'trigger' = 'schedule'"
        " GROUP BY 1, 2 ORDER BY 1, 2", database=database)
    return {
        "accepted": len(recorder.accepted),
        "accepted_lost": len(lost),
        "accepted_lost_keys": lost[:20],
        "accepted_with_wrong_value": len(wrong),
        "stored_more_than_once": len(duplicated),
        "unanswered_but_stored": sum(1 for key in recorder.unanswered if key in values),
        "unanswered": len(recorder.unanswered),
        "duplicate_alerts": int(duplicate_alerts),
        "alerts_on_soak_observations": int(soak_alerts),
        "scheduled_job_runs": {f"{job}:{status}": int(count) for job, status, count in runs},
    }


# ---------------------------------------------------------------------- logs
def _line_key(line: str) -> str:
    """A coarse identity for a log line: same message, different numbers, same key."""
    if line.startswith("{"):
        try:
            record = json.loads(line)
        except ValueError:
            return "json?: " + _NUMBERS.sub("N", line[:80])
        message = str(record.get("msg", ""))
        first = message.splitlines()[0] if message else ""
        tail = " +exc" if "exc" in record else ""
        return f"{record.get('level')} {record.get('logger')}: {_NUMBERS.sub('N', first[:90])}{tail}"
    if _ACCESS.match(line):
        return "access log line"
    match = _GUNICORN.match(line)
    if match:
        return f"gunicorn {match.group(1)}: {_NUMBERS.sub('N', match.group(2)[:80])}"
    return "other (raw text, e.g. a warning or traceback line): " + _NUMBERS.sub("N", line.strip()[:60])


def log_profile(path: Path, start: int, end: int, top: int = 8) -> dict[str, Any]:
    """Lines and bytes of ``path[start:end]`` grouped by :func:`_line_key`, biggest first."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    with open(path, "rb") as handle:
        handle.seek(start)
        data = handle.read(max(0, end - start))
    for raw in data.splitlines(keepends=True):
        entry = counts[_line_key(raw.decode("utf-8", "replace"))]
        entry[0] += 1
        entry[1] += len(raw)
    ranked = sorted(counts.items(), key=lambda item: item[1][1], reverse=True)
    return {"bytes": len(data), "lines": sum(c for c, _ in counts.values()),
            "top": [{"what": key, "lines": c, "bytes": b} for key, (c, b) in ranked[:top]]}


# ------------------------------------------------------------------- targets
@dataclass(frozen=True)
class Check:
    name: str
    value: str
    target: str
    ok: Optional[bool]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "target": self.target,
                "verdict": "n/a" if self.ok is None else ("pass" if self.ok else "MISS")}


def _mib(kib: Optional[float]) -> str:
    return "?" if kib is None else f"{kib / 1024:.0f} MiB"


def _slowest(outcomes: list[Outcome], actions: set[str], start: float = 0.0, end: float = 1e12) -> Optional[float]:
    found = [o.seconds for o in outcomes if o.action in actions and start <= o.at < end]
    return round(max(found), 2) if found else None


def latency_checks(outcomes: list[Outcome], outage: Optional[tuple[float, float]]) -> dict[str, Any]:
    """The issue's bounds: /health within 1 s always; API answers within a few seconds in the outage."""
    api = {"ingest", "detect", "alerts", "models"}
    return {
        "slowest_health_probe_s": _slowest(outcomes, {"probe_health"}),
        "health_probes_failed": sum(1 for o in outcomes if o.action == "probe_health" and o.status != "200"),
        "slowest_ready_probe_s": _slowest(outcomes, {"probe_ready"}),
        "slowest_api_in_outage_s": _slowest(outcomes, api, *outage) if outage else None,
    }


def checks(report: dict[str, Any]) -> list[Check]:
    """The issue's targets: 0, 0, 0, flat RSS, flat connections, bounded log bytes."""
    requests_, lat = report["requests"], report["latency"]
    db = report["database"]
    rss, conns, logs = report["worker_rss_kib"], report["db_connections"], report["log"]
    rss_start, rss_end = rss["start_total"], rss["end_total"]
    rss_ok = None if not rss_start or not rss_end else rss_end <= rss_start * 1.2
    conn_ok = None if conns["start"] is None or conns["end"] is None else conns["end"] <= conns["start"] + 2
    normal, peak = logs["bytes_per_minute_before"], logs["peak_bytes_per_minute"]
    log_ok = None if not normal else peak <= 2 * normal
    return [
        Check("5xx other than 503", str(requests_["5xx_not_503"]), "0", requests_["5xx_not_503"] == 0),
        Check("accepted observations lost", f"{db['accepted_lost']} of {db['accepted']}", "0",
              db["accepted_lost"] == 0 and db["accepted_with_wrong_value"] == 0),
        Check("duplicate alerts", str(db["duplicate_alerts"]), "0", db["duplicate_alerts"] == 0),
        Check("worker RSS start -> end", f"{_mib(rss_start)} -> {_mib(rss_end)}", "flat (<= +20%)", rss_ok),
        Check("DB connections start -> end", f"{conns['start']} -> {conns['end']} (peak {conns['peak']})",
              "flat (<= +2)", conn_ok),
        Check("log bytes written", f"{logs['total_bytes']:,} B; B/min before {normal:,.0f}, outage "
              f"{logs['bytes_per_minute_outage']:,.0f}, after {logs['bytes_per_minute_after']:,.0f}, "
              f"peak {peak:,.0f} (at {logs['peak_at']:.0f}s)", "peak rate <= 2x before", log_ok),
        Check("requests timed out (client 30 s)", str(requests_["timeouts"]), "0", requests_["timeouts"] == 0),
        _bound("slowest /health probe", lat["slowest_health_probe_s"], 1.0,
               f", {lat['health_probes_failed']} not 200"),
        _bound("slowest /ready probe", lat["slowest_ready_probe_s"], 5.0),
        _bound("slowest API answer in the outage", lat["slowest_api_in_outage_s"], 5.0),
    ]


def _bound(name: str, seconds: Optional[float], limit: float, extra: str = "") -> Check:
    value = "not measured" if seconds is None else f"{seconds:.2f} s{extra}"
    return Check(name, value, f"<= {limit:g} s", None if seconds is None else seconds <= limit)


def request_totals(outcomes: list[Outcome]) -> dict[str, Any]:
    statuses: dict[str, int] = defaultdict(int)
    for outcome in outcomes:
        statuses[outcome.status] += 1
    bad = {status: count for status, count in statuses.items() if status.startswith("5") and status != "503"}
    return {"total": len(outcomes), "by_status": dict(sorted(statuses.items())), "5xx_not_503": sum(bad.values()),
            "503": statuses.get("503", 0), "timeouts": statuses.get("timeout", 0),
            "connection_errors": statuses.get("connection_error", 0)}


def render(report: dict[str, Any], checks_: list[Check]) -> str:
    width = max(len(c.name) for c in checks_)
    value_width = min(100, max(len(c.value) for c in checks_))
    lines = [f"{'check':<{width}}  {'value':<{value_width}}  {'target':<26}  verdict",
             f"{'-' * width}  {'-' * value_width}  {'-' * 26}  -------"]
    for check in checks_:
        verdict = check.as_dict()["verdict"]
        lines.append(f"{check.name:<{width}}  {check.value:<{value_width}}  {check.target:<26}  {verdict}")
    outage = report["requests_by_phase"]["slowest_seconds"].get("outage", {})
    if outage:
        slow = ", ".join(f"{action} {seconds:.1f}s" for action, seconds in sorted(outage.items()))
        lines.append(f"slowest answers during the outage: {slow}")
    stop = report.get("gunicorn_stop_seconds")
    lines.append(f"gunicorn stop after SIGTERM: {'killed after the timeout' if stop is None else f'{stop} s'}")
    return "\n".join(lines)
