"""``flask ml ...``: a thin click layer over plain functions, with one error handler.

Each area registers its commands on ``ml_cli`` from its own module
(:mod:`.models`, :mod:`.pipeline`, :mod:`.scheduler`).  Every command is an
:class:`MLCommand`, so every failure goes through :func:`cli_error`: a known
refusal becomes one line on stderr and exit status 1 (a bad setting:
``config error: ...`` and status 2); anything else is a bug and keeps its
traceback.  ``migrate_models_to_filesystem.py`` runs one of these commands,
so it shares the handler.
"""
from __future__ import annotations

import importlib
import json
from typing import Any, Iterable, Optional

import click
from flask import Flask
from flask.cli import AppGroup
from sqlalchemy.exc import SQLAlchemyError

from utils.ml.jobs import JobBusyError, JobError
from utils.ml.pipeline.observations import ObservationValidationError
from utils.ml.store import ModelManagerError, ModelStoreError
from utils.ml.store.catalog import ActivationRefusedError
from utils.settings import ConfigError

COMMAND_MODULES = ("utils.cli.models", "utils.cli.pipeline", "utils.cli.promotion", "utils.cli.scheduler",
                   "utils.cli.stores", "utils.cli.evaluation")
# Who the audit trail and ml_job_runs name for everything done from the command line.
CLI_ACTOR = "cli"


class ConfigExit(click.ClickException):
    """A bad setting: its one line as it is (``config error: ...``), exit status 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(self.message, err=True)


def fail(message: str) -> click.ClickException:
    """A refusal a command finds itself: ``raise fail("...")`` (one line, exit 1)."""
    return click.ClickException(message)


def _validation_line(exc: ObservationValidationError) -> str:
    """All problems on one line: ``line 3, column metric_value: must be a number; ...``."""
    parts = []
    for error in exc.errors[:10]:
        where = []
        if error.get("line") is not None:
            where.append(f"line {error['line']}")
        if error.get("column"):
            where.append(f"column {error['column']}")
        parts.append(f"{', '.join(where)}: {error['rule']}" if where else str(error["rule"]))
    more = f" (+{len(exc.errors) - 10} more)" if len(exc.errors) > 10 else ""
    return f"nothing imported: {'; '.join(parts)}{more}"


def cli_error(exc: BaseException) -> Optional[click.ClickException]:
    """The one error handler of the command line: the one-line failure for ``exc``, or None for a bug.

    Refusals (bad input, a busy job, a failed job, a model or store rule, a
    file error) say their own message; a database error says which and asks
    whether the schema is at head.  Nothing was changed by a refused command.
    """
    if isinstance(exc, click.ClickException):
        return exc
    if isinstance(exc, ConfigError):
        return ConfigExit(exc.line)
    if isinstance(exc, ObservationValidationError):
        return fail(_validation_line(exc))
    if isinstance(exc, (JobBusyError, JobError, ModelManagerError, ModelStoreError, ActivationRefusedError,
                        ValueError, OSError)):
        return fail(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    if isinstance(exc, SQLAlchemyError):
        orig = getattr(exc, "orig", None)
        first = (str(orig if orig is not None else exc).strip().splitlines() or [""])[0]
        return fail(f"database error ({exc.__class__.__name__}): {first}; is the schema at head (flask db upgrade)?")
    return None


class MLCommand(click.Command):
    """A ``flask ml`` command whose failures go through :func:`cli_error`."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:
            failure = cli_error(exc)
            if failure is None:
                raise
            raise failure from exc


ml_cli = AppGroup("ml", help="Train, scan, list, clean up and migrate the ML models.")
ml_cli.command_class = MLCommand


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if hasattr(value, "strftime"):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def format_table(rows: Iterable[dict[str, Any]], columns: Iterable[tuple[str, str]]) -> list[str]:
    """Plain aligned text columns (no dependency for a table)."""
    columns = list(columns)
    cells = [[cell(row.get(key)) for key, _ in columns] for row in rows]
    headers = [title for _, title in columns]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    out.append("  ".join("-" * w for w in widths))
    out.extend("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)
    return out


def dump_json(value: Any) -> str:
    return json.dumps(value, default=lambda v: v.isoformat() if hasattr(v, "isoformat") else str(v), indent=2)


def init_app(app: Flask) -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name)
    if "ml" not in app.cli.commands:
        app.cli.add_command(ml_cli)
