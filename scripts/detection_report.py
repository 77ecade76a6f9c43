#!/usr/bin/env python
"""Detection quality on the labelled demo hotel: model path against the Z-score fallback.

Builds a throw-away database (SQLite by default, or ``--database-url``, which
must be an EMPTY database: it is migrated and filled), runs ``flask db
upgrade``, generates the demo data, trains the models with the real trainer,
and scores the observations with the real detector:

* ``model``: ``AnomalyDetector.detect_with_model`` (the file model) on the
  observations, with their entity ids;
* ``z_score``: ``AnomalyDetector.detect_with_zscore`` with the metric's
  values as the reference — what a scan's fallback does.

Protocols (``--protocol``):

* ``in-sample`` (default, what the quick start does): train on the whole
  60-day window, then scan every observation.  Labels are never used for
  fitting, but the forest has seen the rows it scores.
* ``time-split``: train on the first ``--train-days`` days only and score
  the later days, which neither the forest nor the Z-score reference saw.

Per metric type and anomaly kind, precision/recall/F1 are computed on the
normal observations plus the anomalies *of that kind* (an observation of the
other kind is neither a hit nor a false alarm for this kind); ``all`` uses
every labelled observation.

    .venv/bin/python scripts/detection_report.py            # the default hotel
    .venv/bin/python scripts/detection_report.py --contamination 0.01 0.02 0.03 --json out.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

KINDS = ("global", "contextual", "all")


def prf(predicted: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """Precision, recall, F1 and counts; a ratio with a zero denominator is None."""
    tp = int(np.sum(predicted & truth))
    fp = int(np.sum(predicted & ~truth))
    fn = int(np.sum(~predicted & truth))
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = (2 * precision * recall / (precision + recall)
          if precision is not None and recall is not None and precision + recall > 0 else None)
    return {"tp": tp, "fp": fp, "fn": fn, "precision": precision, "recall": recall, "f1": f1}


def per_kind(predicted: np.ndarray, kind: np.ndarray) -> dict[str, dict[str, Any]]:
    """``kind``: array of 'normal', 'global', 'contextual'."""
    out = {}
    for name in KINDS:
        subset = np.ones(kind.shape, dtype=bool) if name == "all" else (kind == "normal") | (kind == name)
        truth = (kind != "normal") if name == "all" else (kind == name)
        out[name] = prf(predicted[subset], truth[subset])
    return out


def load_observations(metric_type: str, since: Optional[Any] = None, until: Optional[Any] = None) -> dict[str, Any]:
    from sqlalchemy import select

    from utils.extensions import db
    from utils.models import MLMetric

    query = select(MLMetric.id, MLMetric.entity_id, MLMetric.metric_value, MLMetric.extra_data).where(
        MLMetric.metric_type == metric_type).order_by(MLMetric.id)
    if since is not None:
        query = query.where(MLMetric.timestamp > since)
    if until is not None:
        query = query.where(MLMetric.timestamp <= until)
    rows = db.session.execute(query).all()
    kinds = np.array([(r[3] or {}).get("anomaly_kind", "normal") if (r[3] or {}).get("label") == "anomaly"
                      else "normal" for r in rows])
    return {
        "observations": [{"id": r[0], "entity_id": r[1], "metric_value": r[2]} for r in rows],
        "values": np.array([r[2] for r in rows], dtype=float),
        "kind": kinds,
    }


def evaluate(app: Any, *, contamination: float, features: tuple[str, ...], protocol: str,
             train_days: int, days: int, end: Any) -> dict[str, Any]:
    from utils.extensions import db
    from utils.ml.anomaly_detector import AnomalyDetector
    from utils.ml.model_trainer import ModelTrainer

    report: dict[str, Any] = {"contamination": contamination, "features": list(features), "protocol": protocol,
                              "metric_types": {}}
    with app.app_context():
        if protocol == "time-split":
            split = end - timedelta(days=days - train_days)
            trainer = ModelTrainer(db, contamination=contamination, features=features, window_days=train_days,
                                   actor="detection_report")
            trained = [trainer.train_one(mt, now=split) for mt in trainer.metric_types(end - timedelta(days=days))]
        else:
            split = None
            trainer = ModelTrainer(db, contamination=contamination, features=features, actor="detection_report")
            trained = trainer.train()
        report["training"] = trained
        detector = AnomalyDetector(db)
        for row in trained:
            metric_type = row["metric_type"]
            data = load_observations(metric_type, since=split)
            # The Z-score's baseline is what a scan would have: the history up to the scored rows.
            reference = data["values"] if split is None else load_observations(metric_type, until=split)["values"]
            model = detector.detect_with_model(metric_type, data["observations"])
            zscore = detector.detect_with_zscore(data["values"], reference=reference)
            entry: dict[str, Any] = {"observations": len(data["values"]),
                                     "anomalies": {k: int(np.sum(data["kind"] == k)) for k in ("global", "contextual")},
                                     "model_id": model.model_id, "model_method": model.method}
            for name, result in (("model", model), ("z_score", zscore)):
                predicted = np.array([r["is_anomaly"] for r in result.results], dtype=bool)
                entry[name] = per_kind(predicted, data["kind"])
            report["metric_types"][metric_type] = entry
        db.session.rollback()
    return report


def _fmt(value: Optional[float]) -> str:
    return "  -  " if value is None else f"{value:.3f}"


def print_report(report: dict[str, Any]) -> None:
    print(f"\nprotocol={report['protocol']}  contamination={report['contamination']}  "
          f"features={','.join(report['features'])}")
    header = f"{'metric type':<15} {'kind':<11} {'n_anom':>6}  " + "  ".join(
        f"{m + ' ' + s:>13}" for m in ("model", "z_score") for s in ("P", "R", "F1"))
    print(header)
    print("-" * len(header))
    for metric_type, entry in report["metric_types"].items():
        for kind in KINDS:
            count = sum(entry["anomalies"].values()) if kind == "all" else entry["anomalies"][kind]
            cells = []
            for method in ("model", "z_score"):
                m = entry[method][kind]
                cells += [_fmt(m["precision"]), _fmt(m["recall"]), _fmt(m["f1"])]
            print(f"{metric_type:<15} {kind:<11} {count:>6}  " + "  ".join(f"{c:>13}" for c in cells))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=None, help="an EMPTY database to use (default: temporary SQLite)")
    parser.add_argument("--rooms", type=int, default=120)
    parser.add_argument("--products", type=int, default=40)
    parser.add_argument("--attendants", type=int, default=8)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--contamination", type=float, nargs="+", default=[0.02])
    parser.add_argument("--features", nargs="+", default=["entity_robust_z"],
                        help="feature sets to compare, each comma-separated (e.g. entity_robust_z value,entity_robust_z)")
    parser.add_argument("--protocol", choices=("in-sample", "time-split"), default="in-sample")
    parser.add_argument("--train-days", type=int, default=45, help="time-split: days used for training")
    parser.add_argument("--json", dest="json_path", default=None, help="also write the full report here")
    args = parser.parse_args(argv)

    from flask_migrate import upgrade

    from app import create_app
    from utils.extensions import db
    from utils.ml.pipeline.demo_data import DEFAULT_SEED, generate_demo_data
    from utils.time import utcnow

    with tempfile.TemporaryDirectory(prefix="detection_report_") as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'report.sqlite3'}"
        app = create_app({"SQLALCHEMY_DATABASE_URI": url, "ML_MODELS_DIR": str(Path(tmp) / "ml_models"),
                          "ML_SCHEDULER_ENABLED": False, "ML_TRAIN_WINDOW_DAYS": args.days})
        end = utcnow().replace(second=0, microsecond=0)
        with app.app_context():
            upgrade()
            demo = generate_demo_data(rooms=args.rooms, products=args.products, attendants=args.attendants,
                                      days=args.days, seed=DEFAULT_SEED if args.seed is None else args.seed, end=end)
        print(f"demo hotel: {args.rooms} rooms, {args.products} products, {args.attendants} attendants, "
              f"{args.days} days, seed {demo['seed']}: {demo['observations']} observations")
        for name, counts in demo["by_metric_type"].items():
            print(f"  {name}: {counts}")
        reports = []
        for features in args.features:
            for contamination in args.contamination:
                report = evaluate(app, contamination=contamination, features=tuple(features.split(",")),
                                  protocol=args.protocol, train_days=args.train_days, days=args.days, end=end)
                print_report(report)
                reports.append(report)
        with app.app_context():
            db.session.remove()
            db.engine.dispose()
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"demo": demo, "reports": reports}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
