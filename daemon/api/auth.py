"""Request-side helpers of authentication: where the token and the client address come from.

The token is read from ``Authorization: Bearer <token>`` (preferred) or ``X-API-Key: <token>``.
The client address is the socket peer; ``X-Forwarded-For`` is believed only when that peer is one
of ``api.trusted_proxies``, and then only up to the right-most address that is not itself a
trusted proxy (everything left of it was written by the client and may be forged).

Pure functions over an ASGI scope: no I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, MutableMapping, Sequence
from typing import Any

from daemon.errors import ConfigError

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Headers = Iterable[tuple[bytes, bytes]]


def parse_trusted_proxies(entries: Iterable[str]) -> tuple[IpNetwork, ...]:
    """``api.trusted_proxies`` as networks; a bad entry is a ConfigError naming the key."""
    out: list[IpNetwork] = []
    for entry in entries:
        try:
            out.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError as exc:
            raise ConfigError("api.trusted_proxies", f"{entry!r}: {exc}") from None
    return tuple(out)


def token_from_headers(headers: Headers) -> str | None:
    """The token of ``Authorization: Bearer`` or else ``X-API-Key``; None when neither has one
    (another Authorization scheme, such as Basic, carries no API token)."""
    bearer: str | None = None
    api_key: str | None = None
    for name, value in headers:
        if name == b"authorization" and bearer is None:
            scheme, _, rest = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer":
                bearer = rest.strip() or None
        elif name == b"x-api-key" and api_key is None:
            api_key = value.decode("latin-1").strip() or None
    return bearer or api_key


def _address(text: str) -> IpAddress | None:
    """An address from a header entry: ``1.2.3.4``, ``1.2.3.4:5678``, ``[::1]:80`` or ``::1``."""
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _trusted(addr: IpAddress, trusted: Sequence[IpNetwork]) -> bool:
    return any(addr in net for net in trusted)


def client_ip(scope: MutableMapping[str, Any], trusted: Sequence[IpNetwork]) -> str | None:
    """The request's client address (see the module docstring); None when unknown, including
    an unparsable forwarded entry (an allowlisted token is then refused, never let through)."""
    client = scope.get("client")
    if not client:
        return None
    peer = _address(str(client[0]))
    if peer is None:
        return None
    if not trusted or not _trusted(peer, trusted):
        return str(peer)
    hops: list[str] = []
    for name, value in scope.get("headers", ()):
        if name == b"x-forwarded-for":
            hops.extend(value.decode("latin-1").split(","))
    current = peer
    for hop in reversed(hops):
        if not hop.strip():
            continue
        addr = _address(hop)
        if addr is None:
            return None
        current = addr
        if not _trusted(addr, trusted):
            return str(addr)
    # Every hop is a trusted proxy: the left-most one is as far back as anyone vouches for.
    return str(current)
