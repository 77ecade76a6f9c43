"""The scan's batch reader: reading ahead on a second thread gives exactly what reading in turn gives.

PostgreSQL only where the thread exists (SQLite always reads in the scan's
transaction); everything runs against a real migrated database, small data.
"""
from __future__ import annotations

import struct
import threading
import time

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from tests import dbutil
from tests.pipeline_helpers import fresh_spikes, small_hotel
from utils.extensions import db
from utils.ml.model_trainer import train_models
from utils.ml.pipeline.batch import BatchReader, ObservationBatch, decode_packed
from utils.ml.pipeline.producer import ReadStopped
from utils.ml.pipeline.scan import run_scan
from utils.models import MLAlert

PAGE = 50


def _insert(metric_type: str, count: int, start: int = 0) -> None:
    """``count`` observations; every 7th has no entity, values include negatives and fractions."""
    db.session.execute(sa.text(
        "INSERT INTO ml_metrics (metric_type, entity_id, metric_value, timestamp) "
        "SELECT :t, CASE WHEN g % 7 = 0 THEN NULL ELSE g % 13 END, (g - 40) * 1.25, now() "
        "FROM generate_series(:a, :b) AS g"), {"t": metric_type, "a": start + 1, "b": start + count})
    db.session.commit()


def _upper(metric_type: str) -> int:
    value = db.session.execute(sa.text("SELECT max(id) FROM ml_metrics WHERE metric_type = :t"),
                               {"t": metric_type}).scalar()
    db.session.rollback()
    return int(value)


def _pages(reader: BatchReader) -> list[ObservationBatch]:
    """Every page, as the scan asks for them: each starts after the last id of the one before."""
    pages, after = [], 0
    while True:
        page = reader.fetch(after)
        pages.append(page)
        if len(page) == 0 or int(page.observation_ids[-1]) >= reader.upper:
            return pages
        after = int(page.observation_ids[-1])


def _same(left: list[ObservationBatch], right: list[ObservationBatch]) -> None:
    assert [len(p) for p in left] == [len(p) for p in right]
    for a, b in zip(left, right):
        np.testing.assert_array_equal(a.observation_ids, b.observation_ids)
        np.testing.assert_array_equal(a.values, b.values)
        np.testing.assert_array_equal(a.entity_ids, b.entity_ids)  # NaN == NaN here
        assert a.has_entities and b.has_entities


def _reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("scan-reader-")]


def test_read_ahead_gives_the_same_pages_as_reading_in_turn(pg_app_ctx):
    _insert("stok_seviye", 333)
    _insert("tuketim_miktar", 120, start=1000)  # interleaved ids of another type stay out
    _insert("stok_seviye", 40, start=2000)
    upper = _upper("stok_seviye")
    with BatchReader("stok_seviye", upper, PAGE, read_ahead=0) as in_turn:
        expected = _pages(in_turn)
    with BatchReader("stok_seviye", upper, PAGE, read_ahead=2) as ahead:
        got = _pages(ahead)
    _same(expected, got)
    assert sum(len(p) for p in got) == 373 and len(got[-1]) == 23  # 7 full pages and the rest

    # The binary COPY decoding equals a plain SELECT of the same rows.
    rows = db.session.execute(sa.text(
        "SELECT id, entity_id, metric_value FROM ml_metrics WHERE metric_type = 'stok_seviye' ORDER BY id")).all()
    flat = np.concatenate([p.observation_ids for p in got])
    assert flat.tolist() == [r[0] for r in rows]
    assert np.concatenate([p.values for p in got]).tolist() == [r[2] for r in rows]
    entities = np.concatenate([p.entity_ids for p in got])
    assert [None if np.isnan(e) else int(e) for e in entities] == [r[1] for r in rows]
    assert _reader_threads() == []


def test_the_reader_restarts_where_the_watermark_is(pg_app_ctx):
    _insert("stok_seviye", 300)
    upper = _upper("stok_seviye")
    with BatchReader("stok_seviye", upper, PAGE, read_ahead=2) as ahead, \
            BatchReader("stok_seviye", upper, PAGE, read_ahead=0) as in_turn:
        first = ahead.fetch(0)
        # Another scan moved the watermark past several pages: this one must not serve its stale queue.
        jump = int(first.observation_ids[-1]) + 123
        _same([in_turn.fetch(jump)], [ahead.fetch(jump)])


def test_whole_scans_read_ahead_and_in_turn_raise_the_same_alerts(pg_app_ctx):
    small_hotel()
    train_models()
    fresh_spikes()  # the causal detector judges new data: a few readings it must flag

    def alerts() -> dict[int, tuple[float, str]]:
        rows = db.session.execute(sa.select(MLAlert.observation_id, MLAlert.anomaly_score, MLAlert.severity)).all()
        db.session.rollback()
        return {r[0]: (r[1], r[2]) for r in rows}

    pg_app_ctx.config.update(ML_SCAN_READ_AHEAD=0, ML_SCAN_BATCH_SIZE=100)
    first = run_scan()
    in_turn = alerts()
    db.session.execute(sa.text("DELETE FROM ml_alerts"))
    db.session.execute(sa.text("DELETE FROM ml_scan_watermarks"))
    db.session.commit()
    pg_app_ctx.config.update(ML_SCAN_READ_AHEAD=2)
    second = run_scan()
    assert second["scanned"] == first["scanned"] > 2000
    assert in_turn and alerts() == in_turn
    assert _reader_threads() == []


def test_an_unusable_row_is_dropped_and_counted_in_its_own_page(pg_app_ctx):
    _insert("stok_seviye", 200)
    bad = db.session.execute(sa.text(
        "UPDATE ml_metrics SET metric_value = 'NaN' WHERE id = (SELECT id FROM ml_metrics "
        "WHERE metric_type = 'stok_seviye' ORDER BY id OFFSET 120 LIMIT 1) RETURNING id")).scalar()
    db.session.commit()
    upper = _upper("stok_seviye")
    for read_ahead in (0, 2):  # the same page either way
        with BatchReader("stok_seviye", upper, PAGE, read_ahead=read_ahead) as reader:
            page1 = reader.fetch(0)
            page2 = reader.fetch(page1.last_read_id)
            assert page1.dropped == page2.dropped == 0 and page2.last_read_id < bad
            page3 = reader.fetch(page2.last_read_id)
            # The NaN row is not scored, is counted, and the page still ends past it.
            assert page3.dropped == 1 and bad not in set(page3.observation_ids.tolist())
            assert len(page3) == PAGE - 1 and page3.last_read_id > bad
    assert _reader_threads() == []


def test_a_database_error_on_the_reader_thread_reaches_the_scan(pg_template):
    name = dbutil.create_pg_database(template=pg_template)
    engine = sa.create_engine(dbutil.pg_url(name), poolclass=sa.pool.NullPool)
    try:
        with Session(engine) as session:
            reader = BatchReader("stok_seviye", 10_000, PAGE, read_ahead=2, session=session)
            dbutil.drop_pg_database(name)  # gone before the thread connects
            with pytest.raises(sa.exc.OperationalError):
                reader.fetch(0)
            reader.close()
    finally:
        engine.dispose()
        dbutil.drop_pg_database(name)
    assert _reader_threads() == []


def _settle(reader: BatchReader, quiet: float = 0.4, limit: float = 10.0) -> int:
    """Wait until the thread has read nothing new for ``quiet`` seconds; return its page count."""
    deadline = time.monotonic() + limit
    seen, since = reader.pages_read, time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        if reader.pages_read != seen:
            seen, since = reader.pages_read, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return seen
    raise AssertionError("the reader kept reading")


def test_read_ahead_is_bounded_by_its_queue(pg_app_ctx):
    _insert("stok_seviye", 20 * PAGE)
    upper = _upper("stok_seviye")
    for read_ahead in (1, 3):
        with BatchReader("stok_seviye", upper, PAGE, read_ahead=read_ahead) as reader:
            page = reader.fetch(0)
            # The page in hand, read_ahead queued and one waiting for a place: never more.
            assert _settle(reader) == 1 + read_ahead + 1
            reader.fetch(int(page.observation_ids[-1]))
            assert _settle(reader) == 2 + read_ahead + 1


def test_stop_and_interrupt_end_the_reader_promptly(pg_app_ctx):
    _insert("stok_seviye", 20 * PAGE)
    upper = _upper("stok_seviye")
    stop = threading.Event()
    reader = BatchReader("stok_seviye", upper, PAGE, read_ahead=2, stop=stop)
    reader.fetch(0)
    [thread] = _reader_threads()
    started = time.monotonic()
    stop.set()  # e.g. the job was told to stop: the thread leaves at its next look
    thread.join(2.0)
    assert not thread.is_alive() and time.monotonic() - started < 1.0
    with pytest.raises(ReadStopped, match="reading stok_seviye stopped") as stopped:
        reader.fetch(PAGE)
    assert stopped.value.metric_type == "stok_seviye"
    reader.close()

    # An interrupt while scoring: leaving the block ends the thread before the exception goes on.
    with pytest.raises(KeyboardInterrupt):
        with BatchReader("stok_seviye", upper, PAGE, read_ahead=2) as reader:
            reader.fetch(0)
            assert len(_reader_threads()) == 1
            raise KeyboardInterrupt
    assert _reader_threads() == []
    in_use = db.engine.pool.checkedout()
    assert in_use <= 1  # the session's own connection at most: the reader gave its back


def test_sqlite_reads_in_the_scans_transaction(sqlite_template, models_dir, tmp_path):
    application = dbutil.make_app(dbutil.copy_sqlite(sqlite_template, tmp_path / "t.sqlite3"), models_dir)
    with application.app_context():
        _sqlite_pages()
    dbutil.dispose(application)


def _sqlite_pages() -> None:
    for i in range(120):
        db.session.execute(sa.text("INSERT INTO ml_metrics (metric_type, entity_id, metric_value, timestamp) "
                                   "VALUES ('stok_seviye', :e, :v, CURRENT_TIMESTAMP)"),
                           {"e": None if i % 7 == 0 else i % 5, "v": i * 0.5})
    db.session.commit()
    with BatchReader("stok_seviye", _upper("stok_seviye"), PAGE, read_ahead=2) as reader:
        assert reader.read_ahead == 0
        pages = _pages(reader)
    assert [len(p) for p in pages] == [50, 50, 20]
    assert np.isnan(pages[0].entity_ids[0]) and pages[2].values[-1] == 59.5
    assert _reader_threads() == []


def test_decode_packed_refuses_what_is_not_its_layout():
    with pytest.raises(ValueError, match="whole rows"):
        decode_packed(b"not 32-byte rows")
    assert len(decode_packed(None)) == 0 and decode_packed(None).last_read_id is None
    row = (7).to_bytes(8, "big") + struct.pack(">ddd", float("nan"), 2.5, 1.7e9)
    page = decode_packed(row + (9).to_bytes(8, "big") + struct.pack(">ddd", 1.0, float("nan"), 1.7e9))
    # The second row's value is unusable: dropped and counted, yet the page reached id 9.
    assert list(page.observation_ids) == [7] and page.dropped == 1 and page.last_read_id == 9
    assert np.isnan(page.entity_ids[0]) and page.values[0] == 2.5 and page.timestamps[0] == 1.7e9
