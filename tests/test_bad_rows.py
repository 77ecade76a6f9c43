"""Bad bytes in, bad rows already in: NUL is refused at every way in (API, CSV) naming the
field, and one unusable row already in ``ml_metrics`` (written by SQL, as the hotel app or an
older version could) is skipped, counted and reported; it never fails its whole metric type."""
from __future__ import annotations

import math
from datetime import timedelta

import pytest
from sqlalchemy import text

from tests.pipeline_helpers import count, unlabelled_series
from utils.extensions import db
from utils.ml.jobs import TRIGGER_CLI, run_job_now
from utils.ml.model_trainer import train_models
from utils.ml.pipeline.csv_import import import_csv
from utils.ml.pipeline.observations import ObservationValidationError, ingest_observations
from utils.ml.pipeline.scan import run_scan
from utils.models import MLAlert, MLMetric
from utils.time import utcnow

HEADER = "metric_type,entity_id,metric_value,timestamp,extra_data\n"


@pytest.mark.parametrize("cell", [
    '"{""note"": ""a\\u0000b""}"',          # the JSON escape, as a fuzzer sends it
    '"{""note"": ""a\x00b""}"',             # a raw NUL byte inside the JSON string
    '"{""a\\u0000"": 1}"',                  # in a key
    '"{""deep"": [{""x"": ""\\u0000""}]}"',  # nested
])
def test_csv_import_refuses_nul_in_extra_data_naming_line_and_column(app_ctx, tmp_path, cell):
    path = tmp_path / "nul.csv"
    path.write_text(HEADER + "stok_seviye,1,40,2026-01-05T08:00:00Z,\n"
                    + f"stok_seviye,1,41,2026-01-05T09:00:00Z,{cell}\n", encoding="utf-8")
    with pytest.raises(ObservationValidationError) as caught:
        import_csv(path)
    first = caught.value.errors[0]
    assert (first["line"], first["column"]) == (3, "extra_data"), caught.value.errors
    assert "NUL" in first["rule"]
    assert count(MLMetric) == 0  # all or nothing


def test_csv_import_refuses_a_raw_nul_in_any_other_cell(app_ctx, tmp_path):
    path = tmp_path / "nul.csv"
    path.write_text(HEADER + "stok\x00seviye,1,40,2026-01-05T08:00:00Z,\n"
                    + "stok_seviye,1,4\x000,2026-01-05T08:00:00Z,\n", encoding="utf-8")
    with pytest.raises(ObservationValidationError) as caught:
        import_csv(path)
    assert {(e["line"], e["column"]) for e in caught.value.errors} == {(2, "metric_type"), (3, "metric_value")}
    assert count(MLMetric) == 0


def test_the_cli_import_names_the_field_and_exits_non_zero(runner, tmp_path):
    path = tmp_path / "nul.csv"
    path.write_text(HEADER + 'stok_seviye,1,40,2026-01-05T08:00:00Z,"{""x"": ""\\u0000""}"\n')
    result = runner.invoke(args=["ml", "import-metrics", str(path)])
    assert result.exit_code != 0
    assert "line 2, column extra_data" in result.output and "NUL" in result.output


def _insert_raw(values: list[float], metric_type: str = "stok_seviye") -> None:
    """Rows written straight by SQL, past every validation of this service."""
    for value in values:
        db.session.execute(text("INSERT INTO ml_metrics (metric_type, entity_id, metric_value, timestamp) "
                                "VALUES (:t, 1, :v, :ts)"), {"t": metric_type, "v": value,
                                                         # naive UTC, as the ORM stores it (SQLite compares text)
                                                         "ts": (utcnow() - timedelta(minutes=5)).replace(tzinfo=None)})
    db.session.commit()


def _bad_values(app) -> list[float]:
    # SQLite stores NaN as NULL (refused by NOT NULL); infinities it keeps.
    postgres = app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql")
    return [math.inf, -math.inf] + ([math.nan] if postgres else [])


def test_training_skips_non_finite_rows_already_in_the_database(app_ctx):
    ingest_observations(unlabelled_series("stok_seviye", 120) + unlabelled_series("dolum_sure", 120))
    bad = _bad_values(app_ctx)
    _insert_raw(bad)
    results = {r["metric_type"]: r for r in train_models(actor="test")}
    assert results["stok_seviye"]["status"] == "trained", results["stok_seviye"]
    assert results["stok_seviye"]["bad_rows"] == len(bad) and results["stok_seviye"]["samples"] == 120
    assert results["dolum_sure"]["status"] == "trained" and results["dolum_sure"]["bad_rows"] == 0

    # Through the job runner too: the job succeeds and its recorded result carries the count.
    run = run_job_now("train_models", "test", trigger=TRIGGER_CLI)
    assert run["status"] == "success", run
    assert {r["metric_type"]: r["bad_rows"] for r in run["result"]}["stok_seviye"] == len(bad)


def test_scan_steps_over_non_finite_rows_once_and_reports_them(app_ctx):
    ingest_observations(unlabelled_series("stok_seviye", 120))
    train_models(actor="test")
    bad = _bad_values(app_ctx)
    _insert_raw(bad)
    ingest_observations(unlabelled_series("stok_seviye", 10, seed=3))
    first = run_scan()
    entry = first["metric_types"]["stok_seviye"]
    assert "error" not in entry, entry
    assert entry["bad_rows"] == len(bad) and first["bad_rows"] == len(bad)
    assert entry["scanned"] == 130  # every usable row, before and after the bad ones
    # The watermark moved past them: the next scan neither re-reads nor re-reports them.
    second = run_scan()
    assert second["bad_rows"] == 0 and second["scanned"] == 0
    assert count(MLAlert, MLAlert.metric_value.in_([v for v in bad if not math.isnan(v)])) == 0


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_training_reads_labels_past_a_nul_in_a_legacy_json_column(app_ctx):
    # Before migration 0006 the legacy column was json (text kept as sent), which takes
    # "\u0000"; ->> then fails with "unsupported Unicode escape sequence" for the whole query.
    db.session.execute(text("ALTER TABLE ml_metrics ALTER COLUMN extra_data TYPE json USING extra_data::json"))
    db.session.commit()
    ingest_observations(unlabelled_series("stok_seviye", 120))
    db.session.execute(text("INSERT INTO ml_metrics (metric_type, entity_id, metric_value, timestamp, extra_data) "
                            "VALUES ('stok_seviye', 1, 20, now(), '{\"label\": \"anomaly\", \"x\": \"\\u0000\"}')"))
    db.session.commit()
    with pytest.raises(Exception, match="Unicode escape|cannot be converted"):
        db.session.execute(text("SELECT extra_data ->> 'label' FROM ml_metrics")).all()
    db.session.rollback()
    [result] = train_models("stok_seviye", actor="test")
    assert result["status"] == "trained", result
    assert result["samples"] == 121
