"""A small HTTP/1.1 client for webhook POSTs: h11 over asyncio streams, to a pinned address.

Why not httpx: through ``netguard.pinned_client`` one POST costs ~1.9 ms of CPU here (its pool
scans every connection on each request, plus the client and transport layers), which caps the
deliverer at ~360 deliveries/s on two cores; h11 on a kept-alive stream costs ~0.2 ms.

It keeps the guarantees of :func:`daemon.netguard.pinned_client`:

- it connects only to ``Pinned.ip``, the address :func:`daemon.netguard.resolve` checked (the
  name is never resolved again here), and ignores proxy settings;
- https verifies the certificate for the URL's host name (SNI and ``check_hostname`` on the name,
  CA bundle from certifi, as httpx does);
- it never follows a redirect: a 3xx is returned like any other status;
- it reads at most ``max_body`` bytes of a response; a longer one is cut and its connection
  closed, not reused.

Connections are kept per pinned origin and reused (LIFO) while idle for less than
``idle_expiry`` seconds and not closed by the peer; a response that is not a complete
keep-alive exchange closes its connection. A reused connection that ends before a single byte of
the response (the receiver closed it while idle, its FIN not yet seen here) is tried once more
on a new connection, as HTTP clients do; a delivery carries its ``webhook-id`` both times.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import certifi
import h11

from daemon import netguard

READ_CHUNK = 65_536


class HttpError(Exception):
    """Root of this module's errors; ``kind`` is the attempt log's error class.

    HttpError
     ├── ConnectFailed   TCP or TLS setup failed (nothing was sent)
     └── ProtocolFailed  the peer broke HTTP/1.1 or closed before a full response
    """

    kind = "HTTP_ERROR"


class ConnectFailed(HttpError):
    kind = "CONNECT_ERROR"


class ProtocolFailed(HttpError):
    kind = "PROTOCOL_ERROR"


class Unanswered(ProtocolFailed):
    """The connection ended before any byte of a response: on a kept-alive connection, most
    likely the receiver closed it while idle just as it was reused."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names (the last value of a repeated header)
    body: bytes  # at most max_body bytes


@dataclass(slots=True)
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = 0.0

    def usable(self, now: float, expiry: float) -> bool:
        return (
            now - self.idle_since < expiry
            and not self.reader.at_eof()
            and not self.writer.is_closing()
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


Key = tuple[str, str, int, str]  # scheme, host, port, pinned ip


@dataclass
class Pool:
    """Kept-alive connections per pinned origin. ``tls``: the context https verifies with
    (default: certifi's CA bundle, hostname checked)."""

    idle_expiry: float = 5.0
    max_idle: int = 64
    monotonic: Callable[[], float] = time.monotonic
    tls: ssl.SSLContext | None = None
    _idle: dict[Key, list[_Conn]] = field(default_factory=dict)

    def _context(self) -> ssl.SSLContext:
        if self.tls is None:
            self.tls = ssl.create_default_context(cafile=certifi.where())
        return self.tls

    async def post(
        self,
        pinned: netguard.Pinned,
        headers: Mapping[str, str],
        body: bytes,
        *,
        max_body: int,
    ) -> Response:
        """POST ``body`` to ``pinned.target``'s path at ``pinned.ip``; raise HttpError."""
        target = pinned.target
        key = (target.scheme, target.host, target.port, str(pinned.ip))
        conn = self._checkout(key)
        if conn is not None:
            try:
                return await self._send(key, conn, target, headers, body, max_body)
            except Unanswered:
                pass  # the receiver closed it while idle: once more, on a new connection
        conn = await self._connect(pinned)
        return await self._send(key, conn, target, headers, body, max_body)

    async def _send(
        self,
        key: Key,
        conn: _Conn,
        target: netguard.Target,
        headers: Mapping[str, str],
        body: bytes,
        max_body: int,
    ) -> Response:
        try:
            response, reusable = await _exchange(conn, target, headers, body, max_body)
        except BaseException:
            conn.close()
            raise
        if reusable:
            self._checkin(key, conn)
        else:
            conn.close()
        return response

    def _checkout(self, key: Key) -> _Conn | None:
        idle = self._idle.get(key)
        now = self.monotonic()
        while idle:
            conn = idle.pop()
            if conn.usable(now, self.idle_expiry):
                return conn
            conn.close()
        return None

    def _checkin(self, key: Key, conn: _Conn) -> None:
        idle = self._idle.setdefault(key, [])
        if len(idle) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = self.monotonic()
        idle.append(conn)

    async def _connect(self, pinned: netguard.Pinned) -> _Conn:
        target = pinned.target
        tls = self._context() if target.scheme == "https" else None
        try:
            reader, writer = await asyncio.open_connection(
                str(pinned.ip).partition("%")[0],
                target.port,
                ssl=tls,
                server_hostname=target.host if tls is not None else None,
                limit=READ_CHUNK,
            )
        except ssl.SSLError as exc:
            raise ConnectFailed(f"TLS: {exc}") from exc
        except OSError as exc:
            raise ConnectFailed(str(exc) or type(exc).__name__) from exc
        return _Conn(reader, writer)

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


def host_header(target: netguard.Target) -> str:
    host = f"[{target.host}]" if ":" in target.host else target.host
    default = 443 if target.scheme == "https" else 80
    return host if target.port == default else f"{host}:{target.port}"


async def _exchange(
    conn: _Conn,
    target: netguard.Target,
    headers: Mapping[str, str],
    body: bytes,
    max_body: int,
) -> tuple[Response, bool]:
    """One request and its response; returns whether the connection may be reused."""
    http = h11.Connection(h11.CLIENT, max_incomplete_event_size=16 * 1024)
    fields = [("Host", host_header(target)), ("Content-Length", str(len(body)))]
    fields += [(k, v) for k, v in headers.items() if k.lower() not in ("host", "content-length")]
    try:
        data = http.send(
            h11.Request(method="POST", target=target.path_query or "/", headers=fields)
        )
        data = (data or b"") + (http.send(h11.Data(data=body)) or b"")
        data += http.send(h11.EndOfMessage()) or b""
    except h11.LocalProtocolError as exc:  # a header we built is not valid HTTP
        raise ProtocolFailed(f"request not sent: {exc}") from exc
    conn.writer.write(data)
    received = [0]  # bytes of the response read so far
    try:
        await conn.writer.drain()
        return await _read_response(conn, http, max_body, received)
    except (h11.RemoteProtocolError, OSError) as exc:
        reason = str(exc) or type(exc).__name__
        if not received[0]:  # not a byte of a response came back
            raise Unanswered(reason) from exc
        raise ProtocolFailed(reason) from exc


async def _read_response(
    conn: _Conn, http: h11.Connection, max_body: int, received: list[int]
) -> tuple[Response, bool]:
    status, names, got = 0, {}, bytearray()
    while True:
        event = http.next_event()
        if event is h11.NEED_DATA:
            chunk = await conn.reader.read(READ_CHUNK)
            received[0] += len(chunk)
            http.receive_data(chunk)
            continue
        if isinstance(event, h11.Response):
            status = event.status_code
            names = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers}
        elif isinstance(event, h11.Data):
            got += event.data
            if len(got) > max_body:  # not worth reading on: cut, and close the connection
                return Response(status, names, bytes(got[:max_body])), False
        elif isinstance(event, h11.EndOfMessage):
            reusable = http.our_state is h11.DONE and http.their_state is h11.DONE
            return Response(status, names, bytes(got)), reusable
        elif isinstance(event, h11.ConnectionClosed):
            raise ProtocolFailed("the receiver closed the connection without a response")
