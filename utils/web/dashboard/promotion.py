"""Dashboard pages and panels of the promotion: pins, champion vs challenger, drift over time.

Routes on the dashboard's blueprint (sign-in and CSRF guarded like every
other page): ``GET /compare/<model_type>/<metric_type>?days=N`` (gate numbers,
alert and incident rates, overlap, score histograms as server-rendered SVG)
and ``POST /pins/<model_type>/<metric_type>/unpin``.  :func:`panels` gives the
index page its pins and the drift chart.  No script: the charts are SVG.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any

from flask import flash, redirect, render_template, request, url_for
from sqlalchemy import select

from utils.extensions import db
from utils.ml.model_manager import get_model_manager
from utils.ml.promotion import compare as comparison
from utils.ml.promotion import pins
from utils.ml.promotion.models import DriftReport
from utils.ml.store.base import ModelNotFoundError
from utils.time import as_utc
from utils.web.dashboard import svg_charts
from utils.web.dashboard.views import ACTOR, MAX_REASON, _refuse, bp

DRIFT_REPORTS = 30  # per metric type, on the index chart
MAX_DAYS = 90


def drift_chart() -> Any:
    """PSI of the last reports per metric type, one line each, over report times (UTC)."""
    rows = list(db.session.execute(select(DriftReport).order_by(DriftReport.id.desc()).limit(DRIFT_REPORTS * 8))
                .scalars())
    db.session.rollback()
    by_type: dict[str, list[DriftReport]] = defaultdict(list)
    for row in rows:
        if len(by_type[row.metric_type]) < DRIFT_REPORTS:
            by_type[row.metric_type].append(row)
    stamps = sorted({as_utc(r.created_at).strftime("%m-%d %H:%M") for rs in by_type.values() for r in rs})
    series = []
    for name, reports in sorted(by_type.items()):
        at = {as_utc(r.created_at).strftime("%m-%d %H:%M"): r.psi for r in reports}
        series.append(svg_charts.Series(name, [at.get(stamp) for stamp in stamps]))
    return svg_charts.lines(stamps, series, "Drift (largest PSI over the model's features) per metric type",
                            y_label=lambda v: f"{v:.2f}", empty="No drift report yet (the drift_check job)")


def panels() -> dict[str, Any]:
    """What the index page shows of the promotion: pins by type, the drift chart."""
    found = {(p["model_type"], p["metric_type"]): p for p in pins.list_pins(db.session)}
    db.session.rollback()
    return {"pins": found, "drift_chart": drift_chart()}


def _histogram_chart(gate: dict[str, Any]) -> Any:
    edges = gate.get("histogram_edges") or []
    categories = [f"{edges[i]:.2f}" for i in range(len(edges) - 1)]
    series = [svg_charts.Series(f"{side} #{gate.get(side + '_id', '')}".strip(" #"), gate[side]["histogram"])
              for side in ("champion", "challenger") if side in gate and "histogram" in gate[side]]
    return svg_charts.lines(categories, series, "Score histogram (observations per score bin; higher = more anomalous)",
                            y_label=lambda v: f"{v:.0f}", empty="No scores")


@bp.get("/compare/<model_type>/<metric_type>")
def compare_page(model_type: str, metric_type: str) -> Any:
    """Champion and challenger side by side."""
    try:
        days = min(MAX_DAYS, max(1, int(request.args.get("days", "0")) or 0)) if request.args.get("days") else None
        challenger = int(request.args["challenger"]) if request.args.get("challenger") else None
    except ValueError:
        return _refuse(400, "Bad request", "days and challenger must be whole numbers.")
    try:
        result = comparison.compare(get_model_manager(), metric_type, model_type=model_type,
                                    challenger_id=challenger, days=days)
    except ModelNotFoundError as exc:
        return _refuse(404, "Not found", str(exc))
    chart = None
    if result["gate"]:
        gate = dict(result["gate"], champion_id=result["champion_id"], challenger_id=result["challenger_id"])
        chart = _histogram_chart(gate)
    return render_template("dashboard/compare.html", r=result, chart=chart)


@bp.post("/pins/<model_type>/<metric_type>/unpin")
def unpin(model_type: str, metric_type: str) -> Any:
    """Remove a pin, recorded with actor ``dashboard``: the next training's gate may promote again."""
    reason = (request.form.get("reason") or "").strip() or "unpinned from the dashboard"
    if len(reason) > MAX_REASON:
        return _refuse(400, "Reason too long", f"reason: at most {MAX_REASON} characters; nothing was changed.")
    if pins.unpin(db.session, model_type, metric_type, ACTOR, reason):
        flash(f"{model_type}/{metric_type} unpinned: automatic promotion resumes.")
    else:
        flash(f"{model_type}/{metric_type} had no pin; nothing was changed.")
    return redirect(url_for("dashboard.index") + f"#type-{model_type}-{metric_type}")
