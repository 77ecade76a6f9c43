"""ML_RECORD_LOAD_TIME: the scans' model_load_time rows, on by default (the contract), off for a shared database."""
from __future__ import annotations

import pytest

from tests import dbutil
from tests.ml_helpers import sql as rows


@pytest.mark.parametrize("setting, expected", [(None, 1), (False, 0)])
def test_a_scan_records_its_load_time_unless_switched_off(database_url, models_dir, setting, expected):
    overrides = {} if setting is None else {"ML_RECORD_LOAD_TIME": setting}
    app = dbutil.make_app(database_url, models_dir, **overrides)
    try:
        rows(database_url, "INSERT INTO ml_metrics (metric_type, entity_id, metric_value) VALUES "
                           + ", ".join(f"('stok_seviye', {k % 3}, {40 + k % 5})" for k in range(30)))
        with app.app_context():
            from utils.ml.pipeline.scan import run_scan

            assert run_scan("stok_seviye")["scanned"] == 30
    finally:
        dbutil.dispose(app)
    assert rows(database_url, "SELECT count(*) FROM ml_metrics WHERE metric_type = 'model_load_time'") == [(expected,)]
