"""``flask ml scheduler``: the dedicated scheduler process (docker-compose ``scheduler``).

It competes for leadership like every other process that starts the
scheduler, so running it next to web workers that also schedule is safe.
"""
from __future__ import annotations

import signal
import time

import click
from flask import current_app

from utils.cli import fail, ml_cli
from utils.ml.jobs.interrupt import on_stop_signals, stop_requested
from utils.ml.jobs.scheduler import exit_now_if_stuck, start_scheduler, stop_scheduler
from utils.web.monitoring import start_metrics_server


@ml_cli.command("scheduler")
def scheduler_command() -> None:
    """Run the scheduled jobs in the foreground until SIGTERM or SIGINT (then exit 0).

    Runs regardless of ML_SCHEDULER_ENABLED (starting this process is the
    request); refuses when ML_ENABLED is false.
    """
    app = current_app._get_current_object()
    if not app.config["ML_ENABLED"]:
        raise fail("ML_ENABLED is false: the ML subsystem is off, so no jobs are scheduled")
    # A running job stops at its next safe point, recorded as interrupted.  The handler only sets a
    # flag: a threading.Event set from it could deadlock on a second signal (utils.ml.jobs.interrupt).
    previous = on_stop_signals((signal.SIGTERM, signal.SIGINT))
    try:
        scheduler = start_scheduler(app)  # a ValueError names a configuration rule: one line, exit 1
        start_metrics_server(app)  # this process's own /metrics on ML_METRICS_PORT (0: off)
        intervals = ", ".join(f"{name} every {seconds:g}s" for name, seconds in scheduler.intervals.items())
        click.echo(f"scheduler running ({scheduler.elector.backend} leader election; {intervals}); "
                   "stop with SIGTERM or Ctrl-C", err=True)
        # A signal interrupts the sleep and its handler runs at once; the flag is seen within 0.2 s.
        while not stop_requested():
            time.sleep(0.2)
        click.echo("scheduler stopping: interrupting running jobs, releasing leadership", err=True)
        finished = stop_scheduler(app)
        click.echo("scheduler stopped", err=True)
        exit_now_if_stuck(finished)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
