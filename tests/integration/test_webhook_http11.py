"""The webhook HTTP/1.1 client against loopback servers that misbehave on purpose: keep-alive
reuse, chunked and oversized answers, early closes, TLS that must verify, and the Sender's
classification of each outcome."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from daemon import netguard
from daemon.events import http11, sender

POLICY = netguard.Policy(allow_loopback=True, allow_http=True)
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length)


class Server:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.heads: list[bytes] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


Serve = Callable[..., Awaitable[tuple[Server, int]]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler, tls: ssl.SSLContext | None = None) -> tuple[Server, int]:
        server = Server(handler)
        listening = await asyncio.start_server(server._serve, "127.0.0.1", 0, ssl=tls)
        servers.append(listening)
        return server, listening.sockets[0].getsockname()[1]

    yield start
    for listening in servers:
        listening.close()
        await listening.wait_closed()


def pinned(url: str) -> netguard.Pinned:
    target = netguard.check_url(url, POLICY)
    assert target.ip is not None
    return netguard.Pinned(target, target.ip)


def ok_handler(server_heads: list[bytes], answer: bytes) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, _body = await read_request(reader)
            server_heads.append(head)
            writer.write(answer)
            await writer.drain()

    return handle


async def test_keep_alive_reuses_one_connection_and_sends_host_and_length(serve: Serve) -> None:
    """Three POSTs in a row go over one connection with Host and Content-Length set."""
    heads: list[bytes] = []
    server, port = await serve(ok_handler(heads, b"HTTP/1.1 204 No Content\r\n\r\n"))
    pool = http11.Pool()
    for n in range(3):
        response = await pool.post(
            pinned(f"http://127.0.0.1:{port}/hook?n={n}"), {"X-A": "b"}, b"{}", max_body=100
        )
        assert response.status == 204
    pool.close()
    assert server.connections == 1
    assert heads[2].startswith(b"POST /hook?n=2 HTTP/1.1\r\n")
    assert f"host: 127.0.0.1:{port}".encode() in heads[0].lower()
    assert b"content-length: 2" in heads[0].lower() and b"x-a: b" in heads[0].lower()


async def test_chunked_and_oversized_answers(serve: Serve) -> None:
    """A chunked body is read whole; one past max_body is cut and its connection not reused."""
    heads: list[bytes] = []
    chunked = b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    big = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100_000
    answers = [chunked, big, big]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while answers:
            head, _ = await read_request(reader)
            heads.append(head)
            writer.write(answers.pop(0))
            await writer.drain()

    server, port = await serve(handle)
    pool = http11.Pool()
    url = f"http://127.0.0.1:{port}/h"
    first = await pool.post(pinned(url), {}, b"x", max_body=1000)
    assert (first.status, first.body) == (500, b"hello")
    second = await pool.post(pinned(url), {}, b"x", max_body=1000)
    assert second.status == 200 and len(second.body) == 1000
    third = await pool.post(pinned(url), {}, b"x", max_body=1000)
    assert third.status == 200
    pool.close()
    assert server.connections == 2  # the cut answer's connection was dropped


async def test_a_close_without_answer_is_a_protocol_error(serve: Serve) -> None:
    """The receiver hangs up after reading: ProtocolFailed, nothing reused."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    _, port = await serve(handle)
    with pytest.raises(http11.ProtocolFailed):
        await http11.Pool().post(pinned(f"http://127.0.0.1:{port}/"), {}, b"x", max_body=10)


async def test_nothing_listening_is_a_connect_error() -> None:
    """A refused connection is ConnectFailed (nothing was sent)."""
    with pytest.raises(http11.ConnectFailed):
        await http11.Pool().post(pinned("http://127.0.0.1:9/"), {}, b"x", max_body=10)


async def test_a_connection_closed_by_the_peer_while_idle_is_not_reused(serve: Serve) -> None:
    """The receiver closes kept-alive connections after one answer: the next POST reconnects."""

    closed = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        closed.set()

    server, port = await serve(handle)
    pool = http11.Pool()
    for _ in range(3):
        response = await pool.post(pinned(f"http://127.0.0.1:{port}/"), {}, b"x", max_body=10)
        assert response.status == 200
        await closed.wait()  # the peer closed (its FIN is on the loopback)
        closed.clear()
    pool.close()
    assert server.connections == 3


def _certificate(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A self-signed certificate for 127.0.0.1: (server context, a client context trusting it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "postd test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_path, key_path)
    client = ssl.create_default_context(cafile=str(cert_path))
    return server, client


async def test_https_verifies_the_certificate(serve: Serve, tmp_path: Path) -> None:
    """An untrusted certificate fails (CONNECT_ERROR, TLS); a trusted one for the URL's host is
    accepted."""
    server_tls, client_tls = _certificate(tmp_path)
    heads: list[bytes] = []
    _, port = await serve(
        ok_handler(heads, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), server_tls
    )
    url = f"https://127.0.0.1:{port}/secure"
    with pytest.raises(http11.ConnectFailed, match="TLS"):
        await http11.Pool().post(pinned(url), {}, b"x", max_body=10)
    trusting = http11.Pool(tls=client_tls)
    response = await trusting.post(pinned(url), {}, b"x", max_body=10)
    trusting.close()
    assert response.status == 200 and heads[-1].startswith(b"POST /secure HTTP/1.1")


@pytest.mark.parametrize(
    ("answer", "code", "error"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 200, None),
        (
            b"HTTP/1.1 302 Found\r\nLocation: http://10.0.0.1/\r\nContent-Length: 0\r\n\r\n",
            302,
            "HTTP 302: redirect not followed (Location: http://10.0.0.1/)",
        ),
        (b"HTTP/1.1 503 Busy\r\nContent-Length: 9\r\n\r\ntry later", 503, "HTTP 503: try later"),
        (b"garbage\r\n\r\n", None, "PROTOCOL_ERROR"),
    ],
)
async def test_sender_classifies_answers(
    serve: Serve, answer: bytes, code: int | None, error: str | None
) -> None:
    """The attempt records the status and a readable error; a redirect is never followed."""
    heads: list[bytes] = []
    _, port = await serve(ok_handler(heads, answer))
    send = sender.Sender(POLICY, timeout=5, user_agent="postd/t")
    sent = await send.post(f"http://127.0.0.1:{port}/x", {"webhook-id": "msg_1"}, b"{}")
    await send.aclose()
    assert sent.attempted.status_code == code
    if error is None:
        assert sent.attempted.error is None
    else:
        assert (sent.attempted.error or "").startswith(error)
    assert len(heads) == 1  # nothing else was requested (no redirect followed)


async def test_sender_refuses_what_the_policy_refuses() -> None:
    """With the default policy a loopback URL is UNSAFE_URL, and nothing is connected."""
    send = sender.Sender(netguard.Policy(), timeout=5, user_agent="postd/t")
    sent = await send.post("https://127.0.0.1:9/x", {}, b"{}")
    assert sent.attempted.status_code is None
    assert (sent.attempted.error or "").startswith("UNSAFE_URL: ")
