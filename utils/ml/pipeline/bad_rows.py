"""Rows already in ``ml_metrics`` that no job can use, and how jobs step over them.

Ingest refuses non-finite values and NUL characters, but the table is shared
with the hotel app (and older versions of this service): a row written by SQL
may still hold ``NaN``/``Infinity`` in ``metric_value``, a NULL timestamp, or
a NUL in a legacy ``json`` (not ``jsonb``) ``extra_data``.  One such row must
not fail a whole metric type's training or scan for as long as it stays in
the window: jobs drop it, count it, and report the count (``bad_rows``) in
their result and in one ``bad_rows_skipped`` event per metric type and run.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Optional, Sequence

import numpy as np

from utils.ml import events

logger = logging.getLogger(__name__)


def finite_rows(rows: Sequence[Any], value_at: int, timestamp_at: Optional[int] = None) -> tuple[list[Any], int]:
    """``rows`` without those whose value (``row[value_at]``) is not a finite number or whose
    timestamp (``row[timestamp_at]``, when given) is missing; returns (kept, dropped count)."""
    kept = []
    for row in rows:
        value = row[value_at]
        if value is None or isinstance(value, bool) or not math.isfinite(float(value)):
            continue
        if timestamp_at is not None and row[timestamp_at] is None:
            continue
        kept.append(row)
    return kept, len(rows) - len(kept)


def finite_table(table: np.ndarray, value_column: int) -> tuple[np.ndarray, int]:
    """The rows of a float ``table`` whose ``value_column`` is finite, and how many were dropped."""
    ok = np.isfinite(table[:, value_column])
    dropped = int(table.shape[0] - int(ok.sum()))
    return (table if dropped == 0 else table[ok]), dropped


def label_of(extra_data: Any) -> Optional[str]:
    """``extra_data["label"]`` when it is a string (Python side, for rows SQL cannot convert)."""
    if isinstance(extra_data, dict):
        label = extra_data.get("label")
        return label if isinstance(label, str) else None
    return None


def report(job: str, metric_type: str, count: int) -> None:
    """One warning event for ``count`` skipped rows of ``metric_type`` (nothing when 0)."""
    if count:
        events.emit("bad_rows_skipped",
                    f"{job}: skipped {count} unusable ml_metrics rows of {metric_type} "
                    "(non-finite metric_value, missing timestamp or unreadable extra_data)",
                    level=logging.WARNING, job=job, metric_type=metric_type, count=count)
