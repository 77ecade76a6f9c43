"""Logs stay bounded and parseable: repeated errors are rate-limited, Python warnings are JSON
lines, and scoring a legacy model does not warn at all (the cause, not the symptom, is fixed)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings

import numpy as np
from sklearn.ensemble import IsolationForest

from tests.procutil import ROOT
from utils.ml.pipeline.scoring import score_with_model


def _run(code: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr.splitlines()


def test_python_warnings_are_json_lines():
    lines = _run("""
        import warnings
        from utils.logging_setup import configure_logging
        configure_logging("json", "info")
        warnings.warn("a library says something", UserWarning)
    """)
    records = [json.loads(line) for line in lines]  # every line is JSON, nothing raw
    assert [r["logger"] for r in records] == ["py.warnings"]
    assert "a library says something" in records[0]["msg"]


def test_repeated_errors_are_rate_limited_and_the_count_is_reported():
    lines = _run("""
        import logging, time
        from utils.logging_setup import configure_logging
        configure_logging("json", "info", repeat_window=0.5)
        log = logging.getLogger("app")
        for i in range(1000):
            log.warning("database unavailable in %s: %s", f"/api/ml/models/{i}", "OperationalError")
        log.info("info lines are never dropped %s", 1)
        log.info("info lines are never dropped %s", 2)
        time.sleep(0.6)
        log.warning("database unavailable in %s: %s", "/api/ml/alerts", "OperationalError")
        log.error("another kind %s", 1)
    """)
    records = [json.loads(line) for line in lines]
    unavailable = [r for r in records if r["msg"].startswith("database unavailable")]
    assert len(unavailable) == 4  # three in the first window, one after it...
    assert unavailable[-1]["suppressed"] == 997  # ...which says how many were dropped
    assert "997 more like this suppressed" in unavailable[-1]["msg"]
    assert sum(r["msg"].startswith("info lines") for r in records) == 2
    assert any(r["msg"] == "another kind 1" for r in records)


def test_scoring_a_legacy_model_fitted_on_a_dataframe_does_not_warn():
    # What the original app stored: an estimator fitted on a one-column DataFrame
    # (feature_names_in_ set), scored here with arrays.
    values = np.random.default_rng(1).normal(size=(2000, 1))
    model = IsolationForest(n_estimators=100, random_state=0).fit(values)
    model.feature_names_in_ = np.array(["metric_value"], dtype=object)
    matrix = np.column_stack([np.zeros(len(values)), values[:, 0]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(20):
            scores = score_with_model(model, matrix)
    assert [str(w.message) for w in caught] == []
    assert scores.score.shape == (2000,)
