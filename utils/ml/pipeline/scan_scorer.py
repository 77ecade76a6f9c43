"""A scan's scoring side: read a page, drop what is too old, score it causally, carry each entity's history.

:class:`BatchScorer` turns the page that starts after an id into a
:class:`ScoredBatch` (the rows kept, their scores and how the detector was
obtained).  The scan's loop (:mod:`utils.ml.pipeline.scan`) takes scored
batches in order and writes each one's alerts, incidents and watermark in
one transaction.

With ``ahead`` > 0 (``ML_SCAN_SCORE_AHEAD``, PostgreSQL) a thread scores the
following batches while the scan writes and commits the previous one, so
scoring (numpy and the forest, on one core) overlaps the writes and the
commit's wait for the database (on the other).  The thread has its own
application context, hence its own session: the history of an entity not
seen yet in the scan is read there, in a short transaction of its own; every
row it reads is at or below the scan's settled bound, so it is the same
history the scan's transaction would read.  Scored batches wait in a queue of
``ahead`` places.  If the scan asks for a batch that does not start where the
thread is (another scan moved the watermark), the thread is stopped and
started again there with a fresh history cache.  An error on the thread is
raised by the ``next`` that would have returned its batch; ``close()`` stops
the thread.  With ``ahead`` = 0 (SQLite, or the setting) ``next`` scores in
the caller's thread and transaction.

With ``threads`` > 1 (``ML_SCAN_SCORE_THREADS``) a batch scored by a causal
detector is split by entity into that many parts, scored at once on a small
pool: a row's score depends only on its own entity's rows, so the parts give
exactly the whole batch's scores, and the detector's numpy and forest work
runs mostly without the GIL, so the parts use both cores.  If a part fails,
the whole batch is scored again through the chain, which steps down and says
why as it always does, and the rest of the scan scores whole batches (one
warning, not one per batch).  Measured in memory on an otherwise idle machine
(batches of 20,000 rows of 1,000 entities with their history): two threads
score at 1.3-1.6x one thread's rate; while the other core is busy with
other work they gain nothing (a batch took 200 ms against 131 ms on one
thread), so ``ML_SCAN_SCORE_THREADS=1`` suits a host whose cores are taken.
"""
from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from utils.extensions import db
from utils.ml.pipeline.batch import BatchReader, ObservationBatch
from utils.ml.pipeline.history import History, HistoryCache, entity_codes
from utils.ml.pipeline.producer import put_polling, start_producer, stop_producer, take_polling
from utils.ml.pipeline.scoring import Scores, is_causal_model, score_causal

logger = logging.getLogger(__name__)

# Smaller batches are scored whole: splitting costs more than it saves.
MIN_SPLIT_ROWS = 2000


@dataclass
class ScoredBatch:
    """One page of the scan, scored: ``last_id`` None means nothing is left."""

    start: int  # the page holds ids above this
    last_id: Optional[int]  # the last id read (also past dropped rows); None: no more rows
    batch: ObservationBatch  # the rows kept (usable, within the training window)
    dropped: int = 0  # unusable rows (counted, never scored)
    old: int = 0  # rows older than the training window (stepped over)
    scores: Optional[Scores] = None  # None when no row was kept
    method: Optional[str] = None
    model_id: Optional[int] = None
    history_rows: int = field(default=0)


def recent_only(batch: ObservationBatch, cutoff: float) -> tuple[ObservationBatch, int]:
    """``batch`` without its observations timed before ``cutoff`` (epoch seconds), and how many those were."""
    recent = batch.timestamps >= cutoff
    old = int(recent.size - int(recent.sum()))
    if not old:
        return batch, 0
    return ObservationBatch(batch.values[recent], batch.entity_ids[recent], batch.observation_ids[recent],
                            has_entities=batch.has_entities, timestamps=batch.timestamps[recent]), old


class BatchScorer:
    """Scored batches of one metric type's scan, in order (see the module docstring)."""

    def __init__(self, metric_type: str, reader: BatchReader, cutoff: float, *, ahead: int = 0,
                 app: Any = None, threads: int = 1) -> None:
        self.metric_type, self.reader, self.cutoff = metric_type, reader, cutoff
        self.ahead = ahead if app is not None and reader.engine.dialect.name == "postgresql" else 0
        self.app = app
        self.chain: Any = None  # set by the scan once the chain exists (it calls history_for)
        self.history = HistoryCache(db.session, metric_type)
        self.history_rows = 0  # rows read from the database as history, over every cache
        self._after = 0  # the start of the batch being scored (what history may include)
        self._thread: Optional[threading.Thread] = None
        self._queue: "queue.Queue[Any]" = queue.Queue()
        self._halt = threading.Event()
        self._next: Optional[int] = None
        self.threads = max(1, int(threads))
        self.min_split = MIN_SPLIT_ROWS
        self._pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix=f"scan-score-{metric_type}") \
            if self.threads > 1 else None

    def __enter__(self) -> "BatchScorer":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def history_for(self, batch: ObservationBatch) -> History:
        """The chain's history loader: each entity's rows before the batch being scored."""
        return self.history.for_batch(entity_codes(batch.entity_ids), upto_id=self._after)

    def score_page(self, after: int) -> ScoredBatch:
        """Read and score the page after ``after`` in this thread."""
        page = self.reader.fetch(after)
        if page.last_read_id is None:
            return ScoredBatch(after, None, page)
        batch, old = recent_only(page, self.cutoff)
        item = ScoredBatch(after, page.last_read_id, batch, page.dropped, old)
        if len(batch):  # a page of only unusable or old rows still moves the watermark past them
            self._after = after
            loaded = self.history.loaded_rows
            item.scores = self._score(batch)
            self.history.advance(entity_codes(batch.entity_ids), batch.timestamps, batch.values)
            item.history_rows = self.history.loaded_rows - loaded
        item.method, item.model_id = self.chain.method, self.chain.model_id
        return item

    def _score(self, batch: ObservationBatch) -> Scores:
        """The batch's scores, in parts on the pool when it pays (see the module docstring)."""
        model = self.chain.model
        if self._pool is None or len(batch) < self.min_split or not is_causal_model(model):
            return self.chain.score(batch)
        history = self.history_for(batch)
        codes, history_codes = entity_codes(batch.entity_ids), history[0]
        parts = []
        for k in range(self.threads):
            rows = np.flatnonzero(codes % self.threads == k)
            mine = history_codes % self.threads == k
            part = ObservationBatch(batch.values[rows], batch.entity_ids[rows], batch.observation_ids[rows],
                                    has_entities=batch.has_entities, timestamps=batch.timestamps[rows])
            if rows.size:  # every entity may fall on one side
                parts.append((rows, part, (history[0][mine], history[1][mine], history[2][mine])))
        try:
            futures = [self._pool.submit(score_causal, model, part, h) for _rows, part, h in parts[1:]]
            results = [score_causal(model, parts[0][1], parts[0][2])] + [f.result() for f in futures]
        except Exception:  # the chain scores the batch again, steps down and records why
            # Once per scan: later batches are scored whole, so a failure is neither logged nor paid twice.
            logger.warning("scan of %s: scoring in parts failed; scoring whole batches from here", self.metric_type,
                           exc_info=True)
            self._pool.shutdown(wait=False)
            self._pool = None
            return self.chain.score(batch)
        merged = Scores(np.empty(len(batch)), np.empty(len(batch), dtype=bool), np.empty(len(batch)),
                        np.empty(len(batch)), [None] * len(batch))
        for (rows, _part, _h), scores in zip(parts, results):
            merged.score[rows], merged.is_anomaly[rows] = scores.score, scores.is_anomaly
            merged.threshold[rows], merged.expected[rows] = scores.threshold, scores.expected
            for i, severity in zip(rows.tolist(), scores.severity):
                merged.severity[i] = severity
        return merged

    def next(self, after: int) -> ScoredBatch:
        """The scored page after ``after`` (from the thread when scoring ahead)."""
        if not self.ahead:
            item = self.score_page(after)
        else:
            if self._thread is None or after != self._next:
                self._start(after)
            item = self._take()
            if isinstance(item, BaseException):
                self._next = None  # the next call starts a fresh thread
                raise item
            if item.start != after:  # cannot happen: batches are queued in order from where the thread started
                raise RuntimeError(f"scan scorer out of step: batch after {item.start}, wanted after {after}")
            self._next = item.last_id
        self.history_rows += item.history_rows
        return item

    def close(self) -> None:
        """Stop the scoring thread (if any) and wait for it to let go of its session."""
        self._stop_thread()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _stop_thread(self) -> None:
        thread, self._thread = self._thread, None
        stop_producer(self._halt, thread)

    def _start(self, after: int) -> None:
        self._stop_thread()
        if self._next is not None or self.history.loaded_rows or len(self.history.entity):
            # Restarted elsewhere (another scan moved the watermark): what this cache holds may
            # not be the history of the new start, so it is read again.
            self.history = HistoryCache(db.session, self.metric_type)
        self._halt = threading.Event()
        self._queue = queue.Queue(maxsize=self.ahead)
        self._thread = start_producer(self._produce, (after, self._queue, self._halt),
                                      f"scan-scorer-{self.metric_type}")

    def _take(self) -> Any:
        return take_polling(self._queue, self._thread, self.reader.stop, f"scan scorer of {self.metric_type}",
                            self.metric_type)

    def _produce(self, after: int, batches: "queue.Queue[Any]", halt: threading.Event) -> None:
        """The thread: scored batches from ``after`` on, ending with the empty one (or the error that ended it)."""
        def put(item: Any) -> bool:
            return put_polling(batches, item, halt, self.reader.stop)

        with self.app.app_context():
            try:
                while not (halt.is_set() or self.reader.stop.is_set()):
                    try:
                        item = self.score_page(after)
                    finally:
                        db.session.rollback()  # a history read's transaction ends with its batch
                    if not put(item) or item.last_id is None:
                        return
                    after = item.last_id
            except BaseException as exc:  # handed to the scan, which raises it where the batch was wanted
                put(exc)
            finally:
                db.session.remove()

