"""The one error a channel raises, and how errors are written down."""
from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


class SendError(Exception):
    """A send that did not deliver.  ``permanent``: retrying cannot help (the row dies now)."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(one_line(message))
        self.permanent = permanent


def one_line(text: str, limit: int = 500) -> str:
    """``text`` on one line (control characters folded), at most ``limit`` characters."""
    return _CONTROL.sub(" ", text).strip()[:limit]


def describe(exc: BaseException) -> str:
    """``Class: message`` on one line."""
    return one_line(f"{exc.__class__.__name__}: {exc}")


def describe_first_line(exc: BaseException) -> str:
    """``Class: first line`` (database errors carry their SQL and parameters on later lines)."""
    lines = str(exc).strip().splitlines()
    return one_line(f"{exc.__class__.__name__}: {lines[0] if lines else ''}")
