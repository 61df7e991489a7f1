"""The outbound-URL policy: hostile URLs are refused, public ones pass, connections are pinned."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from daemon import config, netguard

STRICT = netguard.Policy()
LOOPBACK_DEV = netguard.Policy(allow_loopback=True, allow_http=True)


@dataclass
class FakeDNS:
    """An injected resolver: fixed answers per name, every call recorded."""

    answers: dict[str, list[str]] = field(default_factory=dict)
    default: list[str] = field(default_factory=list)  # for names not in ``answers``
    calls: list[tuple[str, int]] = field(default_factory=list)

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        return self.answers.get(host, self.default)


async def vet(url: str, policy: netguard.Policy, dns: FakeDNS | None = None) -> netguard.Pinned:
    return await netguard.resolve(netguard.check_url(url, policy), policy, dns or FakeDNS())


def h(url: str, *answers: str, id: str, why: str) -> object:
    """A hostile URL, what the fake DNS answers for it, and a word the refusal must contain."""
    return pytest.param(url, list(answers), why, id=id)


HOSTILE = [
    h("https://127.0.0.1/", id="loopback-v4", why="loopback"),
    h("https://127.8.9.10/", id="loopback-v4-range", why="loopback"),
    h("https://[::1]/", id="loopback-v6", why="loopback"),
    h("https://10.0.0.5/", id="private-10", why="private"),
    h("https://172.16.0.1/", id="private-172.16", why="private"),
    h("https://172.31.255.254/", id="private-172.31", why="private"),
    h("https://192.168.1.1/", id="private-192.168", why="private"),
    h("https://169.254.169.254/latest/meta-data/", id="cloud-metadata", why="link-local"),
    h("https://169.254.0.1/", id="link-local-v4", why="link-local"),
    h("https://100.64.0.1/", id="cgnat", why="carrier-grade"),
    h("https://100.127.255.254/", id="cgnat-top", why="carrier-grade"),
    h("https://224.0.0.1/", id="multicast-v4", why="multicast"),
    h("https://239.255.255.250/", id="multicast-ssdp", why="multicast"),
    h("https://240.0.0.1/", id="reserved-240", why="reserved"),
    h("https://255.255.255.255/", id="broadcast", why="broadcast"),
    h("https://0.0.0.0/", id="unspecified-v4", why="unspecified"),
    h("https://0.1.2.3/", id="this-network", why="unspecified"),
    h("https://198.18.0.1/", id="benchmark-198.18", why="benchmarking"),
    h("https://198.19.255.1/", id="benchmark-198.19", why="benchmarking"),
    h("https://192.0.2.1/", id="documentation-test-net-1", why="documentation"),
    h("https://198.51.100.7/", id="documentation-test-net-2", why="documentation"),
    h("https://203.0.113.9/", id="documentation-test-net-3", why="documentation"),
    h("https://192.0.0.8/", id="ietf-protocol-192.0.0", why="reserved"),
    h("https://[64:ff9b::a9fe:a9fe]/", id="nat64-metadata", why="link-local"),
    h("https://[64:ff9b::10.0.0.1]/", id="nat64-private-10", why="private"),
    h("https://[64:ff9b:1::a00:1]/", id="nat64-local-use", why="local-use NAT64"),
    h("https://[2002:7f00:1::1]/", id="6to4-loopback", why="loopback"),
    h("https://[2002:c0a8:101::1]/", id="6to4-192.168", why="private"),
    h("https://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/", id="teredo", why="Teredo"),
    h("https://[::ffff:127.0.0.1]/", id="v4-mapped-dotted", why="loopback"),
    h("https://[::ffff:7f00:1]/", id="v4-mapped-hex", why="loopback"),
    h("https://[::ffff:169.254.169.254]/", id="v4-mapped-metadata", why="link-local"),
    h("https://[::127.0.0.1]/", id="v4-compatible", why="IPv4-compatible"),
    h("https://[::]/", id="unspecified-v6", why="unspecified"),
    h("https://[fc00::1]/", id="ula-fc00", why="unique-local"),
    h("https://[fd12:3456::1]/", id="ula-fd", why="unique-local"),
    h("https://[fe80::1%25eth0]/", id="link-local-v6-zone", why="link-local"),
    h("https://[fe80::1]/", id="link-local-v6", why="link-local"),
    h("https://[fec0::1]/", id="site-local-v6", why="site-local"),
    h("https://[ff02::1]/", id="multicast-v6", why="multicast"),
    h("https://[2001:db8::1]/", id="documentation-v6", why="documentation"),
    h("https://[2606:4700::1%25eth0]/", id="zone-id-on-global-v6", why="zone id"),
    h("https://2130706433/", id="decimal-ip", why="numeric host"),
    h("https://0177.0.0.1/", id="octal-ip", why="does not parse"),
    h("https://0x7f000001/", id="hex-ip", why="numeric host"),
    h("https://0x7f.0.0.1/", id="hex-dotted-ip", why="numeric host"),
    h("https://127.1/", id="short-ip", why="numeric host"),
    h("https://127.000.000.001/", id="zero-padded-ip", why="does not parse"),
    h("https://127.0.0.1./", id="trailing-dot-ip", why="numeric host"),
    h("https://1.2.3.4.5/", id="five-part-ip", why="numeric host"),
    h("https://example.123/", id="numeric-tld", why="numeric host"),
    h("https://user:pw@example.com/", "93.184.215.14", id="credentials", why="credentials"),
    h("https://user@example.com/", "93.184.215.14", id="username-only", why="credentials"),
    h("https://example.com\\@127.0.0.1/", id="backslash-userinfo-confusion", why="credentials"),
    h("http://example.com/", "93.184.215.14", id="http-not-allowed", why="scheme"),
    h("ftp://example.com/", id="ftp", why="scheme"),
    h("file:///etc/passwd", id="file", why="scheme"),
    h("gopher://127.0.0.1:6379/_", id="gopher", why="scheme"),
    h("//example.com/", id="no-scheme", why="scheme"),
    h("https://localhost/", "127.0.0.1", id="localhost", why="local name"),
    h("https://localhost./", "127.0.0.1", id="localhost-trailing-dot", why="local name"),
    h("https://app.localhost/", "127.0.0.1", id="dot-localhost", why="local name"),
    h("https://printer.local/", "192.168.1.9", id="dot-local", why="local name"),
    h("https://metadata.google.internal/", "169.254.169.254", id="dot-internal", why="local name"),
    h("https://1.0.0.127.in-addr.arpa/", id="dot-arpa", why="local name"),
    h("https://intranet/", "10.1.1.1", id="single-label", why="single-label"),
    h("https:///path", id="empty-host", why="no host"),
    h("https://example.com:0/", "93.184.215.14", id="port-0", why="outside 1..65535"),
    h("https://example.com:65536/", "93.184.215.14", id="port-65536", why="outside 1..65535"),
    h("https://exa mple.com/", id="whitespace", why="whitespace"),
    h("https://evil.example/", "127.0.0.1", id="dns-answers-loopback", why="loopback"),
    h(
        "https://mixed.example/",
        "93.184.215.14",
        "10.0.0.1",
        id="dns-one-public-one-private",
        why="private",
    ),
    h(
        "https://mixed6.example/",
        "2606:4700::1",
        "::ffff:10.0.0.1",
        id="dns-v6-mapped-private",
        why="private",
    ),
    h(
        "https://nat64.example/",
        "64:ff9b::a9fe:a9fe",
        id="dns-answers-nat64-metadata",
        why="link-local",
    ),
    h("https://zone.example/", "fe80::1%eth0", id="dns-answers-link-local", why="link-local"),
    h("https://garbage.example/", "not-an-ip", id="dns-answers-garbage", why="non-address"),
]


@pytest.mark.parametrize(("url", "answers", "why"), HOSTILE)
async def test_hostile_urls_are_refused(url: str, answers: list[str], why: str) -> None:
    """Each hostile URL raises UnsafeURL (code UNSAFE_URL) for its own reason."""
    with pytest.raises(netguard.UnsafeURL) as caught:
        await vet(url, STRICT, FakeDNS(default=answers))
    assert caught.value.code == "UNSAFE_URL"
    assert why in caught.value.reason


def test_hostile_table_is_large() -> None:
    """The table covers at least 50 hostile URLs."""
    assert len(HOSTILE) >= 50


@pytest.mark.parametrize(
    ("url", "answers", "pinned"),
    [
        ("https://8.8.8.8/", [], "8.8.8.8"),
        ("https://[2606:4700:4700::1111]/dns-query", [], "2606:4700:4700::1111"),
        ("https://example.com/hook?x=1", ["93.184.215.14"], "93.184.215.14"),
        ("https://example.com/", ["2606:2800:21f:cb07:6820:80da:af6b:8b2c"], None),
        ("https://v6only.example/", ["64:ff9b::808:808"], "64:ff9b::808:808"),
        ("https://bücher.example/", ["93.184.215.14"], "93.184.215.14"),
    ],
    ids=["v4-literal", "v6-literal", "name", "name-v6", "nat64-public", "idna"],
)
async def test_public_addresses_pass(url: str, answers: list[str], pinned: str | None) -> None:
    """Public literals and names whose every answer is public are pinned to the first answer."""
    dns = FakeDNS({"example.com": answers, "v6only.example": answers})
    dns.answers["xn--bcher-kva.example"] = answers
    result = await vet(url, STRICT, dns)
    assert result.ip == ipaddress.ip_address(pinned or answers[0])


def test_check_url_normalises_the_target() -> None:
    """check_url normalises the host (case, IDNA, final dot), sets the port, drops the fragment."""
    target = netguard.check_url("https://BÜcher.Example:8443/a/b?c=d#frag", STRICT)
    assert target == netguard.Target("https", "xn--bcher-kva.example", 8443, "/a/b?c=d", None)
    assert target.url == "https://xn--bcher-kva.example:8443/a/b?c=d"
    assert netguard.check_url("https://Example.COM./", STRICT).host == "example.com"
    assert netguard.check_url("https://[2606:4700::1]/", STRICT).url == "https://[2606:4700::1]/"


async def test_literal_ip_is_not_resolved() -> None:
    """An IP literal is pinned as is: the resolver is never asked."""
    dns = FakeDNS()
    await vet("https://8.8.8.8/", STRICT, dns)
    assert dns.calls == []


async def test_a_name_without_answers_is_unresolvable() -> None:
    """An empty DNS answer raises UnresolvableHost (possibly transient), not UnsafeURL."""
    with pytest.raises(netguard.UnresolvableHost):
        await vet("https://nowhere.example/", STRICT, FakeDNS())


@pytest.mark.parametrize(
    "url",
    ["https://127.0.0.1/", "https://127.0.0.53:8080/", "https://[::1]/", "https://localhost/"],
)
async def test_allow_loopback_admits_loopback(url: str) -> None:
    """allow_loopback admits 127.0.0.0/8, ::1 and the name localhost."""
    policy = netguard.Policy(allow_loopback=True)
    pinned = await vet(url, policy, FakeDNS({"localhost": ["::1", "127.0.0.1"]}))
    assert pinned.ip.is_loopback


@pytest.mark.parametrize(
    "url",
    [
        "https://10.0.0.1/",
        "https://169.254.169.254/",
        "https://192.168.0.1/",
        "https://[fc00::1]/",
        "https://[::ffff:127.0.0.1]/",
        "https://app.localhost/",
    ],
)
async def test_allow_loopback_admits_nothing_else(url: str) -> None:
    """allow_loopback still refuses private, link-local, mapped and *.localhost targets."""
    with pytest.raises(netguard.UnsafeURL):
        await vet(url, LOOPBACK_DEV, FakeDNS({"app.localhost": ["127.0.0.1"]}))


async def test_allow_http_admits_http() -> None:
    """allow_http admits http (port 80 by default); https stays allowed."""
    policy = netguard.Policy(allow_http=True)
    target = netguard.check_url("http://example.com/x", policy)
    assert (target.scheme, target.port) == ("http", 80)
    assert netguard.check_url("https://example.com/x", policy).port == 443


def test_check_ip_reason_names_the_range() -> None:
    """The reason is a short sentence naming the range and, for NAT64, the embedded IPv4."""
    with pytest.raises(netguard.UnsafeURL) as caught:
        netguard.check_ip(ipaddress.ip_address("64:ff9b::a9fe:a9fe"), STRICT)
    assert "link-local" in caught.value.reason
    assert "169.254.169.254" in caught.value.reason


async def test_resolve_reason_names_the_address() -> None:
    """A refused DNS answer is reported with the name and the offending address."""
    dns = FakeDNS({"mixed.example": ["93.184.215.14", "10.0.0.5"]})
    with pytest.raises(netguard.UnsafeURL) as caught:
        await vet("https://mixed.example/", STRICT, dns)
    assert caught.value.reason == "mixed.example resolves to a private address (10.0.0.5)"


def test_policy_from_settings() -> None:
    """Policy mirrors the [netguard] settings section."""
    settings = config.NetguardSettings(allow_loopback=True, allow_http=True)
    assert netguard.Policy.from_settings(settings) == LOOPBACK_DEV


# -- the wire: a loopback server ------------------------------------------------------------------


@dataclass
class Server:
    port: int
    heads: list[bytes]
    sni: list[str | None]


async def _start(ssl_context: ssl.SSLContext | None = None) -> tuple[asyncio.Server, Server]:
    seen = Server(0, [], [])

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            seen.heads.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(
                b"HTTP/1.1 302 Found\r\nLocation: http://10.0.0.1/\r\n"
                b"Content-Length: 0\r\nConnection: close\r\n\r\n"
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=ssl_context)
    seen.port = server.sockets[0].getsockname()[1]
    return server, seen


@pytest.fixture
async def loopback() -> AsyncIterator[Server]:
    server, seen = await _start()
    async with server:
        yield seen


async def test_redirect_into_private_space_is_not_followed(loopback: Server) -> None:
    """pinned_client returns a 302 to 10.0.0.1 as a response; check_url refuses its Location."""
    pinned = await vet(f"http://127.0.0.1:{loopback.port}/hook", LOOPBACK_DEV)
    async with netguard.pinned_client(pinned, timeout=5, user_agent="postd-test") as client:
        response = await client.post(pinned.target.url, content=b"{}")
    assert response.status_code == 302
    assert len(loopback.heads) == 1
    with pytest.raises(netguard.UnsafeURL, match="private"):
        netguard.check_url(response.headers["location"], LOOPBACK_DEV)


async def test_client_connects_to_the_pinned_ip_with_the_name_as_host(loopback: Server) -> None:
    """A name pinned to 127.0.0.1 reaches the loopback server with Host: <name>:<port>; DNS once."""
    dns = FakeDNS({"hooks.example.test": ["127.0.0.1"]})
    pinned = await vet(f"http://hooks.example.test:{loopback.port}/h", LOOPBACK_DEV, dns)
    async with netguard.pinned_client(pinned, timeout=5, user_agent="postd-test") as client:
        await client.get(pinned.target.url)
        await client.get(pinned.target.url)
    assert dns.calls == [("hooks.example.test", loopback.port)]
    heads = [head.decode().lower() for head in loopback.heads]
    assert len(heads) == 2
    assert all(f"\r\nhost: hooks.example.test:{loopback.port}\r\n" in head for head in heads)
    assert all("\r\nuser-agent: postd-test\r\n" in head for head in heads)


async def test_pinned_client_refuses_other_origins(loopback: Server) -> None:
    """The pinned client refuses a URL of another host or port instead of connecting."""
    dns = FakeDNS({"hooks.example.test": ["127.0.0.1"]})
    pinned = await vet(f"http://hooks.example.test:{loopback.port}/h", LOOPBACK_DEV, dns)
    async with netguard.pinned_client(pinned, timeout=5, user_agent="postd-test") as client:
        for other in ("http://10.0.0.1/", f"http://hooks.example.test:{loopback.port + 1}/"):
            with pytest.raises(netguard.UnsafeURL, match="pinned"):
                await client.get(other)
    assert loopback.heads == []


async def test_fetch_checked_returns_a_bounded_response(loopback: Server) -> None:
    """fetch_checked checks, resolves once and returns the response unfollowed."""
    dns = FakeDNS({"hooks.example.test": ["127.0.0.1"]})
    response = await netguard.fetch_checked(
        "POST",
        f"http://hooks.example.test:{loopback.port}/h",
        LOOPBACK_DEV,
        timeout_seconds=5,
        user_agent="postd-test",
        resolver=dns,
        content=b"{}",
    )
    assert response.status_code == 302
    assert len(dns.calls) == 1


def _self_signed(tmp_path: Path) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hooks.example.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    return context


async def test_tls_sends_the_name_and_verifies_the_certificate(tmp_path: Path) -> None:
    """Over https the pinned connection sends SNI for the name and refuses an untrusted cert."""
    context = _self_signed(tmp_path)
    server, seen = await _start(context)

    def record_sni(_sock: ssl.SSLObject, name: str | None, _context: ssl.SSLContext) -> None:
        seen.sni.append(name)

    context.sni_callback = record_sni
    dns = FakeDNS({"hooks.example.test": ["127.0.0.1"]})
    async with server:
        pinned = await vet(f"https://hooks.example.test:{seen.port}/h", LOOPBACK_DEV, dns)
        async with netguard.pinned_client(pinned, timeout=5, user_agent="postd-test") as client:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await client.get(pinned.target.url)
    assert seen.sni == ["hooks.example.test"]
    assert seen.heads == []
