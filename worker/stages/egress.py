"""The egress policy for URL tasks: which addresses the worker's downloads may reach.

A submitted URL is chosen by whoever can reach the API, so by default a URL task may
only connect to public addresses: loopback, private, link-local (cloud metadata at
169.254.169.254), carrier-grade NAT, multicast, reserved and unspecified addresses are
refused, for the URL itself, every redirect and every request yt-dlp makes on the way.
``TINGJI_ALLOW_PRIVATE_URLS`` lifts the rule: ``1`` for every address (the tests' local
media server), or a list of networks (a NAS at ``192.168.1.10``).

The check sits on name resolution: inside ``guarded()`` every ``socket.getaddrinfo``
of the current thread (which every HTTP stack in yt-dlp calls right before it
connects, and whose answer is what it connects to) has its answer checked, so a
rebinding DNS name cannot pass the check with one address and connect to another.
Other threads (the database driver, the LLM client) are not affected.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class EgressRefused(OSError):
    """A download tried to reach an address the policy refuses."""


@dataclass
class Refusals:
    """The hosts refused while a guard was active (yt-dlp reports its own error text,
    which may not say why; the fetch stage reads this instead)."""

    allowed: tuple[Network, ...] = ()  # non-public networks allowed all the same
    hosts: list[tuple[str, str]] = field(default_factory=list)  # (host, kind of address)

    def message(self) -> str:
        host, kind = self.hosts[0]
        return (f"refused to fetch from {host[:100]!r}: it resolves to a {kind} address, and "
                "URL tasks may only reach public hosts (TINGJI_ALLOW_PRIVATE_URLS=1 allows "
                "private ones)")


def address_kind(ip: Address) -> str | None:
    """None for a public unicast address; otherwise what kind of address it is."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None:
            return address_kind(embedded)
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_private:
        return "private"
    if ip.is_reserved or not ip.is_global:
        return "non-public"
    return None


_local = threading.local()
_real_getaddrinfo = socket.getaddrinfo
_install_lock = threading.Lock()


def _checked_getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
    infos = _real_getaddrinfo(host, port, *args, **kwargs)
    refusals: Refusals | None = getattr(_local, "refusals", None)
    if refusals is None:
        return infos
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        kind = address_kind(ip)
        if kind is not None and not any(ip in net for net in refusals.allowed):
            name = host.decode() if isinstance(host, bytes) else str(host)
            refusals.hosts.append((name, kind))
            raise EgressRefused(f"{name}: {kind} addresses are refused by the egress policy")
    return infos


def _install() -> None:
    with _install_lock:
        if socket.getaddrinfo is not _checked_getaddrinfo:
            socket.getaddrinfo = _checked_getaddrinfo


@contextmanager
def guarded(allowed: tuple[str, ...] = ()) -> Iterator[Refusals]:
    """Apply the policy to the current thread's connections for the block's duration;
    ``allowed`` lists non-public networks that may be reached all the same.  Blocks
    nest: the innermost policy applies, and leaving it restores the one around it."""
    refusals = Refusals(tuple(ipaddress.ip_network(n) for n in allowed))
    _install()
    outer: Refusals | None = getattr(_local, "refusals", None)
    _local.refusals = refusals
    try:
        yield refusals
    finally:
        _local.refusals = outer  # an inner block gives the thread back its outer policy
