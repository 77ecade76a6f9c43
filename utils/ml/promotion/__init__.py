"""Champion and challenger: the promotion gate, fingerprints, pins, comparison and drift.

* :mod:`.fingerprint` — the same data and settings never make a second version;
* :mod:`.gate` — the numbers and the verdict on a challenger against the champion;
* :mod:`.decide` — what training does with a new version (``--promote auto|never|always``);
* :mod:`.pins` — a manual activation or rollback holds its type until unpinned;
* :mod:`.compare` — champion and challenger side by side (API, dashboard);
* :mod:`.drift` — PSI and KS of recent features against the champion's training window,
  and the one retraining run a drift triggers.

Tables: :mod:`.models` (migration ``0011_promotion``).
"""
from __future__ import annotations

from flask import Flask

from utils.ml.promotion import models  # noqa: F401 - the ORM (and Alembic) must know the tables


def init_app(app: Flask) -> None:
    """Nothing to start: the tables are known once this package is imported."""
