"""``flask ml evaluate`` (the walk-forward harness) and ``flask ml demo-data --realistic``, through the CLI."""
from __future__ import annotations

import json

from sqlalchemy import func, select

from tests.pipeline_helpers import count
from utils.extensions import db
from utils.models import MLMetric

TINY = ["--rooms", "4", "--products", "3", "--attendants", "2", "--meters", "2"]


def test_demo_data_realistic_inserts_the_simulated_hotel_with_labels(runner, app_ctx):
    result = runner.invoke(args=["ml", "demo-data", "--realistic", "--days", "21", *TINY[:6], "--seed", "2"])
    assert result.exit_code == 0, result.output
    assert "simulated observations" in result.output and "enerji_tuketim" in result.output
    total = count(MLMetric)
    assert total > 1000 and f"Inserted {total} " in result.output
    labels = dict(db.session.execute(select(MLMetric.extra_data["label"].as_string(), func.count())
                                     .group_by(MLMetric.extra_data["label"].as_string())).all())
    assert set(labels) <= {"normal", "anomaly"} and labels["normal"] > 0
    newest = db.session.execute(select(func.max(MLMetric.timestamp))).scalar_one()
    db.session.rollback()
    assert newest is not None


def test_evaluate_runs_the_walk_forward_harness(runner, tmp_path):
    out = tmp_path / "eval.json"
    result = runner.invoke(args=["ml", "evaluate", "--seed", "1", "--days", "31", *TINY,
                                 "--detectors", "b_zscore,e_new", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "recall per kind" in result.output and "e_new" in result.output
    saved = json.loads(out.read_text())
    [run] = saved["runs"]
    assert set(run["detectors"]) == {"b_zscore", "e_new"}


def test_evaluate_refuses_bad_input_with_one_line(runner):
    result = runner.invoke(args=["ml", "evaluate", "--detectors", "nope", "--days", "31", *TINY])
    assert result.exit_code != 0 and "--detectors" in result.output
    result = runner.invoke(args=["ml", "evaluate", "--labels", __file__])
    assert result.exit_code != 0 and "--labels: needs --observations" in result.output
