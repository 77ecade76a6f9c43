"""The notification settings' parsers and cross-field rules (rows in :mod:`utils.settings`).

Import-light on purpose: :mod:`utils.settings` is read by ``gunicorn.conf.py``
and the quick start before anything else, so this module imports nothing of
the service.  Each parser takes the raw (non-empty) string and raises
``ValueError(rule)``; :func:`check_together` raises :class:`NotifyConfigError`
naming the variable.  Secret values never appear in a message: :func:`shown`
renders them as ``<hidden, N characters>``.
"""
from __future__ import annotations

import os
import re
from typing import Any, Callable, Mapping, Optional
from urllib.parse import urlsplit

SEVERITIES = ("info", "low", "medium", "high", "critical")
_EMAIL = re.compile(r"^[A-Za-z0-9._%+'-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*$")
_HOST = re.compile(r"^[A-Za-z0-9.\-:\[\]]{1,253}$")


# ------------------------------------------------------------------ parsers
# Each parser gets the raw (non-empty) string and raises ValueError(rule).
def boolean(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected true or false")


def int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError("expected a whole number") from None
        if value < minimum:
            raise ValueError(f"must be at least {minimum}")
        return value
    return parse


def seconds(minimum: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError("expected a number of seconds") from None
        if not value >= minimum or value == float("inf"):
            raise ValueError(f"must be a finite number of seconds, at least {minimum:g}")
        return value
    return parse


def severity(raw: str) -> str:
    value = raw.strip().lower()
    if value not in SEVERITIES:
        raise ValueError(f"expected one of {', '.join(SEVERITIES)}")
    return value


def url(raw: str) -> str:
    value = raw.strip()
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http:// or https:// URL")
    if parts.username or parts.password:
        raise ValueError("credentials in the URL are not accepted; the body is signed with ML_NOTIFY_WEBHOOK_SECRET")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError("the port must be a number from 1 to 65535") from None
    return value


def secret(raw: str) -> str:
    if len(raw) < 16:
        raise ValueError("must be at least 16 characters")
    return raw


def host(raw: str) -> str:
    value = raw.strip()
    if not _HOST.match(value):
        raise ValueError("expected a host name or IP address")
    return value


def port(raw: str) -> int:
    value = int_at_least(1)(raw)
    if value > 65535:
        raise ValueError("must be a port number from 1 to 65535")
    return value


def one_line(raw: str) -> str:
    if any(ch in raw for ch in "\r\n\0"):
        raise ValueError("must be one line")
    return raw


def address(raw: str) -> str:
    value = raw.strip()
    if not _EMAIL.match(value):
        raise ValueError("expected an e-mail address like ml@example.com")
    return value


def addresses(raw: str) -> tuple[str, ...]:
    values = tuple(part.strip() for part in raw.split(",") if part.strip())
    bad = [v for v in values if not _EMAIL.match(v)]
    if not values or bad:
        raise ValueError("expected comma-separated e-mail addresses like ops@example.com,oncall@example.com")
    return values


def ca_file(raw: str) -> str:
    value = raw.strip()
    if not os.path.isfile(value):
        raise ValueError("no such file (expected a PEM file of CA certificates)")
    return value


SECRETS = ("ML_NOTIFY_WEBHOOK_SECRET", "ML_NOTIFY_SMTP_PASSWORD")
URLS = ("ML_NOTIFY_WEBHOOK_URL",)


def shown(name: str, raw: Optional[str]) -> str:
    """How ``raw`` appears in an error line: hidden for a secret, credentials masked in a URL."""
    if raw is None or raw == "":
        return "''"
    if name in SECRETS:
        return f"<hidden, {len(raw)} characters>"
    if name in URLS:  # a URL may carry credentials: never echo them
        raw = re.sub(r"(?<=//)[^/@]*@", "***@", raw)
    return repr(raw)


class NotifyConfigError(ValueError):
    """A rule between notification settings is broken: ``name``, ``raw`` and ``rule`` say which."""

    def __init__(self, name: str, raw: Optional[str], rule: str) -> None:
        super().__init__(f"{name}={shown(name, raw)}: {rule}")
        self.name, self.raw, self.rule = name, raw or "", rule


def _fail(name: str, raw: Optional[str], rule: str) -> NotifyConfigError:
    return NotifyConfigError(name, raw, rule)


def check_together(v: Mapping[str, Any], environ: Mapping[str, Any]) -> None:
    """The rules between notification settings (``v`` typed, ``environ`` raw); raises :class:`NotifyConfigError`."""
    def need(name: str, because: str) -> None:
        if v[name] in (None, ()):
            raise _fail(name, environ.get(name), f"required when {because} is set")

    if v["ML_NOTIFY_WEBHOOK_URL"]:
        need("ML_NOTIFY_WEBHOOK_SECRET", "ML_NOTIFY_WEBHOOK_URL")
    if v["ML_NOTIFY_SMTP_HOST"]:
        need("ML_NOTIFY_SMTP_FROM", "ML_NOTIFY_SMTP_HOST")
        need("ML_NOTIFY_SMTP_TO", "ML_NOTIFY_SMTP_HOST")
    if v["ML_NOTIFY_SMTP_USER"]:
        need("ML_NOTIFY_SMTP_PASSWORD", "ML_NOTIFY_SMTP_USER")
        if not v["ML_NOTIFY_SMTP_STARTTLS"]:
            raise _fail("ML_NOTIFY_SMTP_STARTTLS", environ.get("ML_NOTIFY_SMTP_STARTTLS"),
                        "must be true when ML_NOTIFY_SMTP_USER is set (the password would travel in clear)")
    if v["ML_NOTIFY_RETRY_MAX_SECONDS"] < v["ML_NOTIFY_RETRY_BASE_SECONDS"]:
        raise _fail("ML_NOTIFY_RETRY_MAX_SECONDS", environ.get("ML_NOTIFY_RETRY_MAX_SECONDS"),
                    f"must be at least ML_NOTIFY_RETRY_BASE_SECONDS ({v['ML_NOTIFY_RETRY_BASE_SECONDS']:g})")
    budget = v["ML_NOTIFY_CONNECT_TIMEOUT_SECONDS"] + v["ML_NOTIFY_READ_TIMEOUT_SECONDS"]
    if v["ML_NOTIFY_LEASE_SECONDS"] <= budget:
        raise _fail("ML_NOTIFY_LEASE_SECONDS", environ.get("ML_NOTIFY_LEASE_SECONDS"),
                    f"must be more than the connect + read timeouts ({budget:g} s), "
                    "or a slow send would be taken over and sent twice")


