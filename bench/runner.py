"""Runs every section in one process against one throw-away database, then reports."""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from bench import concurrency, disk, load, memory, peers, scan
from bench.env import BenchEnv, load_average, machine_description
from bench.targets import evaluate, render_loads, render_table, verdict
from utils.time import utcnow

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SECTIONS = ("load", "concurrency", "memory", "scan", "disk", "peers")


@dataclass(frozen=True)
class Sizes:
    """How big each section is; ``QUICK`` keeps the same shape at a toy scale."""

    train_rows: int = 10_000
    trees: int = 100
    load_repetitions: int = 300
    warm_repetitions: int = 20_000
    threads: int = 10
    loads_per_thread: int = 100
    store_models: int = 100
    store_metric_types: int = 10
    memory_score_rows: int = 20_000
    scan_observations: int = 1_000_000


FULL = Sizes()
QUICK = Sizes(train_rows=2_000, trees=20, load_repetitions=15, warm_repetitions=500, loads_per_thread=5,
              store_models=6, store_metric_types=3, memory_score_rows=1_000, scan_observations=5_000)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="toy sizes (under 30 s): checks the suite runs")
    parser.add_argument("--output", type=Path, default=None,
                        help="where to write the JSON (default bench/results/latest.json, "
                             "or bench/results/quick.json with --quick)")
    parser.add_argument("--scan-observations", type=int, default=None,
                        help="observations in the end-to-end scan (default 1,000,000; quick 5,000)")
    parser.add_argument("--only", default=None,
                        help=f"comma-separated subset of sections ({', '.join(SECTIONS)}); default all")
    args = parser.parse_args(argv)
    args.only = set(args.only.split(",")) if args.only else set(SECTIONS)
    unknown = args.only - set(SECTIONS)
    if unknown:
        parser.error(f"--only: unknown sections {sorted(unknown)} (known: {', '.join(SECTIONS)})")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.scan_observations:
        sizes = Sizes(**{**asdict(sizes), "scan_observations": args.scan_observations})
    output = args.output or RESULTS_DIR / ("quick.json" if args.quick else "latest.json")
    started = time.perf_counter()
    sections: dict[str, Any] = {}
    timings: dict[str, float] = {}
    failed: list[str] = []

    def section(name: str, fn: Callable[[], Any]) -> Any:
        if name in SECTIONS and name not in args.only:
            return {"status": "not_run", "reason": "left out with --only"}
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            return fn()
        except Exception as exc:
            failed.append(name)
            traceback.print_exc()
            return {"status": "error", "error": f"{exc.__class__.__name__}: {exc}"}
        finally:
            timings[name] = round(time.perf_counter() - t0, 1)

    env = BenchEnv.create()
    try:
        machine = machine_description(env.server_version())
        with env.app.app_context():
            load_data = section("prepare_load", lambda: load.prepare(env, sizes))
            store = (section("prepare_store", lambda: memory.prepare(env, sizes))
                     if args.only & {"memory", "disk"} else {})
            sections["load"] = section("load", lambda: load.run(env, sizes, load_data))
            sections["concurrency"] = section("concurrency", lambda: concurrency.run(env, sizes))
            sections["memory"] = section("memory", lambda: memory.run(env, sizes, store))
            sections["scan"] = section("scan", lambda: scan.run(env, sizes))
            sections["disk"] = section("disk", lambda: disk.run(env, sizes, load_data))
            sections["peers"] = section("peers", lambda: peers.run(env, sizes, load_data))
    finally:
        env.close()

    machine["load_average_at_end"] = load_average()
    targets = evaluate(sections)
    report = {
        "schema": 1,
        "generated_at": utcnow().isoformat(timespec="seconds"),
        "command": "python -m bench" + (" --quick" if args.quick else ""),
        "quick": args.quick,
        "duration_seconds": round(time.perf_counter() - started, 1),
        "section_seconds": timings,
        "machine": machine,
        "database": env.db_name,  # created for this run and dropped at its end
        "sizes": asdict(sizes),
        "targets": [t.as_dict() for t in targets],
        **sections,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, default=str) + "\n")

    print(render_loads(sections.get("load", {})))
    print()
    if sections.get("peers", {}).get("status") == "ok":
        print(f"Same model, other stores and formats (S3: {sections['peers']['s3_server']}):")
        print(render_loads(sections["peers"]))
        print()
    print(render_table(targets))
    print()
    summary = {v: sum(1 for t in targets if verdict(t) == v) for v in ("pass", "MISS", "n/a")}
    print(f"{summary['pass']} pass, {summary['MISS']} miss, {summary['n/a']} not measured; "
          f"{report['duration_seconds']} s on {machine['cpu_model']} ({machine['usable_cores']} cores); "
          f"wrote {output}")
    if failed:
        print(f"bench: sections failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
