"""The scan's scorer: scoring ahead on a thread gives exactly what scoring in turn gives.

PostgreSQL (the thread exists only there), a real migrated database, the
real trainer and detector on the small demo hotel.
"""
from __future__ import annotations

import threading

import numpy as np
import psycopg2
import pytest
import sqlalchemy as sa

from tests.pipeline_helpers import fresh_spikes, small_hotel
from utils.extensions import db
from utils.ml.anomaly_detector import AnomalyDetector
from utils.ml.model_trainer import train_models
from utils.ml.pipeline.batch import BatchReader
from utils.ml.pipeline.scan import run_scan
from utils.ml.pipeline.scan_scorer import BatchScorer
from utils.models import MLAlert

PAGE = 100


@pytest.fixture
def hotel(pg_app_ctx):
    """The small demo hotel, trained, with new readings the causal detector must flag."""
    small_hotel()
    train_models()
    fresh_spikes()
    return pg_app_ctx


def _threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(("scan-scorer-", "scan-reader-"))]


def _alerts() -> dict[int, tuple[float, str, str]]:
    rows = db.session.execute(sa.select(MLAlert.observation_id, MLAlert.anomaly_score, MLAlert.severity,
                                        MLAlert.method)).all()
    db.session.rollback()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def _forget_scans() -> None:
    db.session.execute(sa.text("DELETE FROM ml_alerts"))
    db.session.execute(sa.text("DELETE FROM ml_incidents"))
    db.session.execute(sa.text("DELETE FROM ml_scan_watermarks"))
    db.session.commit()


def test_scoring_ahead_raises_the_same_alerts_as_scoring_in_turn(hotel):
    hotel.config.update(ML_SCAN_BATCH_SIZE=PAGE, ML_SCAN_READ_AHEAD=0, ML_SCAN_SCORE_AHEAD=0)
    in_turn = run_scan()
    expected = _alerts()
    assert expected and in_turn["scanned"] > 2000
    for read_ahead, score_ahead in ((0, 1), (2, 1), (2, 3)):
        _forget_scans()
        hotel.config.update(ML_SCAN_READ_AHEAD=read_ahead, ML_SCAN_SCORE_AHEAD=score_ahead)
        ahead = run_scan()
        assert ahead["scanned"] == in_turn["scanned"] and ahead["alerts"] == in_turn["alerts"]
        for name, summary in in_turn["metric_types"].items():
            assert ahead["metric_types"][name]["history_rows"] == summary["history_rows"]
            assert ahead["metric_types"][name]["batches"] == summary["batches"]
        assert _alerts() == expected, (read_ahead, score_ahead)
        assert _threads() == []  # every thread ended with its scan


def _scorer(metric_type: str, ahead: int, app, threads: int = 1) -> BatchScorer:
    upper = db.session.execute(sa.text("SELECT max(id) FROM ml_metrics WHERE metric_type = :t"),
                               {"t": metric_type}).scalar()
    db.session.rollback()
    reader = BatchReader(metric_type, int(upper), PAGE, read_ahead=0)
    scorer = BatchScorer(metric_type, reader, cutoff=0.0, ahead=ahead, app=app, threads=threads)
    scorer.chain = AnomalyDetector(db).chain(metric_type, history_loader=scorer.history_for)
    scorer.chain.ensure_loaded()
    return scorer


def test_the_scorer_restarts_where_the_watermark_is_with_a_fresh_history(hotel):
    with _scorer("stok_seviye", 2, hotel) as ahead:
        first = ahead.next(0)
        ahead.next(first.last_id)  # the thread is now scoring batches beyond this one
        # Another scan committed several batches meanwhile: the next batch starts further on.
        jump = int(first.batch.observation_ids[-1]) + 5 * PAGE
        moved = ahead.next(jump)
    with _scorer("stok_seviye", 0, hotel) as in_turn:
        fresh = in_turn.next(jump)  # a new scan from there: history read from the database
    assert moved.start == fresh.start == jump
    np.testing.assert_array_equal(moved.batch.observation_ids, fresh.batch.observation_ids)
    np.testing.assert_array_equal(moved.scores.score, fresh.scores.score)
    np.testing.assert_array_equal(moved.scores.is_anomaly, fresh.scores.is_anomaly)
    assert moved.history_rows == fresh.history_rows > 0
    assert _threads() == []


def test_an_error_on_the_scoring_thread_reaches_the_scan_and_the_thread_ends(hotel):
    with _scorer("stok_seviye", 1, hotel) as scorer:
        scorer.next(0)
        # The scorer's history reads run on its own session: a table it reads going away is a
        # real database error on that thread, raised where its batch is wanted.
        db.session.execute(sa.text("ALTER TABLE ml_metrics RENAME TO ml_metrics_gone"))
        db.session.commit()
        try:
            # The page is read through the DBAPI cursor: psycopg2's own error, as on the reader thread.
            with pytest.raises((sa.exc.ProgrammingError, psycopg2.errors.UndefinedTable), match="ml_metrics"):
                after = 0
                for _ in range(1000):
                    after = scorer.next(after).last_id
        finally:
            db.session.rollback()
            db.session.execute(sa.text("ALTER TABLE ml_metrics_gone RENAME TO ml_metrics"))
            db.session.commit()
    assert _threads() == []


def test_the_scoring_thread_keeps_the_jobs_database_bounds(hotel):
    from utils import db_bounds

    seen = []
    with _scorer("stok_seviye", 1, hotel) as scorer:
        chain_score = scorer.chain.score

        def score(batch):  # records the profile the thread's database calls would run under
            seen.append((threading.current_thread().name, db_bounds._profile.get()))
            return chain_score(batch)

        scorer.chain.score = score
        with db_bounds.bounds_profile(db_bounds.JOB):
            scorer.next(0)
    assert seen and all(name.startswith("scan-scorer-") and profile == db_bounds.JOB for name, profile in seen)


def test_a_batch_split_by_entity_over_threads_scores_exactly_as_whole(hotel):
    def every_batch(threads: int) -> list:
        with _scorer("stok_seviye", 0, hotel, threads=threads) as scorer:
            scorer.min_split = 10  # split every batch of the small hotel
            out, after = [], 0
            while True:
                item = scorer.next(after)
                if item.last_id is None:
                    return out
                out.append(item)
                after = item.last_id

    whole, split = every_batch(1), every_batch(3)
    assert len(whole) == len(split) > 3
    flagged = 0
    for a, b in zip(whole, split):
        np.testing.assert_array_equal(a.batch.observation_ids, b.batch.observation_ids)
        for name in ("score", "is_anomaly", "threshold", "expected"):
            np.testing.assert_array_equal(getattr(a.scores, name), getattr(b.scores, name))
        assert a.scores.severity == b.scores.severity
        flagged += int(a.scores.is_anomaly.sum())
    assert flagged > 0  # the comparison covers alerts, not only quiet rows
    assert [t for t in threading.enumerate() if t.name.startswith("scan-score-")] == []
