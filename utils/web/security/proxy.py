"""The reverse proxy in front of the app (Coolify's Traefik): which client a request comes from.

Behind a proxy every request's peer address is the proxy's, so the failed
authentication counter (:mod:`.ratelimit`) would be one for every client:
one guesser would lock every operator out.  With ``ML_TRUSTED_PROXIES`` = n
> 0, werkzeug's ``ProxyFix`` takes the client address, scheme, host and port
from the ``X-Forwarded-*`` values the last n proxies added, and only those:
what a client writes into ``X-Forwarded-For`` itself sits further left and
is ignored, so it cannot pick its own counter.

Only a request whose peer is a private or loopback address (a proxy on the
same host or network) is read that way.  One from a public address reached
gunicorn directly (a published port, past the proxy), so its headers are
its own and its peer address is the client: otherwise a guesser on the
published port could name a fresh address with every guess.

0 (the default, and right when clients reach gunicorn directly): the
headers are never trusted.  Set it to the number of proxies that really
stand in front of the app; more would let clients choose their address.
"""
from __future__ import annotations

import ipaddress
from typing import Any, Callable, Iterable

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix


def behind_proxy(address: str | None) -> bool:
    """True for a private or loopback peer address (IPv4, IPv6 or IPv4-mapped IPv6)."""
    try:
        ip = ipaddress.ip_address((address or "").split("%")[0])
    except ValueError:
        return False  # a unix socket or nothing: no proxy we can place
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_private or ip.is_loopback


class TrustedProxies:
    """WSGI middleware: ``ProxyFix`` with ``hops`` for requests from a private peer, the app as is otherwise."""

    def __init__(self, app: Callable[..., Iterable[bytes]], hops: int) -> None:
        self.app = app
        self.fixed = ProxyFix(app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if behind_proxy(environ.get("REMOTE_ADDR")):
            return self.fixed(environ, start_response)
        return self.app(environ, start_response)


def init_app(app: Flask) -> None:
    hops = int(app.config.get("ML_TRUSTED_PROXIES", 0))
    if hops > 0:
        app.wsgi_app = TrustedProxies(app.wsgi_app, hops)  # type: ignore[method-assign]
