"""``flask ml evaluate``: the walk-forward evaluation (``python -m utils.ml.evaluation``) from the app's CLI.

It trains each detector only on the past window, scores the next day,
retrains on the production cadence (daily), and prints event-level
precision / recall per anomaly kind, false alerts per entity-day and
detection delay, side by side for the model path of before (``a_model``),
the pooled Z-score (``b_zscore``), a per-entity rolling robust Z
(``c_rolling_z``), a per-entity Isolation Forest (``d_entity_iforest``) and
the service's detector (``e_new``, what ``flask ml train`` now saves), with
the service's settings (``ML_CONTAMINATION``, ``ML_FALSE_ALERTS_PER_ENTITY_DAY``,
``ML_TRAIN_WINDOW_DAYS``).  Data: the simulator (``--seed``, repeatable) or
a labelled CSV (``--observations`` with ``--labels``).  No database is used.
"""
from __future__ import annotations

from typing import Optional

import click

from utils.cli import fail, ml_cli
from utils.settings import current


@ml_cli.command("evaluate", context_settings={"ignore_unknown_options": False})
@click.option("--seed", "seeds", type=int, multiple=True, help="Simulator seed (repeat for several; default 1).")
@click.option("--days", type=click.IntRange(min=14), default=None, help="Simulated days (default 90).")
@click.option("--rooms", type=click.IntRange(min=1), default=None, help="Simulated rooms (default 120).")
@click.option("--products", type=click.IntRange(min=1), default=None, help="Simulated products (default 40).")
@click.option("--attendants", type=click.IntRange(min=1), default=None, help="Simulated attendants (default 8).")
@click.option("--meters", type=click.IntRange(min=1), default=None, help="Simulated energy meters (default 16).")
@click.option("--clean", is_flag=True, help="A hotel without anomalies: false incidents on the last 30 days.")
@click.option("--observations", type=click.Path(exists=True, dir_okay=False), default=None,
              help="CSV of observations (metric_type, entity_id, metric_value, timestamp) instead of the simulator.")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False), default=None,
              help="CSV of labelled event windows for --observations.")
@click.option("--detectors", default=None, help="Comma-separated subset of a_model,b_zscore,c_rolling_z,"
                                                "d_entity_iforest,e_new (default: all).")
@click.option("--json", "json_path", default=None, help="Where to write the results as JSON.")
@click.option("--cost", is_flag=True, help="Measure per-row training and scanning cost instead.")
def evaluate_command(seeds: tuple[int, ...], days: Optional[int], rooms: Optional[int], products: Optional[int],
                     attendants: Optional[int], meters: Optional[int], clean: bool, observations: Optional[str],
                     labels: Optional[str], detectors: Optional[str], json_path: Optional[str], cost: bool) -> None:
    """Walk-forward evaluation of the detectors on the simulator or a labelled CSV."""
    from utils.ml.evaluation.__main__ import main

    if labels and not observations:
        raise fail("--labels: needs --observations")
    argv = [arg for seed in seeds for arg in ("--seed", str(seed))]
    argv += ["--window-days", str(current("ML_TRAIN_WINDOW_DAYS")),
             "--contamination", str(current("ML_CONTAMINATION")),
             "--budget", str(current("ML_FALSE_ALERTS_PER_ENTITY_DAY"))]
    for flag, value in (("--days", days), ("--rooms", rooms), ("--products", products), ("--attendants", attendants),
                        ("--meters", meters), ("--observations", observations), ("--labels", labels),
                        ("--detectors", detectors), ("--json", json_path)):
        if value is not None:
            argv += [flag, str(value)]
    argv += ["--clean"] if clean else []
    argv += ["--cost"] if cost else []
    status = main(argv)
    if status:
        raise fail("evaluation failed; see the message above")
