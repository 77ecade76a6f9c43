"""CSV import of observations: ``flask ml import-metrics FILE.csv``, all or nothing.

A header row names the columns (``metric_type, entity_id, metric_value,
timestamp[, extra_data]``, in any order); each cell is turned into what
:class:`~utils.ml.pipeline.observations.ObservationIn` validates, every row is
checked before any is written, and problems are reported as ``{"line",
"column", "rule"}`` in an
:class:`~utils.ml.pipeline.observations.ObservationValidationError`.

:mod:`utils.ml.pipeline.observations` re-exports :func:`import_csv`, its
earlier home.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Iterator, Optional

from pydantic import ValidationError

from utils.ml.pipeline.observations import (
    CSV_COLUMNS,
    ObservationIn,
    ObservationValidationError,
    _field,
    _rule,
    bulk_insert,
)
from utils.ml.validation import NUL_RULE

_REQUIRED_CSV_COLUMNS = ("metric_type", "metric_value", "timestamp")


def _csv_value(column: str, raw: Optional[str]) -> Any:
    """Turn a CSV cell into what :class:`ObservationIn` validates; raise ValueError with the rule."""
    text = (raw or "").strip()
    # PostgreSQL text cannot hold U+0000: say so, rather than a parser's "control character".
    if "\x00" in text:
        raise ValueError(NUL_RULE)
    if column == "entity_id":
        if text == "":
            return None
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"must be a whole number >= 0 or empty (got {text!r})") from None
    if column == "metric_value":
        if text == "":
            raise ValueError("is required")
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"must be a number (got {text!r})") from None
        if not math.isfinite(number):
            raise ValueError(f"must be a finite number (got {text!r})")
        return number
    if column == "extra_data":
        if text == "":
            return None
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"must be a JSON object ({exc.msg})") from None
        if not isinstance(value, dict):
            raise ValueError("must be a JSON object")
        return value
    if text == "" and column in _REQUIRED_CSV_COLUMNS:
        raise ValueError("is required")
    return text


def _read_csv(path: Path) -> Iterator[tuple[int, dict[str, Optional[str]]]]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [c for c in _REQUIRED_CSV_COLUMNS if c not in header]
        unknown = [c for c in header if c not in CSV_COLUMNS]
        if missing or unknown:
            errors = [{"line": 1, "column": c, "rule": "required column is missing from the header"} for c in missing]
            errors += [{"line": 1, "column": c, "rule": f"unknown column (allowed: {', '.join(CSV_COLUMNS)})"}
                       for c in unknown]
            raise ObservationValidationError(errors)
        for record in reader:
            # line_num is the physical line of the record's end, right for one-line records.
            yield reader.line_num, record


def import_csv(path: str | Path, *, max_errors: int = 100) -> int:
    """Import observations from a CSV file with a header row; return how many were written.

    Columns: ``metric_type, entity_id, metric_value, timestamp[, extra_data]``
    (``extra_data`` a JSON object).  Every row is validated first; if any is
    bad, :class:`ObservationValidationError` lists up to ``max_errors``
    problems as ``{"line", "column", "rule"}`` and nothing is written.
    """
    path = Path(path)
    if not path.is_file():
        raise ObservationValidationError([{"line": None, "column": None, "rule": f"file {str(path)!r} does not exist"}],
                                         message=f"{path}: no such file")
    rows: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    try:
        for line, record in _read_csv(path):
            if None in record:  # DictReader files surplus cells under the key None
                errors.append({"line": line, "column": None, "rule": "more cells than header columns"})
                continue
            parsed: dict[str, Any] = {}
            row_ok = True
            for column in CSV_COLUMNS:
                if column not in record:
                    continue
                try:
                    parsed[column] = _csv_value(column, record[column])
                except ValueError as exc:
                    errors.append({"line": line, "column": column, "rule": str(exc)})
                    row_ok = False
            if row_ok:
                try:
                    rows.append(ObservationIn.model_validate(parsed).to_row())
                except ValidationError as exc:
                    errors.extend({"line": line, "column": _field(e), "rule": _rule(e)} for e in exc.errors())
            if len(errors) >= max_errors:
                break
    except UnicodeDecodeError as exc:
        raise ObservationValidationError([{"line": None, "column": None, "rule": f"file is not UTF-8 ({exc.reason})"}])
    except csv.Error as exc:
        raise ObservationValidationError([{"line": None, "column": None, "rule": f"not a valid CSV file ({exc})"}])
    if errors:
        raise ObservationValidationError(errors[:max_errors])
    if not rows:
        raise ObservationValidationError([{"line": None, "column": None, "rule": "the file has no data rows"}],
                                         message=f"{path}: the file has no data rows")
    return bulk_insert(rows)
