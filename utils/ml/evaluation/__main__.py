"""``python -m utils.ml.evaluation``: walk-forward comparison of the detectors, printed and saved as JSON.

Examples::

    python -m utils.ml.evaluation --seed 1 --seed 2 --seed 3          # the default hotel, 3 seeds
    python -m utils.ml.evaluation --clean --seed 1                     # a month without anomalies
    python -m utils.ml.evaluation --observations obs.csv --labels labels.csv   # your own labelled data
    python -m utils.ml.evaluation --seed 1 --write-csv out/            # export the simulated hotel
    python -m utils.ml.evaluation --merge a.json b.json                # pool saved runs (same seed: one run)

Exit status 0 on success, 2 with a one-line reason on bad input.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

from utils.ml.evaluation import data as datamod
from utils.ml.evaluation.baselines import DETECTORS, NewDetector
from utils.ml.detector.model import DetectorSettings
from utils.ml.evaluation.report import full_report, spread_table
from utils.ml.evaluation.simulator import HotelConfig, simulate
from utils.ml.evaluation.walkforward import WalkForwardConfig, combine, evaluate

DEFAULT_OUTPUT = Path("test-artifacts") / "evaluation"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m utils.ml.evaluation", description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, action="append", help="simulator seed (repeat for several; default 1)")
    p.add_argument("--days", type=int, default=HotelConfig.days)
    p.add_argument("--rooms", type=int, default=HotelConfig.rooms)
    p.add_argument("--products", type=int, default=HotelConfig.products)
    p.add_argument("--attendants", type=int, default=HotelConfig.attendants)
    p.add_argument("--meters", type=int, default=HotelConfig.meters)
    p.add_argument("--anomaly-rate", type=float, default=HotelConfig.anomaly_rate)
    p.add_argument("--clean", action="store_true", help="no anomalies; evaluate the last 30 days only")
    p.add_argument("--observations", help="CSV of observations to evaluate instead of the simulator")
    p.add_argument("--labels", help="CSV of event windows for --observations")
    p.add_argument("--detectors", default=",".join(DETECTORS), help=f"comma-separated, from {','.join(DETECTORS)}")
    p.add_argument("--warmup-days", type=int, default=None, help="days before scoring starts (default 28; --clean: days-30)")
    p.add_argument("--retrain-days", type=int, default=1)
    p.add_argument("--budget", type=float, default=DetectorSettings.false_alerts_per_entity_day,
                   help="e_new: expected false alerts per entity-day (its calibration budget)")
    p.add_argument("--contamination", type=float, default=DetectorSettings.contamination,
                   help="e_new: calibration target (share of each entity's window anchoring its tail)")
    p.add_argument("--window-days", type=float, default=60.0)
    p.add_argument("--json", dest="json_path", help=f"where to write the results (default under {DEFAULT_OUTPUT}/)")
    p.add_argument("--write-csv", help="also write the simulated observations and labels into this directory")
    p.add_argument("--merge", nargs="+", help="pool these saved result files and print them (no evaluation)")
    p.add_argument("--cost", action="store_true",
                   help="measure per-row scan/train cost of today's model and the new detector instead")
    return p


def _datasets(args: argparse.Namespace) -> list[tuple[str, datamod.Dataset]]:
    if args.observations:
        dataset = datamod.read_dataset(args.observations, args.labels)
        return [(Path(args.observations).name, dataset)]
    out = []
    for seed in args.seed or [1]:
        cfg = HotelConfig(rooms=args.rooms, products=args.products, attendants=args.attendants, meters=args.meters,
                          days=args.days, seed=seed, anomaly_rate=args.anomaly_rate, anomalies=not args.clean)
        out.append((f"seed {seed}" + (" clean" if args.clean else ""), simulate(cfg)))
    return out


def run(args: argparse.Namespace, path: Optional[Path] = None) -> dict[str, Any]:
    """Evaluate every dataset; with ``path``, rewrite the JSON after each one (a long run keeps what it did)."""
    names = [n.strip() for n in args.detectors.split(",") if n.strip()]
    unknown = [n for n in names if n not in DETECTORS]
    if unknown or not names:
        raise ValueError(f"--detectors: must name some of {', '.join(DETECTORS)} (got {args.detectors!r})")
    runs = []
    for label, dataset in _datasets(args):
        warmup = args.warmup_days if args.warmup_days is not None else (args.days - 30 if args.clean else 28)
        cfg = WalkForwardConfig(window_days=args.window_days, retrain_days=args.retrain_days, warmup_days=warmup)
        if args.write_csv:
            folder = Path(args.write_csv)
            folder.mkdir(parents=True, exist_ok=True)
            stem = label.replace(" ", "_")
            datamod.write_observations(folder / f"{stem}_observations.csv", dataset)
            datamod.write_events(folder / f"{stem}_labels.csv", dataset.events)
        if not (0 < args.budget < 1 and 0 < args.contamination < 0.5):
            raise ValueError("--budget: must be in (0, 1) and --contamination in (0, 0.5)")
        settings = DetectorSettings(false_alerts_per_entity_day=args.budget, contamination=args.contamination)
        factories = {n: DETECTORS[n] for n in names}
        if "e_new" in factories:
            factories["e_new"] = lambda metric_type: NewDetector(metric_type, settings)
        result = evaluate(dataset, factories, cfg,
                          log=lambda m: print(f"  [{label}] {m}", file=sys.stderr))
        result.update(label=label, meta=dataset.meta)
        print(full_report(label, result["detectors"]), flush=True)
        runs.append(result)
        if path is not None:
            path.write_text(json.dumps({"runs": runs, "partial": True}, default=str))
    return {"runs": runs, "pooled": combine(runs) if len(runs) > 1 else None}


def main(argv: Optional[list[str]] = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.merge:
            by_label: dict[str, Any] = {}  # runs of one dataset (label) from several files: one run, detectors joined
            for path in args.merge:
                for one in json.loads(Path(path).read_text())["runs"]:
                    if one.get("label") in by_label:
                        by_label[one["label"]]["detectors"].update(one["detectors"])
                    else:
                        by_label[one.get("label") or f"run {len(by_label)}"] = one
            runs = list(by_label.values())
            pooled = combine(runs)
            print(full_report(f"pooled over {len(runs)} runs", pooled))
            print("\nmean +- sd over runs\n" + spread_table(runs))
            return 0
        started = time.perf_counter()
        path = Path(args.json_path) if args.json_path else DEFAULT_OUTPUT / f"evaluation_{int(time.time())}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        if args.cost:
            from utils.ml.evaluation.cost import format_cost, measure

            dataset = _datasets(args)[0][1]
            largest = max(dataset.series.values(), key=len)
            output = {"cost": measure(largest, split_day=max(args.days - 30, 14))}
            print(format_cost(output["cost"]))
        else:
            output = run(args, path)
        if output.get("pooled"):
            print(full_report(f"pooled over {len(output['runs'])} runs", output["pooled"]))
            print("\nmean +- sd over runs\n" + spread_table(output["runs"]))
        output["seconds"] = round(time.perf_counter() - started, 1)
        path.write_text(json.dumps(output, indent=1, default=str))
        print(f"\nwrote {path}")
        return 0
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
