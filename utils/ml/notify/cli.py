"""``flask ml notify-test``: a thin click layer over :func:`notify_test`.

:func:`register_cli` adds the command to the app's ``ml`` group (or to the
top level when there is none).  Failures exit 1 with a one-line reason.
"""
from __future__ import annotations

import click
from flask import Flask
from flask.cli import with_appcontext

from utils.ml.notify.check import notify_test


@click.command("notify-test")
@click.option("--channel", "channels", type=click.Choice(["webhook", "email"]), multiple=True,
              help="Only this channel (repeatable); default: every configured channel.")
@with_appcontext
def notify_test_command(channels: tuple[str, ...]) -> None:
    """Send a test notification through each configured channel now and report the outcome."""
    try:
        results = notify_test(channels=channels or None)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if not results:
        raise click.ClickException("no notification channel is configured: "
                                   "set ML_NOTIFY_WEBHOOK_URL or ML_NOTIFY_SMTP_HOST")
    for name, result in results.items():
        outcome = f"ok, {result['detail']}" if result["ok"] else f"FAILED: {result['error']}"
        click.echo(f"{name}: {outcome} ({result['ms']} ms, key {result['key']})")
    failed = [f"{name}: {r['error']}" for name, r in results.items() if not r["ok"]]
    if failed:
        raise click.ClickException(f"{len(failed)} of {len(results)} channel(s) failed; {'; '.join(failed)}")


def register_cli(app: Flask) -> None:
    """Add ``notify-test`` under ``flask ml`` (or ``flask`` when the app has no ``ml`` group)."""
    group = app.cli.commands.get("ml")
    target = group if isinstance(group, click.Group) else app.cli
    if "notify-test" not in target.commands:
        target.add_command(notify_test_command)
