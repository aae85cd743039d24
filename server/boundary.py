"""The browser boundary: which HTTP requests the API acts on at all.

tingji usually listens on 127.0.0.1 without a token, and any web page the user visits
can send requests there.  Three checks, in this order, before any handler runs:

1. **Host allow-list** (DNS rebinding: ``attacker.example`` re-pointed at 127.0.0.1
   would otherwise read every transcript).  Allowed: IP literals (a browser only
   sends one when the user navigated to that address), ``localhost`` and
   ``*.localhost``, the bind host, this machine's host name, and
   ``TINGJI_ALLOWED_HOSTS`` (a reverse proxy's name; ``*`` turns the check off).
2. **Same origin for state changes**: a POST (or PUT, PATCH, DELETE), or a GET whose
   handler acts (``opt={"acts": True}``: it reaches the network), whose
   ``Sec-Fetch-Site`` says another site, or whose ``Origin`` is not this server, is
   refused with 403.  Browsers always send one of them on such requests; the CLI and
   scripts send neither and are not affected; the web page is same-origin.
3. **Body types**: JSON routes take only ``application/json`` (a cross-site "simple"
   request can send ``text/plain`` or a form without a preflight); the upload route
   takes only ``multipart/form-data`` (``opt={"body": "multipart"}`` on its handler).

Every response carries security headers (CSP without inline script,
``frame-ancestors 'none'``, ``nosniff``, ``Referrer-Policy``).
"""

from __future__ import annotations

import ipaddress
import json
import socket
from typing import Any
from urllib.parse import urlsplit

from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import body

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

_HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; media-src 'self' blob:; base-uri 'none'; "
       "form-action 'self'; "
       "frame-ancestors 'none'")


def split_host(value: str) -> str:
    """``Host``/netloc -> lower-case host name without port or IPv6 brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class HostPolicy:
    """Which ``Host`` names this API answers to."""

    def __init__(self, bind_host: str, extra: tuple[str, ...]) -> None:
        self.any = "*" in extra
        self.proxies = frozenset(h.lower().rstrip(".") for h in extra if h != "*")
        names = {"localhost", socket.gethostname().lower(), *(h.lower() for h in extra)}
        if bind_host not in ("0.0.0.0", "::", ""):
            names.add(split_host(bind_host))
        self.names = frozenset(n.rstrip(".") for n in names if n)

    def allows(self, host: str) -> bool:
        if self.any or not host:  # no Host header at all: not a browser
            return True
        name = split_host(host).rstrip(".")
        try:
            ipaddress.ip_address(name)
            return True
        except ValueError:
            pass
        return name in self.names or name.endswith(".localhost")


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


def _media_type(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


def _refusal(status: int, code: str, message: str) -> tuple[int, bytes]:
    return status, json.dumps(body(code, message, status)).encode()


class BrowserBoundary(ASGIMiddleware):
    scopes = ("http",)  # type: ignore[assignment]

    def __init__(self, hosts: HostPolicy) -> None:
        self.hosts = hosts

    def check(self, scope: Scope) -> tuple[int, bytes] | None:
        """None when the request may proceed, else (status, error body)."""
        h = _headers(scope)
        host = h.get("host", "")
        if not self.hosts.allows(host):
            return _refusal(403, "host_not_allowed",
                            f"this server does not answer to the host name "
                            f"{split_host(host)[:100]!r}; add it to TINGJI_ALLOWED_HOSTS "
                            "if it is yours (a reverse proxy's name)")
        handler = scope.get("route_handler")
        opt = getattr(handler, "opt", None) or {}
        if scope["method"] in SAFE_METHODS and not opt.get("acts"):
            return None
        site = h.get("sec-fetch-site")
        origin = h.get("origin")
        cross = site is not None and site not in ("same-origin", "none")
        if origin is not None and not cross:
            netloc = urlsplit(origin).netloc.lower() if origin != "null" else ""
            # same origin: the page's host:port is the Host it sent; behind a reverse proxy
            # that rewrites Host, the proxy's name is in TINGJI_ALLOWED_HOSTS
            cross = not netloc or (netloc != host.lower()
                                   and split_host(netloc) not in self.hosts.proxies)
        if cross:
            return _refusal(403, "cross_site_request",
                            "requests that change something must come from this server's "
                            "own page or a non-browser client, not another web site")
        if scope["method"] in SAFE_METHODS:
            return None
        wants = opt.get("body", "json")
        has_body = h.get("content-length", "0") not in ("0", "") or "transfer-encoding" in h
        ctype = _media_type(h.get("content-type", ""))
        if wants == "multipart" and ctype != "multipart/form-data":
            return _refusal(415, "unsupported_media_type",
                            "send the file as multipart/form-data with a 'file' field")
        if wants == "json" and has_body and ctype != "application/json":
            return _refusal(415, "unsupported_media_type",
                            "send the request body as JSON with Content-Type: application/json")
        return None

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        refused = self.check(scope)
        if refused is None:
            await next_app(scope, receive, send)
            return
        status, payload = refused
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})


async def security_headers(message: Message, scope: Scope) -> None:
    """``before_send`` hook: the security headers on every response, errors included."""
    if message["type"] != "http.response.start":
        return
    headers: list[tuple[bytes, bytes]] = list(message.get("headers") or [])
    present = {k.lower() for k, _ in headers}
    for name, value in {**_HEADERS, "content-security-policy": CSP}.items():
        if name.encode() not in present:
            headers.append((name.encode(), value.encode()))
    message["headers"] = headers


def make_boundary(bind_host: str, allowed_hosts: tuple[str, ...]) -> Any:
    return BrowserBoundary(HostPolicy(bind_host, allowed_hosts))
