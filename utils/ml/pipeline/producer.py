"""Producer threads that hand their results to a consumer through a small queue.

A scan reads pages ahead (:class:`~utils.ml.pipeline.batch.BatchReader`)
and scores batches ahead (:class:`~utils.ml.pipeline.scan_scorer.BatchScorer`)
on a thread of its own: :func:`start_producer` starts it in a copy of the
caller's context (so the job's database bounds, ``utils.db_bounds``, hold
there too), the thread queues each result with :func:`put_polling`, the
consumer takes them in order with :func:`take_polling`, and
:func:`stop_producer` tells the thread to stop and waits for it, at most
``READ_TIMEOUT_MS``.

No call here blocks without a bound: each wait on the queue lasts at most
``_POLL_SECONDS`` before the stop events are looked at again.  So a stop
(the scan's ``stop`` event, which may be set from anywhere, or a thread's own
``halt``) is seen within that time by a consumer waiting for an item and by a
producer waiting for a place; the consumer then raises :class:`ReadStopped`,
the producer returns without queueing.  A producer that died without queueing
anything more is found out on the next poll and raised as an error, never
waited for forever.
"""
from __future__ import annotations

import contextvars
import queue
import threading
from typing import Any, Optional

# A page read on the reader's own connection may take at most this long
# (an index range scan of ML_SCAN_BATCH_SIZE rows takes milliseconds); the
# reader sets it as the page's statement_timeout, and stop_producer waits as
# long for a thread to end.
READ_TIMEOUT_MS = 60_000
_POLL_SECONDS = 0.05  # how often a blocked reader or scan looks at the stop event


class ReadStopped(Exception):
    """The scan's stop event was set while it read."""

    def __init__(self, metric_type: str) -> None:
        super().__init__(f"reading {metric_type} stopped")
        self.metric_type = metric_type


def take_polling(items: "queue.Queue[Any]", thread: Optional[threading.Thread], stop: threading.Event,
                 producer: str, metric_type: str) -> Any:
    """The next item a producer thread queued; :class:`ReadStopped` once ``stop`` is set.

    Looks at ``stop`` every ``_POLL_SECONDS``; a producer that ended without
    queueing anything more is an error, never a wait forever.
    """
    while True:
        if stop.is_set():
            raise ReadStopped(metric_type)
        try:
            return items.get(timeout=_POLL_SECONDS)
        except queue.Empty:
            if thread is None or not thread.is_alive():
                if not items.empty():
                    continue
                raise RuntimeError(f"{producer} ended without a result")


def put_polling(items: "queue.Queue[Any]", item: Any, *stops: threading.Event) -> bool:
    """Queue ``item``, waiting for a place; False (not queued) once any of ``stops`` is set."""
    while not any(event.is_set() for event in stops):
        try:
            items.put(item, timeout=_POLL_SECONDS)
            return True
        except queue.Full:
            continue
    return False


def start_producer(target: Any, args: tuple[Any, ...], name: str) -> threading.Thread:
    """Start ``target(*args)`` on a daemon thread in a copy of the caller's context.

    The copy carries the job's database bounds (``utils.db_bounds``) onto the thread.
    """
    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(target, *args), name=name, daemon=True)
    thread.start()
    return thread


def stop_producer(halt: threading.Event, thread: Optional[threading.Thread]) -> None:
    """Tell a producer thread to stop and wait for it, at most ``READ_TIMEOUT_MS``."""
    halt.set()
    if thread is not None:
        thread.join(READ_TIMEOUT_MS / 1000)
