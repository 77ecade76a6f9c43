"""Notification settings: one table of (environment name, parser, default, doc).

:func:`load` turns an environment-style mapping (strings) into typed values
keyed by the same names, or raises :class:`ValueError` with one line:
``NAME='value': rule``.  Secret values never appear in that line: they are
shown as ``<hidden, N characters>``.  An empty string counts as unset, as in
``config.py``.  The table is meant to be folded into the service's settings
table; the cross-field rules live in :func:`_check_together`.
"""
from __future__ import annotations

import os
import re
from typing import Any, Callable, Mapping, NamedTuple, Optional
from urllib.parse import urlsplit

SEVERITIES = ("info", "low", "medium", "high", "critical")
_EMAIL = re.compile(r"^[A-Za-z0-9._%+'-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*$")
_HOST = re.compile(r"^[A-Za-z0-9.\-:\[\]]{1,253}$")


class Setting(NamedTuple):
    name: str
    parser: Callable[[str], Any]
    default: Any
    doc: str
    secret: bool = False


# ------------------------------------------------------------------ parsers
# Each parser gets the raw (non-empty) string and raises ValueError(rule).
def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected true or false")


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError("expected a whole number") from None
        if value < minimum:
            raise ValueError(f"must be at least {minimum}")
        return value
    return parse


def _seconds(minimum: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError("expected a number of seconds") from None
        if not value >= minimum or value == float("inf"):
            raise ValueError(f"must be a finite number of seconds, at least {minimum:g}")
        return value
    return parse


def _severity(raw: str) -> str:
    value = raw.strip().lower()
    if value not in SEVERITIES:
        raise ValueError(f"expected one of {', '.join(SEVERITIES)}")
    return value


def _url(raw: str) -> str:
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


def _secret(raw: str) -> str:
    if len(raw) < 16:
        raise ValueError("must be at least 16 characters")
    return raw


def _host(raw: str) -> str:
    value = raw.strip()
    if not _HOST.match(value):
        raise ValueError("expected a host name or IP address")
    return value


def _port(raw: str) -> int:
    value = _int_at_least(1)(raw)
    if value > 65535:
        raise ValueError("must be a port number from 1 to 65535")
    return value


def _text(raw: str) -> str:
    if any(ch in raw for ch in "\r\n\0"):
        raise ValueError("must be one line")
    return raw


def _address(raw: str) -> str:
    value = raw.strip()
    if not _EMAIL.match(value):
        raise ValueError("expected an e-mail address like ml@example.com")
    return value


def _addresses(raw: str) -> tuple[str, ...]:
    values = tuple(part.strip() for part in raw.split(",") if part.strip())
    bad = [v for v in values if not _EMAIL.match(v)]
    if not values or bad:
        raise ValueError("expected comma-separated e-mail addresses like ops@example.com,oncall@example.com")
    return values


def _file(raw: str) -> str:
    value = raw.strip()
    if not os.path.isfile(value):
        raise ValueError("no such file (expected a PEM file of CA certificates)")
    return value


# ------------------------------------------------------------------- the table
SETTINGS: tuple[Setting, ...] = (
    Setting("ML_NOTIFY_MIN_SEVERITY", _severity, "high",
            "incidents below this severity are not notified (info, low, medium, high, critical)"),
    Setting("ML_NOTIFY_WEBHOOK_URL", _url, None, "webhook channel: POST a signed JSON body here; unset = channel off"),
    Setting("ML_NOTIFY_WEBHOOK_SECRET", _secret, None,
            "HMAC-SHA256 key of the X-ML-Signature header; required with the URL, 16+ characters", secret=True),
    Setting("ML_NOTIFY_SMTP_HOST", _host, None, "e-mail channel: SMTP server; unset = channel off"),
    Setting("ML_NOTIFY_SMTP_PORT", _port, 587, "SMTP port"),
    Setting("ML_NOTIFY_SMTP_STARTTLS", _bool, True, "upgrade the SMTP connection with STARTTLS (certificate verified)"),
    Setting("ML_NOTIFY_SMTP_CA_FILE", _file, None,
            "PEM CA bundle that signs the SMTP server's certificate; unset = system CAs"),
    Setting("ML_NOTIFY_SMTP_USER", _text, None, "SMTP AUTH user; unset = no AUTH (needs STARTTLS when set)"),
    Setting("ML_NOTIFY_SMTP_PASSWORD", _text, None, "SMTP AUTH password; required with the user", secret=True),
    Setting("ML_NOTIFY_SMTP_FROM", _address, None, "sender address; required with the host"),
    Setting("ML_NOTIFY_SMTP_TO", _addresses, (), "comma-separated recipients; required with the host"),
    Setting("ML_NOTIFY_RATE_PER_HOUR", _int_at_least(1), 30,
            "messages per channel in any hour; what is held back goes out as one digest"),
    Setting("ML_NOTIFY_MAX_ATTEMPTS", _int_at_least(1), 8, "sends tried per message before it is marked dead"),
    Setting("ML_NOTIFY_RETRY_BASE_SECONDS", _seconds(0.001), 30.0,
            "first retry delay; doubles per attempt, with jitter"),
    Setting("ML_NOTIFY_RETRY_MAX_SECONDS", _seconds(0.001), 3600.0, "longest retry delay"),
    Setting("ML_NOTIFY_CONNECT_TIMEOUT_SECONDS", _seconds(0.1), 5.0, "connect timeout (webhook and SMTP)"),
    Setting("ML_NOTIFY_READ_TIMEOUT_SECONDS", _seconds(0.1), 15.0, "timeout of each read or write after connecting"),
    Setting("ML_NOTIFY_LEASE_SECONDS", _seconds(1.0), 120.0,
            "a claimed message is re-sent by another sender if not finished by then; above connect + read timeouts"),
    Setting("ML_NOTIFY_BATCH_SIZE", _int_at_least(1), 100, "messages looked at per channel and delivery pass"),
    Setting("ML_NOTIFY_DELIVER_INTERVAL_SECONDS", _seconds(1.0), 30.0,
            "how often the leader process delivers due messages"),
)
BY_NAME = {s.name: s for s in SETTINGS}


def _shown(setting: Setting, raw: Optional[str]) -> str:
    if raw is None or raw == "":
        return "''"
    if setting.secret:
        return f"<hidden, {len(raw)} characters>"
    if setting.parser is _url:  # a URL may carry credentials: never echo them
        raw = re.sub(r"(?<=//)[^/@]*@", "***@", raw)
    return repr(raw)


def _fail(name: str, raw: Optional[str], rule: str) -> ValueError:
    return ValueError(f"{name}={_shown(BY_NAME[name], raw)}: {rule}")


def load(environ: Mapping[str, str]) -> dict[str, Any]:
    """Typed notification settings from an environment-style mapping.

    Returns every name of :data:`SETTINGS` (defaults filled in).  Raises
    ``ValueError`` with exactly one line naming the variable, its value
    (hidden for secrets) and the rule; the first bad variable wins.
    """
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = environ.get(setting.name)
        if raw is None or raw.strip() == "":
            values[setting.name] = setting.default
            continue
        try:
            values[setting.name] = setting.parser(raw)
        except ValueError as exc:
            raise _fail(setting.name, raw, str(exc)) from None
    _check_together(values, environ)
    return values


def _check_together(v: dict[str, Any], environ: Mapping[str, str]) -> None:
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


def channels(values: Mapping[str, Any]) -> tuple[str, ...]:
    """The configured channels, in delivery order."""
    found = []
    if values.get("ML_NOTIFY_WEBHOOK_URL"):
        found.append("webhook")
    if values.get("ML_NOTIFY_SMTP_HOST"):
        found.append("email")
    return tuple(found)


def markdown_table() -> str:
    """The README rows (variable, default, meaning), generated from :data:`SETTINGS`."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for s in SETTINGS:
        default = "unset" if s.default in (None, ()) else str(s.default).lower() if isinstance(s.default, bool) \
            else f"{s.default:g}" if isinstance(s.default, float) else str(s.default)
        rows.append(f"| `{s.name}` | {default if default == 'unset' else f'`{default}`'} | {s.doc} |")
    return "\n".join(rows)
