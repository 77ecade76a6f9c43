"""Wait until the metadata database accepts connections (the container's first step).

``python -m utils.db_wait --timeout 60`` retries ``SELECT 1`` against
``DATABASE_URL`` (read through :mod:`utils.settings`) until it answers (exit
0) or the timeout passes (exit 1, with the last error and the URL, password
hidden); a bad setting exits 2 with its one line.  It imports only
:mod:`utils.settings` and SQLAlchemy, not the app, so it starts fast.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional

import sqlalchemy as sa


def _say(message: str) -> None:
    print(f"db_wait: {message}", file=sys.stderr, flush=True)


def safe_url(url: str) -> str:
    """The URL with its password masked, for messages."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # never echo a URL we cannot mask
        return "<unparsable database URL>"


def probe(url: str, connect_timeout: float) -> Optional[str]:
    """None when ``SELECT 1`` succeeds on ``url``, else a one-line reason."""
    connect_args = {"connect_timeout": max(1, int(connect_timeout))} if url.startswith("postgres") else {}
    try:
        engine = sa.create_engine(url, connect_args=connect_args, poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        finally:
            engine.dispose()
        return None
    except Exception as exc:  # every driver error means "not up yet"
        first_line = (str(exc).strip().splitlines() or [""])[0]
        return f"{exc.__class__.__name__}: {first_line}"


def wait_for_database(
    url: str,
    timeout: float,
    interval: float = 1.0,
) -> Optional[str]:
    """Retry :func:`probe` every ``interval`` seconds for at most ``timeout`` seconds.

    Returns None once the database answers, else the last failure reason.
    Every failed attempt is reported on stderr so an operator watching the
    container log sees what it is waiting for.
    """
    deadline = time.monotonic() + timeout
    attempt = 0
    while True:
        attempt += 1
        left = deadline - time.monotonic()
        problem = probe(url, connect_timeout=min(5.0, max(1.0, left)))
        if problem is None:
            _say(f"database at {safe_url(url)} is up (attempt {attempt})")
            return None
        left = deadline - time.monotonic()
        if left <= 0:
            return problem
        _say(f"waiting for database at {safe_url(url)} (attempt {attempt}, {left:.0f}s left): {problem}")
        time.sleep(min(interval, left))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=60.0, help="give up after this many seconds")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between attempts")
    args = parser.parse_args(argv)
    if args.timeout < 0 or args.interval <= 0:
        parser.error("--timeout must be >= 0 and --interval > 0")

    from utils.settings import ConfigError
    from utils.settings_load import load_settings  # the one table of settings

    try:
        url = load_settings(os.environ)["SQLALCHEMY_DATABASE_URI"]
    except ConfigError as exc:
        print(exc.line, file=sys.stderr)
        return 2
    problem = wait_for_database(url, args.timeout, args.interval)
    if problem is not None:
        _say(f"database at {safe_url(url)} did not answer within {args.timeout:g}s: {problem}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
