"""``flask ml ...``: a thin click layer over plain functions.

Each area registers its commands on ``ml_cli`` from its own module
(``cli_models``, ``cli_pipeline``, ``cli_scheduler``).  Failures raise
``click.ClickException``: one line on stderr, exit status 1.
"""
from __future__ import annotations

import importlib

import click
from flask import Flask
from flask.cli import AppGroup

ml_cli = AppGroup("ml", help="Train, scan, list, clean up and migrate the ML models.")

COMMAND_MODULES = ("utils.ml.cli_models", "utils.ml.cli_pipeline", "utils.ml.cli_scheduler")


def fail(message: str) -> "click.ClickException":
    """The one way commands report failure: ``raise fail("...")``."""
    return click.ClickException(message)


def init_app(app: Flask) -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name)
    if "ml" not in app.cli.commands:
        app.cli.add_command(ml_cli)
