"""Container health probe: exit 0 when ``GET http://127.0.0.1:$PORT<path>`` answers 200.

Slim images have no curl, so the Dockerfile's HEALTHCHECK and the compose
file run this with the image's Python (standard library only: it must start
fast and must not import the app).  Usage: ``python docker/healthcheck.py [/health]``.
"""
from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def check(url: str, timeout: float = 4.0) -> str | None:
    """None when ``url`` answers 200, else a one-line reason."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            if response.status == 200:
                return None
            return f"{url} answered {response.status}"
    except urllib.error.HTTPError as exc:
        return f"{url} answered {exc.code}"
    except OSError as exc:  # refused, timed out, reset
        return f"{url} unreachable: {exc}"


def main(argv: list[str]) -> int:
    path = argv[1] if len(argv) > 1 else "/health"
    # The same PORT gunicorn.conf.py binds to.
    url = f"http://127.0.0.1:{os.environ.get('PORT', '5000')}{path}"
    problem = check(url)
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
