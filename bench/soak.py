"""``python -m bench.soak`` (``make soak``): mixed traffic with a PostgreSQL outage in the middle.

Bounded and self-contained: it starts a private PostgreSQL cluster on a free
loopback port, migrates and seeds it (``flask db upgrade``, ``flask ml
demo-data``, ``flask ml train``), starts ``gunicorn -c gunicorn.conf.py
app:app`` with 2 workers and the scheduler on (short job intervals), drives
mixed traffic from a few client threads for ``--duration`` seconds and, in the
middle, stops PostgreSQL for ``--outage`` seconds (``--fault freeze`` or
``kill`` for the other faults) before starting it again.

At the end it prints a table and writes JSON (``bench/results/soak-latest.json``):
5xx answers other than 503, accepted observations missing from the database,
duplicate alerts, worker RSS and database connections at the start and the
end, and the bytes gunicorn wrote to stdout+stderr (overall, per phase, and
the biggest kinds of lines).  Everything it started is stopped and deleted on
exit, on errors, on Ctrl-C and on SIGTERM.  Exit 0 when the run completed
(``--strict``: only when every target passed), 1 when it failed, 130 when
interrupted.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Optional

from bench.env import load_average, machine_description
from bench.soak_report import checks, database_checks, latency_checks, log_profile, render, request_totals
from bench.soak_stack import AppSettings, SoakStack
from bench.soak_traffic import ACTIONS, Recorder, Target, parse_mix, start_clients, summarise
from utils.time import utcnow

RESULTS = Path(__file__).resolve().parent / "results"
SAMPLE_EVERY = 5.0
FAULTS = ("stop", "freeze", "kill")


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of traffic (default 120)")
    parser.add_argument("--outage", type=float, default=30.0, help="seconds PostgreSQL is down (default 30; 0 = none)")
    parser.add_argument("--outage-at", type=float, default=None, help="when the outage starts (default: centred)")
    parser.add_argument("--fault", choices=FAULTS, default="stop",
                        help="stop (fast shutdown, the default), freeze (SIGSTOP) or kill (SIGKILL)")
    parser.add_argument("--clients", type=int, default=4, help="client threads (default 4)")
    parser.add_argument("--think-ms", type=float, default=20.0, help="pause after each request per client")
    parser.add_argument("--mix", default="", help="action weights, e.g. dashboard=50,ingest=10 "
                        f"(default {','.join(f'{a}={w}' for a, w in ACTIONS)})")
    parser.add_argument("--warmup", type=float, default=8.0, help="seconds before the start sample (default 8)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    parser.add_argument("--scan-interval", type=float, default=10.0)
    parser.add_argument("--train-interval", type=float, default=45.0)
    parser.add_argument("--cleanup-interval", type=float, default=30.0)
    parser.add_argument("--output", type=Path, default=RESULTS / "soak-latest.json")
    parser.add_argument("--keep-log", type=Path, default=None, help="copy gunicorn's output here at the end")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    try:
        args.mix = parse_mix(args.mix)
    except ValueError as exc:
        parser.error(str(exc))
    if args.outage_at is None:
        args.outage_at = max(args.warmup, (args.duration - args.outage) / 2)
    if args.duration <= 0 or args.outage < 0 or args.clients < 1 or args.think_ms < 0:
        parser.error("--duration, --clients must be positive; --outage, --think-ms not negative")
    if args.outage and not args.warmup <= args.outage_at <= args.duration - args.outage:
        parser.error("the outage must start after --warmup and end before --duration")
    return args


def _terminate(signum: int, frame: Any) -> None:
    # SIGTERM/SIGHUP take the same way out as Ctrl-C: every finally block runs.
    raise KeyboardInterrupt(f"signal {signum}")


def _sample(stack: SoakStack, at: float, fault_active: bool) -> dict[str, Any]:
    # No connection count while the fault is on: a frozen server would hold the sampler up.
    by_app = None if fault_active else stack.connections()
    return {"at": round(at, 1), "rss_kib": stack.worker_rss_kib(), "log_bytes": stack.log_bytes(),
            "connections": None if by_app is None else sum(by_app.values()), "connections_by_app": by_app}


def peak_log_rate(timeline: list[dict[str, Any]]) -> tuple[float, float]:
    """The highest log growth between two samples, in bytes per minute, and when it ended."""
    best = (0.0, 0.0)
    for before, after in zip(timeline, timeline[1:]):
        seconds = after["at"] - before["at"]
        if seconds > 0:
            best = max(best, ((after["log_bytes"] - before["log_bytes"]) * 60 / seconds, after["at"]))
    return best


class Soak:
    """One run: the stack, the clients, the fault, the samples."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run_id = uuid.uuid4().hex[:10]
        self.stack = SoakStack(AppSettings(
            workers=args.workers, scan_interval=args.scan_interval, train_interval=args.train_interval,
            cleanup_interval=args.cleanup_interval), say=lambda message: print(f"soak: {message}", file=sys.stderr,
                                                                               flush=True))
        self.timeline: list[dict[str, Any]] = []
        self.marks: dict[str, int] = {}
        self.fault_log: list[str] = []

    def _fault(self, begin: bool) -> None:
        cluster, fault = self.stack.cluster, self.args.fault
        if begin:
            {"stop": cluster.stop, "freeze": cluster.freeze, "kill": cluster.kill}[fault]()
        else:
            cluster.thaw() if fault == "freeze" else cluster.start()
        self.fault_log.append(f"{'began' if begin else 'ended'} ({fault}) at {self.recorder.now():.1f}s")
        self.stack.say(f"outage {self.fault_log[-1]}")

    def traffic(self) -> None:
        a = self.args
        s = self.stack.settings
        rooms = [(i // 30 + 1) * 100 + i % 30 + 1 for i in range(s.demo_rooms)]
        target = Target(self.stack.base, self.stack.token, self.run_id, s.demo_products, rooms, s.demo_attendants)
        self.recorder = Recorder()
        self.marks["traffic_start"] = self.stack.log_bytes()
        stop = threading.Event()
        threads = start_clients(a.clients, target, self.recorder, a.think_ms / 1000.0, stop, a.mix)
        fault_end = a.outage_at + a.outage
        state, next_sample = "before", 0.0
        try:
            while (now := self.recorder.now()) < a.duration:
                if a.outage and state == "before" and now >= a.outage_at:
                    self.marks["outage_start"] = self.stack.log_bytes()
                    self._fault(begin=True)
                    state = "outage"
                elif state == "outage" and now >= fault_end:
                    self._fault(begin=False)
                    self.marks["outage_end"] = self.stack.log_bytes()
                    state = "after"
                if "start" not in self.marks and now >= a.warmup:
                    self.marks["start"] = 1
                    self.start_sample = _sample(self.stack, now, state == "outage")
                if now >= next_sample:
                    self.timeline.append(_sample(self.stack, now, state == "outage"))
                    next_sample += SAMPLE_EVERY
                time.sleep(0.1)
            self.end_sample = _sample(self.stack, self.recorder.now(), False)
        finally:
            stop.set()
            if state == "outage":  # interrupted mid-outage: bring the database back for the checks
                self._fault(begin=False)
            for thread in threads:
                thread.join(timeout=target.timeout + 5)
        self.marks["traffic_end"] = self.stack.log_bytes()

    def report(self) -> dict[str, Any]:
        a, stack = self.args, self.stack
        outcomes = self.recorder.snapshot()
        phases = {"before": (0.0, a.outage_at), "outage": (a.outage_at, a.outage_at + a.outage),
                  "after": (a.outage_at + a.outage, a.duration + 3600)} if a.outage else {"all": (0, 1e9)}
        database = database_checks(stack.cluster, stack.database, self.recorder, self.run_id)
        peak = max((s["connections"] or 0) for s in self.timeline) if self.timeline else None
        stop_seconds = stack.stop_gunicorn(timeout=40.0)
        end_bytes = stack.log_bytes()
        peak_rate = peak_log_rate(self.timeline + [self.end_sample])
        m = self.marks
        segments = {"before": (m["traffic_start"], m.get("outage_start", m["traffic_end"])),
                    "outage": (m.get("outage_start", 0), m.get("outage_end", 0)),
                    "after": (m.get("outage_end", m["traffic_end"]), m["traffic_end"]),
                    "shutdown": (m["traffic_end"], end_bytes)}
        profile = {name: log_profile(stack.log_path, lo, hi) for name, (lo, hi) in segments.items()}
        minutes_before = max(a.outage_at if a.outage else a.duration, 1e-9) / 60
        if a.keep_log:
            a.keep_log.write_bytes(stack.log_path.read_bytes())
        rss_start, rss_end = self.start_sample["rss_kib"], self.end_sample["rss_kib"]
        report = {
            "schema": 1,
            "generated_at": utcnow().isoformat(timespec="seconds"),
            "command": "python -m bench.soak " + " ".join(sys.argv[1:]),
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
            "fault": self.fault_log,
            "requests": request_totals(outcomes),
            "requests_by_phase": summarise(outcomes, phases),
            "latency": latency_checks(outcomes, (a.outage_at, a.outage_at + a.outage) if a.outage else None),
            "database": database,
            "worker_rss_kib": {"start": rss_start, "end": rss_end, "start_total": sum(v or 0 for v in rss_start.values()),
                               "end_total": sum(v or 0 for v in rss_end.values()),
                               "workers_replaced": sorted(rss_start) != sorted(rss_end)},
            "db_connections": {"start": self.start_sample["connections"], "end": self.end_sample["connections"],
                               "peak": peak, "start_by_app": self.start_sample["connections_by_app"],
                               "end_by_app": self.end_sample["connections_by_app"]},
            "log": {"total_bytes": end_bytes, "traffic_bytes": m["traffic_end"] - m["traffic_start"],
                    "bytes_per_minute_before": profile["before"]["bytes"] / minutes_before,
                    "bytes_per_minute_outage": (profile["outage"]["bytes"] / (a.outage / 60)) if a.outage else 0.0,
                    "bytes_per_minute_after": profile["after"]["bytes"] / max(a.duration - a.outage_at - a.outage, 1e-9)
                    * 60 if a.outage else 0.0,
                    "peak_bytes_per_minute": round(peak_rate[0]), "peak_at": peak_rate[1],
                    "phases": profile},
            "gunicorn_stop_seconds": stop_seconds,
            "timeline": self.timeline,
        }
        return report


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    # SIGINT too: a shell starts background jobs with SIGINT ignored, and Python then
    # never raises KeyboardInterrupt.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)
    soak = Soak(args)
    started, load_at_start = time.monotonic(), load_average()
    try:
        soak.stack.prepare()
        soak.stack.start_gunicorn()
        server = soak.stack.cluster.query("SHOW server_version")[0][0]
        soak.stack.say(f"traffic for {args.duration:g}s from {args.clients} clients; "
                       f"{args.fault} PostgreSQL for {args.outage:g}s at {args.outage_at:g}s")
        soak.traffic()
        report = soak.report()
        report["machine"] = machine_description(server)
        report["machine"].update(load_average_at_start=load_at_start, load_average_at_end=load_average())
        report["duration_seconds"] = round(time.monotonic() - started, 1)
    except KeyboardInterrupt:
        print("soak: interrupted; cleaning up", file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"soak: failed: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        print(soak.stack.log_tail(), file=sys.stderr)
        return 1
    finally:
        # A second Ctrl-C must not cut the clean-up short and leave processes behind.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        soak.stack.close()
    found = checks(report)
    report["checks"] = [c.as_dict() for c in found]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(render(report, found))
    print(f"wrote {args.output}")
    missed = [c.name for c in found if c.ok is False]
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
