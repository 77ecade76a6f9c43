"""The one error type for bad input, and the one check of model-type and metric-type names.

Every refusal of bad input in the ML subsystem is an :class:`InvalidInput`
(or a thin subclass): it names the ``field`` and the ``rule`` it broke, and
``errors`` lists every broken rule as ``{"field", "rule"}`` dicts (batch
errors add ``index``, CSV errors ``line`` and ``column``).  The API answers
it with 400 and that list, the CLI with one line; nothing was changed.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Optional

from utils.models import METRIC_TYPE_PATTERN, MODEL_TYPE_PATTERN

# ml_* ids are 32-bit INTEGERs: a larger id cannot exist (and PostgreSQL would
# reject it as out of range rather than answer "not found").
MAX_ROW_ID = 2**31 - 1

_NAME_RULES = {
    "model_type": re.compile(MODEL_TYPE_PATTERN),
    "metric_type": re.compile(METRIC_TYPE_PATTERN),
}


class InvalidInput(ValueError):
    """Bad input: ``field`` names what, ``rule`` says which rule it broke; nothing was changed.

    ``errors`` holds every broken rule (at least this one) as dicts with
    ``field`` and ``rule``; ``message`` overrides the one-line summary.
    """

    def __init__(self, field: str, rule: str, *, errors: Optional[list[dict[str, Any]]] = None,
                 message: Optional[str] = None) -> None:
        super().__init__(message or f"{field}: {rule}")
        self.field = field
        self.rule = rule
        self.errors = errors if errors is not None else [{"field": field, "rule": rule}]


def check_name(field: str, value: Any, error: type[InvalidInput] = InvalidInput) -> str:
    """``value`` if it is a valid ``model_type`` or ``metric_type`` name, else ``error(field, rule)``.

    The one check of these names; pydantic models declare the same pattern
    (``METRIC_TYPE_PATTERN``) so the OpenAPI document shows it.
    """
    rule = _NAME_RULES[field]
    if not isinstance(value, str) or not rule.fullmatch(value):
        raise error(field, f"must match {rule.pattern} (got {value!r})")
    return value


def check_whole_number(field: str, value: Any, minimum: int, maximum: Optional[int] = None,
                       error: type[InvalidInput] = InvalidInput) -> int:
    """``value`` if it is an int (not a bool) in ``[minimum, maximum]``, else ``error(field, rule)``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or \
            (maximum is not None and value > maximum):
        bounds = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
        raise error(field, f"must be a whole number {bounds} (got {value!r})")
    return value


def check_score(field: str, value: Any, error: type[InvalidInput] = InvalidInput) -> Optional[float]:
    """``value`` as a float in [0, 1], or None for None; else ``error(field, rule)``."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise error(field, f"must be a number between 0 and 1 or null (got {value!r})") from None
    if not 0.0 <= number <= 1.0:
        raise error(field, f"must be between 0 and 1 (got {number})")
    return number


# Text PostgreSQL can store: anything but U+0000 (neither text nor jsonb can hold it).
NUL_FREE_PATTERN = r"^[^\x00]*$"
NUL_RULE = "must not contain the NUL character (\\u0000)"


def rule_text(error: Mapping[str, Any], unknown: str = "unknown field") -> str:
    """The rule a pydantic error names, in this service's words (without pydantic's prefixes).

    ``unknown`` is what an unexpected field is called (a query says
    "unknown parameter"; a CSV lists the columns it allows).
    """
    message = str(error.get("msg", "invalid"))
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix):]
    if error.get("type") == "extra_forbidden":
        return unknown
    if error.get("type") == "string_pattern_mismatch":
        pattern = (error.get("ctx") or {}).get("pattern")
        if pattern == NUL_FREE_PATTERN:
            return NUL_RULE
        return f"must match {pattern}" if pattern else message
    return message
