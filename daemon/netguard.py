"""The outbound-URL policy (SSRF guard) shared by webhooks and media URLs.

A URL goes through three steps; each refuses with ``UnsafeURL`` (code ``UNSAFE_URL``):

1. ``check_url`` — syntax only, no network: https (http only with ``allow_http``), no credentials,
   a port in 1..65535, no numeric host spellings other than a canonical dotted quad, no local names.
2. ``resolve`` — DNS once; *every* answer must pass ``check_ip``; the first is pinned.
3. ``pinned_client`` — an httpx client that connects to the pinned address only (Host header, TLS
   SNI and certificate checks keep the name) and never follows redirects, so a DNS answer that
   changes between check and use, or a 3xx into private space, reaches nothing.

``check_ip`` allows only addresses that are global after unwrapping the IPv4 inside IPv4-mapped,
NAT64 and 6to4 addresses, and refuses the special ranges below by name even where Python's
``ipaddress`` calls them global. ``allow_loopback`` admits 127.0.0.0/8, ::1 and ``localhost`` only.

errors.InputError
 └── UnsafeURL          the URL or an address it resolves to is refused (permanent)
errors.PostdError
 └── UnresolvableHost   DNS gave no usable answer (may be transient)
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import httpx

from daemon import config, errors

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]

_N4, _N6 = ipaddress.IPv4Network, ipaddress.IPv6Network
# First match names the refusal; anything not listed must still be ``is_global``.
_DENIED: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...] = (
    (_N4("0.0.0.0/8"), "an unspecified address"),
    (_N4("10.0.0.0/8"), "a private address"),
    (_N4("100.64.0.0/10"), "a carrier-grade NAT address"),
    (_N4("127.0.0.0/8"), "a loopback address"),
    (_N4("169.254.0.0/16"), "a link-local address"),
    (_N4("172.16.0.0/12"), "a private address"),
    (_N4("192.0.0.0/24"), "a reserved address"),
    (_N4("192.0.2.0/24"), "a documentation address"),
    (_N4("192.88.99.0/24"), "a reserved address"),
    (_N4("192.168.0.0/16"), "a private address"),
    (_N4("198.18.0.0/15"), "a benchmarking address"),
    (_N4("198.51.100.0/24"), "a documentation address"),
    (_N4("203.0.113.0/24"), "a documentation address"),
    (_N4("224.0.0.0/4"), "a multicast address"),
    (_N4("255.255.255.255/32"), "a broadcast address"),
    (_N4("240.0.0.0/4"), "a reserved address"),
    (_N6("::/128"), "an unspecified address"),
    (_N6("::1/128"), "a loopback address"),
    (_N6("::/96"), "an IPv4-compatible address"),
    # RFC 8215 local-use NAT64: the operator picks where the IPv4 sits (RFC 6052), so no one
    # unwrapping is safe; refuse the block.
    (_N6("64:ff9b:1::/48"), "a local-use NAT64 address"),
    (_N6("100::/64"), "a discard-only address"),
    (_N6("2001::/32"), "a Teredo address"),
    (_N6("2001:db8::/32"), "a documentation address"),
    (_N6("2001::/23"), "a reserved address"),
    (_N6("3fff::/20"), "a documentation address"),
    (_N6("5f00::/16"), "a reserved address"),
    (_N6("fc00::/7"), "a unique-local address"),
    (_N6("fe80::/10"), "a link-local address"),
    (_N6("fec0::/10"), "a site-local address"),
    (_N6("ff00::/8"), "a multicast address"),
)
_LOOPBACK = (_N4("127.0.0.0/8"), _N6("::1/128"))
_NAT64_WELL_KNOWN = _N6("64:ff9b::/96")

_DENIED_SUFFIXES = (".localhost", ".local", ".internal", ".arpa")
_NUMERIC_LABEL = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)", re.IGNORECASE)
_HOSTNAME = re.compile(r"(?:[a-z0-9_-]{1,63}\.)*[a-z0-9_-]{1,63}\.?")
_DEFAULT_PORTS = {"https": 443, "http": 80}


@dataclass(frozen=True)
class Policy:
    allow_loopback: bool = False
    allow_http: bool = False

    @classmethod
    def from_settings(cls, s: config.NetguardSettings) -> Policy:
        return cls(allow_loopback=s.allow_loopback, allow_http=s.allow_http)


class UnsafeURL(errors.InputError):
    """The URL is refused; ``reason`` is a short sentence safe to show to the operator."""

    def __init__(self, reason: str) -> None:
        super().__init__("UNSAFE_URL", f"unsafe URL: {reason}")
        self.reason = reason


class UnresolvableHost(errors.PostdError):
    code = "UNRESOLVABLE_HOST"

    def __init__(self, host: str, problem: str) -> None:
        super().__init__(f"{host}: {problem}")
        self.host = host
        self.problem = problem


@dataclass(frozen=True)
class Target:
    """A URL that passed ``check_url``; ``host`` is lower-case IDNA ASCII (or an IP literal)."""

    scheme: str
    host: str
    port: int
    path_query: str
    ip: IPAddress | None

    @property
    def url(self) -> str:
        """The canonical URL to request (default port omitted, IPv6 in brackets, no fragment)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if _DEFAULT_PORTS[self.scheme] == self.port else f":{self.port}"
        return f"{self.scheme}://{host}{port}{self.path_query}"


@dataclass(frozen=True)
class Pinned:
    target: Target
    ip: IPAddress


def check_url(url: str, policy: Policy) -> Target:
    """Check a URL's syntax and any literal IP without touching the network."""
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise UnsafeURL("the URL contains whitespace or control characters")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise UnsafeURL(f"the URL does not parse ({exc})") from exc
    scheme = parsed.scheme
    if scheme not in _DEFAULT_PORTS or (scheme == "http" and not policy.allow_http):
        allowed = "https or http" if policy.allow_http else "https"
        raise UnsafeURL(f"the scheme must be {allowed}, not {scheme or 'missing'}")
    if parsed.userinfo:
        raise UnsafeURL("the URL carries credentials")
    port = parsed.port if parsed.port is not None else _DEFAULT_PORTS[scheme]
    if not 1 <= port <= 65535:
        raise UnsafeURL(f"port {port} is outside 1..65535")
    host = parsed.raw_host.decode("ascii").lower()
    ip = _literal_ip(host) if ":" in host else _check_hostname(host, policy)
    if ip is None:
        host = host.removesuffix(".")
    else:
        check_ip(ip, policy)
        if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
            raise UnsafeURL(f"{ip} names a network interface (zone id)")
        host = str(ip)
    path_query = parsed.raw_path.decode("ascii")
    return Target(scheme=scheme, host=host, port=port, path_query=path_query, ip=ip)


def _literal_ip(host: str) -> IPAddress:
    try:
        return ipaddress.ip_address(unquote(host))
    except ValueError as exc:
        raise UnsafeURL(f"{host!r} is not a valid IPv6 address") from exc


def _check_hostname(host: str, policy: Policy) -> ipaddress.IPv4Address | None:
    """Return the IPv4 address of a canonical dotted quad, None for an acceptable name."""
    if not host:
        raise UnsafeURL("the URL has no host")
    if _is_dotted_quad(host):
        return ipaddress.IPv4Address(host)
    labels = host.removesuffix(".").split(".")
    # WHATWG URL rule: a host whose last label is a number is an IPv4 address in some spelling.
    if _NUMERIC_LABEL.fullmatch(labels[-1]) or _inet_aton_accepts(host):
        raise UnsafeURL(f"{host!r} is a numeric host that is not a canonical dotted quad")
    if not _HOSTNAME.fullmatch(host):
        raise UnsafeURL(f"{host!r} is not a valid host name")
    name = host.removesuffix(".")
    if name == "localhost" and policy.allow_loopback:
        return None
    if name == "localhost" or name.endswith(_DENIED_SUFFIXES):
        raise UnsafeURL(f"{host!r} is a local name")
    if len(labels) == 1:
        raise UnsafeURL(f"{host!r} is a single-label name (resolved through local search domains)")
    return None


def _is_dotted_quad(host: str) -> bool:
    try:
        return str(ipaddress.IPv4Address(host)) == host
    except ValueError:
        return False


def _inet_aton_accepts(host: str) -> bool:
    try:
        socket.inet_aton(host)
    except OSError:
        return False
    return True


def check_ip(ip: IPAddress, policy: Policy) -> None:
    """Raise ``UnsafeURL`` unless ``ip`` is a public address (or loopback when allowed)."""
    kind = _refusal(ip, policy.allow_loopback)
    if kind is not None:
        raise UnsafeURL(f"{ip} is {kind}")


def _refusal(ip: IPAddress, allow_loopback: bool) -> str | None:
    """Name the class of a refused address, or None when it is allowed."""
    if allow_loopback and any(ip in net for net in _LOOPBACK):
        return None
    embedded = _embedded_ipv4(ip)
    if embedded is not None:
        kind = _refusal(embedded, allow_loopback=False)
        return None if kind is None else f"{kind} ({embedded}) in IPv6 form"
    for net, kind in _DENIED:
        if ip in net:
            return kind
    return None if ip.is_global else "a non-global address"


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries traffic to (mapped, NAT64, 6to4), else None."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip in _NAT64_WELL_KNOWN:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.ipv4_mapped or ip.sixtofour


async def _getaddrinfo(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_ADDRCONFIG
    )
    return [str(info[4][0]) for info in infos]


async def resolve(target: Target, policy: Policy, resolver: Resolver | None = None) -> Pinned:
    """Resolve once; every answer must pass ``check_ip``; pin the first one."""
    if target.ip is not None:
        return Pinned(target, target.ip)
    try:
        answers = await (resolver or _getaddrinfo)(target.host, target.port)
    except (OSError, UnicodeError) as exc:
        raise UnresolvableHost(target.host, f"DNS lookup failed ({exc})") from exc
    if not answers:
        raise UnresolvableHost(target.host, "DNS returned no address")
    try:
        addresses = [ipaddress.ip_address(answer) for answer in answers]
    except ValueError as exc:
        raise UnsafeURL(f"{target.host} resolves to a non-address ({exc})") from exc
    for ip in addresses:
        kind = _refusal(ip, policy.allow_loopback)
        if kind is not None:
            raise UnsafeURL(f"{target.host} resolves to {kind} ({ip})")
    return Pinned(target, addresses[0])


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    host = url.raw_host.decode("ascii").lower()
    if ":" in host:
        host = str(_literal_ip(host))
    return url.scheme, host, url.port if url.port is not None else _DEFAULT_PORTS.get(url.scheme)


class _PinnedTransport(httpx.AsyncBaseTransport):
    """Send requests for the pinned target to the pinned IP; refuse every other origin.

    httpx's transport takes no httpcore network backend, so the URL is rewritten to the IP and
    the public ``sni_hostname`` request extension keeps TLS on the name.
    """

    def __init__(self, pinned: Pinned) -> None:
        self._pinned = pinned
        self._inner = httpx.AsyncHTTPTransport(trust_env=False, retries=0)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        target, url = self._pinned.target, request.url
        if _origin(url) != (target.scheme, target.host, target.port):
            raise UnsafeURL(f"this client is pinned to {target.url}; refused {url}")
        extensions = dict(request.extensions)
        if target.ip is None:
            # Connect to the checked address; TLS still sends and verifies the name.
            extensions["sni_hostname"] = target.host
        pinned = httpx.Request(
            request.method,
            url.copy_with(host=str(self._pinned.ip).partition("%")[0]),
            headers=request.headers,  # keeps Host: <name>[:port] built from the original URL
            stream=request.stream,
            extensions=extensions,
        )
        return await self._inner.handle_async_request(pinned)

    async def aclose(self) -> None:
        await self._inner.aclose()


def pinned_client(pinned: Pinned, *, timeout: float, user_agent: str) -> httpx.AsyncClient:
    """An httpx client that reaches ``pinned.target`` only, at ``pinned.ip``.

    Request ``pinned.target.url`` (or any URL of the same origin); another origin raises
    ``UnsafeURL``. Redirects come back as 3xx responses; proxies from the environment are ignored;
    responses are asked for uncompressed (no decompression bombs).
    """
    return httpx.AsyncClient(
        transport=_PinnedTransport(pinned),
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
        headers={"User-Agent": user_agent, "Accept-Encoding": "identity"},
    )


async def fetch_checked(
    method: str,
    url: str,
    policy: Policy,
    *,
    timeout_seconds: float,
    user_agent: str,
    resolver: Resolver | None = None,
    max_body: int = 64 * 1024,
    **request: Any,
) -> httpx.Response:
    """Check, resolve, send one request (``request`` goes to ``httpx.AsyncClient.stream``).

    The returned response is closed; its body holds at most ``max_body`` decoded bytes.
    """
    pinned = await resolve(check_url(url, policy), policy, resolver)
    async with (
        pinned_client(pinned, timeout=timeout_seconds, user_agent=user_agent) as client,
        client.stream(method, pinned.target.url, **request) as response,
    ):
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) >= max_body:
                break
        headers = [
            (k, v)
            for k, v in response.headers.multi_items()
            if k not in ("content-encoding", "content-length", "transfer-encoding")
        ]
        return httpx.Response(
            response.status_code,
            headers=headers,
            content=bytes(body[:max_body]),
            request=response.request,
        )
