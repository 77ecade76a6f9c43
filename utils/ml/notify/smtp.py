"""The e-mail channel: one plain-text message per notification over SMTP (``smtplib``).

The connection is opened with the connect timeout; every later read or write
has the read timeout.  With ``ML_NOTIFY_SMTP_STARTTLS`` the session is
upgraded (the server certificate is verified against the system CAs or
``ML_NOTIFY_SMTP_CA_FILE``) before AUTH.  ``Message-ID`` is derived from the
idempotency key, and ``X-ML-Idempotency-Key`` carries the key itself, so a
mail client or a filter can drop duplicates.

Outcome: a refused recipient list or sender with a 5xx code is permanent;
everything else (connection, TLS, AUTH, 4xx) is retried: a wrong password is
as likely fixed by an operator as a server that is down.
"""
from __future__ import annotations

import hashlib
import json
import smtplib
import socket
import ssl
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any, Mapping

from utils.ml.notify.errors import SendError, describe, one_line
from utils.time import utcnow

SUBJECT_MAX = 120


def message_id(key: str, sender: str) -> str:
    """A stable ``Message-ID`` for idempotency key ``key``."""
    domain = sender.rsplit("@", 1)[-1] or "ml-notify.invalid"
    return f"<{hashlib.sha256(key.encode()).hexdigest()[:40]}.ml-notify@{domain}>"


def _value(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)
    return str(value)


def text_of(message: Mapping[str, Any]) -> str:
    """The plain-text body: the subject, the facts, then the payload one field per line."""
    lines = [message["subject"], "",
             f"kind: {message['kind']}", f"severity: {message['severity']}",
             f"created: {message['created_at']}", f"idempotency key: {message['idempotency_key']}"]
    if message["kind"] == "digest":
        items = message["payload"].get("items", [])
        lines += ["", f"This digest replaces {len(items)} notification(s) held back by the rate limit:"]
        for item in items:
            lines.append(f"- [{item['severity']}] {item['kind']} {item['idempotency_key']}: "
                         f"{item['subject']} ({item['created_at']})")
    else:
        payload = message.get("payload") or {}
        if payload:
            lines.append("")
        lines += [f"{name}: {one_line(_value(payload[name]), 2000)}" for name in sorted(payload)]
    return "\n".join(lines) + "\n"


def email_of(settings: Mapping[str, Any], message: Mapping[str, Any]) -> EmailMessage:
    """The ``EmailMessage`` for ``message`` (headers on one line each: no injection)."""
    sender = settings["ML_NOTIFY_SMTP_FROM"]
    mail = EmailMessage()
    subject = one_line(f"[ML {message['severity']}] {message['subject']}")
    mail["Subject"] = subject if len(subject) <= SUBJECT_MAX else subject[: SUBJECT_MAX - 1] + "…"
    mail["From"] = sender
    mail["To"] = ", ".join(settings["ML_NOTIFY_SMTP_TO"])
    mail["Date"] = format_datetime(utcnow())
    mail["Message-ID"] = message_id(message["idempotency_key"], sender)
    mail["X-ML-Idempotency-Key"] = message["idempotency_key"]
    mail["X-ML-Event"] = message["kind"]
    mail.set_content(text_of(message))
    return mail


def send(settings: Mapping[str, Any], message: Mapping[str, Any]) -> str:
    """Send ``message`` by e-mail; return a short outcome or raise :class:`SendError`."""
    host, port = settings["ML_NOTIFY_SMTP_HOST"], settings["ML_NOTIFY_SMTP_PORT"]
    where = f"smtp {host}:{port}"
    mail = email_of(settings, message)
    try:
        smtp = smtplib.SMTP(host, port, timeout=settings["ML_NOTIFY_CONNECT_TIMEOUT_SECONDS"])
    except (OSError, smtplib.SMTPException) as exc:
        raise SendError(f"{where}: connect failed: {describe(exc)}") from None
    try:
        smtp.sock.settimeout(settings["ML_NOTIFY_READ_TIMEOUT_SECONDS"])
        smtp.ehlo()
        if settings["ML_NOTIFY_SMTP_STARTTLS"]:
            context = ssl.create_default_context(cafile=settings["ML_NOTIFY_SMTP_CA_FILE"])
            smtp.starttls(context=context)
            smtp.ehlo()
        user = settings["ML_NOTIFY_SMTP_USER"]
        if user:
            try:
                smtp.login(user, settings["ML_NOTIFY_SMTP_PASSWORD"])
            except smtplib.SMTPAuthenticationError as exc:
                raise SendError(f"{where}: AUTH as {user!r} refused: {exc.smtp_code} "
                                f"{exc.smtp_error.decode('utf-8', 'replace')}") from None
        smtp.send_message(mail)
    except SendError:
        raise
    except smtplib.SMTPRecipientsRefused as exc:
        codes = [code for code, _ in exc.recipients.values()]
        refused = ", ".join(f"{rcpt} ({code})" for rcpt, (code, _) in exc.recipients.items())
        raise SendError(f"{where}: every recipient refused: {refused}",
                        permanent=all(code >= 500 for code in codes)) from None
    except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
        raise SendError(f"{where}: {exc.__class__.__name__}: {exc.smtp_code} "
                        f"{exc.smtp_error.decode('utf-8', 'replace')}", permanent=exc.smtp_code >= 500) from None
    except (socket.timeout, TimeoutError):
        raise SendError(f"{where}: no answer within {settings['ML_NOTIFY_READ_TIMEOUT_SECONDS']:g} s") from None
    except (OSError, smtplib.SMTPException) as exc:  # ssl.SSLError is an OSError
        raise SendError(f"{where}: {describe(exc)}") from None
    finally:
        try:
            smtp.quit()
        except (OSError, smtplib.SMTPException):
            smtp.close()
    return f"accepted by {host}:{port}"
