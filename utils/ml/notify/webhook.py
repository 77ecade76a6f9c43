"""The webhook channel: one signed JSON POST per message (stdlib ``http.client``).

Headers: ``Content-Type: application/json``, ``Idempotency-Key: <key>``,
``X-ML-Event: <kind>`` and ``X-ML-Signature: t=<unix seconds>,v1=<hex>``
where ``hex = HMAC-SHA256(secret, "<t>." + body)``.  A receiver checks the
signature with :func:`verify_signature` and drops keys it has seen.

Outcome: 2xx delivered; 408, 429 and 5xx, timeouts and refused or reset
connections are retried; any other status (4xx, 3xx: redirects are not
followed) is permanent.
"""
from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import socket
import ssl
import time
from typing import Any, Mapping, Optional
from urllib.parse import urlsplit

from utils.ml.notify.errors import SendError, describe

SIGNATURE_HEADER = "X-ML-Signature"
USER_AGENT = "minibar-ml-notify/1"
RETRY_STATUSES = frozenset({408, 429})
_MAX_RESPONSE_BYTES = 64 * 1024


def body_of(message: Mapping[str, Any]) -> bytes:
    """The exact bytes that are signed and sent."""
    return json.dumps(message, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-ML-Signature`` value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify_signature(secret: str, header: str, body: bytes, tolerance: float = 300.0,
                     now: Optional[float] = None) -> bool:
    """True when ``header`` signs ``body`` with ``secret`` and its timestamp is within ``tolerance`` seconds."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
        given = parts["v1"]
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, given)


def send(settings: Mapping[str, Any], message: Mapping[str, Any]) -> str:
    """POST ``message``; return a short outcome (``HTTP 200``) or raise :class:`SendError`."""
    url = urlsplit(settings["ML_NOTIFY_WEBHOOK_URL"])
    body = body_of(message)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "Idempotency-Key": message["idempotency_key"],
        "X-ML-Event": message["kind"],
        SIGNATURE_HEADER: sign(settings["ML_NOTIFY_WEBHOOK_SECRET"], int(time.time()), body),
    }
    connect_timeout = settings["ML_NOTIFY_CONNECT_TIMEOUT_SECONDS"]
    read_timeout = settings["ML_NOTIFY_READ_TIMEOUT_SECONDS"]
    where = f"{url.hostname}:{url.port or (443 if url.scheme == 'https' else 80)}"
    if url.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            url.hostname, url.port, timeout=connect_timeout, context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=connect_timeout)
    try:
        try:
            conn.connect()
        except (OSError, http.client.HTTPException) as exc:
            raise SendError(f"webhook {where}: connect failed: {describe(exc)}") from None
        conn.sock.settimeout(read_timeout)  # the connect timeout bounded the handshake; now each read
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        try:
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            detail = response.read(_MAX_RESPONSE_BYTES)[:200].decode("utf-8", "replace")
        except (socket.timeout, TimeoutError):
            raise SendError(f"webhook {where}: no answer within {read_timeout:g} s") from None
        except (OSError, http.client.HTTPException) as exc:
            raise SendError(f"webhook {where}: {describe(exc)}") from None
    finally:
        conn.close()
    status = response.status
    if 200 <= status < 300:
        return f"HTTP {status}"
    text = f"webhook {where}: HTTP {status} {response.reason}: {' '.join(detail.split())}".strip(": ")
    permanent = status < 500 and status not in RETRY_STATUSES
    raise SendError(text, permanent=permanent)
