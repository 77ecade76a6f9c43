"""``flask ml demo-data | import-metrics | train | scan`` through the real click runner."""
from __future__ import annotations

import json

import pytest
from sqlalchemy import text

from tests import dbutil
from tests.pipeline_helpers import count
from utils.extensions import db
from utils.models import MLAlert, MLMetric, MLModel

SMALL = ["--rooms", "20", "--products", "6", "--attendants", "3", "--days", "20"]


@pytest.mark.parametrize("command", ["demo-data", "import-metrics", "train", "scan"])
def test_help(runner, command):
    result = runner.invoke(args=["ml", command, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output


def test_demo_train_scan(runner, app):
    result = runner.invoke(args=["ml", "demo-data", *SMALL, "--seed", "5"])
    assert result.exit_code == 0, result.output
    assert "stok_seviye" in result.output and "contextual anomalies" in result.output
    with app.app_context():
        observations = count(MLMetric)
    assert f"Inserted {observations} observations" in result.output

    result = runner.invoke(args=["ml", "train"])
    assert result.exit_code == 0, result.output
    header, rule, *rows = result.output.strip().splitlines()
    assert header.split()[:3] == ["metric", "type", "status"] and set(rule) <= {"-", " "}
    assert sorted(r.split()[0] for r in rows) == ["dolum_sure", "stok_seviye", "tuketim_miktar"]
    assert all(r.split()[1] == "trained" for r in rows)
    with app.app_context():
        assert count(MLModel, MLModel.is_active.is_(True)) == 3

    result = runner.invoke(args=["ml", "scan"])
    assert result.exit_code == 0, result.output
    with app.app_context():
        alerts = count(MLAlert)
    assert result.output.startswith(f"Scanned {observations} observations, {alerts} new alerts")
    assert result.output.count("isolation_forest_file") == 3

    result = runner.invoke(args=["ml", "scan", "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["scanned"] == 0

    result = runner.invoke(args=["ml", "train", "--metric-type", "stok_seviye", "--json"])
    [only] = json.loads(result.output)
    # Same data, same settings: no new version (a restart of the quick start adds nothing).
    assert result.exit_code == 0 and only["metric_type"] == "stok_seviye" and only["status"] == "unchanged"
    assert f"as model {only['model_id']}: no new version" in only["skipped"]


def test_train_reports_skips(runner, app):
    app.config["ML_MIN_TRAIN_SAMPLES"] = 10**6
    runner.invoke(args=["ml", "demo-data", *SMALL])
    result = runner.invoke(args=["ml", "train", "--metric-type", "dolum_sure"])
    assert result.exit_code == 0, result.output
    assert "skipped" in result.output and "ML_MIN_TRAIN_SAMPLES=1000000" in result.output


def test_import_metrics(runner, app, tmp_path):
    good = tmp_path / "good.csv"
    good.write_text("metric_type,entity_id,metric_value,timestamp\nstok_seviye,1,40,2026-01-05T08:00:00Z\n"
                    "stok_seviye,2,41,2026-01-05T08:00:00Z\n")
    result = runner.invoke(args=["ml", "import-metrics", str(good)])
    assert result.exit_code == 0 and "Imported 2 observations" in result.output

    bad = tmp_path / "bad.csv"
    bad.write_text("metric_type,entity_id,metric_value,timestamp\nstok_seviye,1,40,2026-01-05T08:00:00Z\n"
                   "stok_seviye,-3,41,2026-01-05T08:00:00Z\n")
    result = runner.invoke(args=["ml", "import-metrics", str(bad)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("Error: nothing imported: line 3, column entity_id:")
    with app.app_context():
        assert count(MLMetric) == 2  # the good file's rows only

    result = runner.invoke(args=["ml", "import-metrics", str(tmp_path / "missing.csv")])
    assert result.exit_code == 1 and "does not exist" in result.output


def test_bad_arguments_fail_in_one_line(runner):
    result = runner.invoke(args=["ml", "train", "--metric-type", "Bad-Name"])
    assert result.exit_code == 1 and result.output.strip().count("\n") == 0 and "metric_type" in result.output
    result = runner.invoke(args=["ml", "scan", "--metric-type", "model_load_time"])
    assert result.exit_code == 1 and "internal" in result.output
    result = runner.invoke(args=["ml", "demo-data", "--rooms", "0"])
    assert result.exit_code == 2 and "--rooms" in result.output


def test_demo_data_if_empty_adds_nothing_the_second_time(runner, app):
    first = runner.invoke(args=["ml", "demo-data", *SMALL, "--if-empty"])
    assert first.exit_code == 0 and "Inserted" in first.output
    with app.app_context():
        before = count(MLMetric)
    second = runner.invoke(args=["ml", "demo-data", *SMALL, "--if-empty"])
    assert second.exit_code == 0 and "no demo data added" in second.output
    with app.app_context():
        assert count(MLMetric) == before


def test_demo_data_is_batch_work_not_a_request(pg_template, models_dir):
    """A bulk load runs with the jobs' database bounds: requests' 0.1 s would cancel its COPY.

    Measured on 2026-11-30: ``python -m bench`` failed with "canceling statement due
    to statement timeout" when one 100,000-row COPY of the demo hotel outlasted the
    requests' 3 s on a slower machine.
    """
    name = dbutil.create_pg_database(template=pg_template)
    app = dbutil.make_app(dbutil.pg_url(name), models_dir, ML_DB_STATEMENT_TIMEOUT_SECONDS=0.1)
    try:
        result = app.test_cli_runner().invoke(args=["ml", "demo-data", "--rooms", "120", "--products", "40",
                                                    "--attendants", "8", "--days", "120", "--seed", "3"])
        assert result.exit_code == 0, result.output
        with app.app_context():
            observations = count(MLMetric)
        assert observations > 25_000 and f"Inserted {observations} observations" in result.output
        with app.app_context():  # requests keep their own, short bound
            assert db.session.execute(text("SHOW statement_timeout")).scalar_one() == "100ms"
    finally:
        dbutil.dispose(app)
        dbutil.drop_pg_database(name)
