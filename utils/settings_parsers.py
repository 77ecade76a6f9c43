"""The parsers of the settings table (:mod:`utils.settings`) and its one error type.

A parser takes ``(variable name, raw text)`` and returns the value or raises
:class:`ConfigError`, whose ``line`` is what the operator sees.
"""
from __future__ import annotations

import math
from datetime import timedelta
from typing import Any, Callable, Optional

from utils import settings_notify as N

Parser = Callable[[str, str], Any]  # (variable name, raw text) -> value; raises ConfigError


class ConfigError(ValueError):
    """A setting's value breaks its rule; ``line`` is what the operator is shown.

    ``shown`` replaces the raw value in the message (a secret is shown as
    ``<hidden, N characters>``, never echoed).
    """

    def __init__(self, name: str, raw: str, rule: str, shown: Optional[str] = None) -> None:
        super().__init__(f"{name}={repr(raw) if shown is None else shown}: {rule}")
        self.name = name
        self.raw = raw
        self.rule = rule

    @property
    def line(self) -> str:
        return f"config error: {self}"


# ------------------------------------------------------------------ parsers
def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(name, raw, "expected true or false")


def _number(kind: Callable[[str], Any], expected: str, minimum: float, maximum: Optional[float]) -> Parser:
    def parse(name: str, raw: str) -> Any:
        try:
            value = kind(raw)
        except ValueError:
            raise ConfigError(name, raw, f"expected {expected}") from None
        if not math.isfinite(value):
            raise ConfigError(name, raw, f"expected a finite {expected.removeprefix('a ')}")
        if value < minimum:
            raise ConfigError(name, raw, f"must be at least {minimum:g}")
        if maximum is not None and value > maximum:
            raise ConfigError(name, raw, f"must be at most {maximum:g}")
        return value
    return parse


def _int(minimum: int = 0, maximum: Optional[int] = None) -> Parser:
    return _number(int, "a whole number", minimum, maximum)


def _float(minimum: float = 0.0, maximum: Optional[float] = None) -> Parser:
    return _number(float, "a number", minimum, maximum)


def _floats(minimum: float = 0.0) -> Parser:
    """Comma-separated numbers, e.g. ``1,2,4``."""
    one = _float(minimum)

    def parse(name: str, raw: str) -> tuple[float, ...]:
        try:
            return tuple(one(name, part.strip()) for part in raw.split(",") if part.strip())
        except ConfigError as exc:
            raise ConfigError(name, raw, f"expected comma-separated numbers ({exc.rule})") from None
    return parse


def _hours(minimum: float) -> Parser:
    hours = _float(minimum)
    return lambda name, raw: timedelta(hours=hours(name, raw))


def _choice(*options: str) -> Parser:
    def parse(name: str, raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise ConfigError(name, raw, f"expected one of {', '.join(options)}")
        return value
    return parse


def _text(name: str, raw: str) -> str:
    return raw


def _database_url(name: str, raw: str) -> str:
    """Map the contract's PostgreSQL spellings onto the psycopg2 driver we ship.

    ``postgres://`` is what some platforms (Coolify, Heroku) emit, and a bare
    ``postgresql://`` means psycopg 3 to SQLAlchemy 2.1, which we do not install.
    """
    url = raw.strip()
    if "://" not in url:
        raise ConfigError(name, raw, "expected a database URL such as postgresql://user@host/db or sqlite:///path")
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix):]
    return url


def _notify(rule: Callable[[str], Any]) -> Parser:
    """A notification parser (raw -> value, ValueError(rule)) as a table parser; secrets never echoed."""
    def parse(name: str, raw: str) -> Any:
        try:
            return rule(raw)
        except ValueError as exc:
            raise ConfigError(name, raw, str(exc), N.shown(name, raw)) from None
    return parse


def _store_url(name: str, raw: str) -> str:
    """``s3://bucket/prefix`` (the rules live with the S3 store, in a module that does not import boto3)."""
    from utils.ml.store.s3_url import s3_url_problem

    url = raw.strip()
    problem = s3_url_problem(url)
    if problem:
        raise ConfigError(name, raw, problem)
    return url


# Shorter tokens fall to an online or offline guessing run too soon (issue 12).
MIN_TOKEN_LENGTH = 24


def _admin_token(name: str, raw: str) -> str:
    """The admin token: at least MIN_TOKEN_LENGTH characters.  The refusal never shows the token itself."""
    token = raw.strip()
    if len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(name, f"<{len(token)} characters>",
                          f"must be at least {MIN_TOKEN_LENGTH} characters (generate one with "
                          "python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    return token


