"""The harness of the fake platforms: a Starlette app served by uvicorn on a free 127.0.0.1 port,
in the test's own event loop, that records every request and fails on demand.

A fake subclasses :class:`FakePlatform`, declares its routes with :meth:`FakePlatform.route` and
answers rate limits in its platform's own words (:meth:`FakePlatform.rate_limited`). Tests script
failures per route name with :meth:`FakePlatform.fail`; the generic modes are handled here, the
platform-specific ones (``ambiguous_after``, ``expired_token``, ``duplicate``...) by the fake's
handler, which receives the mode it was given:

    rate_limit     429 with the platform's rate-limit headers; nothing happens
    unavailable    503; nothing happens
    server_error   500; nothing happens
    hang           no answer until the server stops (past the client's read timeout); nothing
                   happens
    garbage        200 with an HTML body; nothing happens
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

GENERIC_MODES = ("rate_limit", "unavailable", "server_error", "hang", "garbage")


@dataclass(frozen=True)
class Recorded:
    """One request as the fake received it."""

    route: str
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


Handler = Callable[[Request, Recorded, str | None], Awaitable[Response]]


class _Server(uvicorn.Server):
    """uvicorn for a fake: the test runner owns the signals, and stopping takes milliseconds.
    uvicorn itself checks ``should_exit`` every 100 ms, then pauses 100 ms before closing
    connections and polls them every 100 ms: ~0.2 s per fake, in hundreds of tests."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.exit_now = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def main_loop(self) -> None:
        await self.on_tick(0)  # the Date header, once
        await self.exit_now.wait()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
        # A connection with no request running closes at once; a running one gets its grace
        # (the hanging mode returns as soon as stop() releases it).
        if self.server_state.tasks:
            grace = self.config.timeout_graceful_shutdown
            _, late = await asyncio.wait(set(self.server_state.tasks), timeout=grace)
            for task in late:
                task.cancel()


class FakePlatform:
    """Base of the fakes: routes, request log, scripted failures, lifecycle."""

    name = "fake"

    def __init__(self, now: Callable[[], datetime]) -> None:
        self.now = now
        self.requests: list[Recorded] = []
        self._failures: dict[str, deque[str]] = defaultdict(deque)
        self._routes: list[Route] = []
        self._files: dict[str, tuple[bytes, str]] = {}
        self._release = asyncio.Event()
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.port = 0
        self.route("GET", "/files/{name}", "file", self._file)

    # --- scripting ----------------------------------------------------------------------------

    def fail(self, route: str, mode: str, times: int = 1) -> None:
        """The next ``times`` requests to ``route`` fail with ``mode``."""
        self._failures[route].extend([mode] * times)

    def calls(self, route: str) -> list[Recorded]:
        return [r for r in self.requests if r.route == route]

    def serve_file(self, name: str, data: bytes, mime: str) -> str:
        """Serve ``data`` at ``/files/<name>`` (media for posts); returns its URL."""
        self._files[name] = (data, mime)
        return f"{self.base_url}/files/{name}"

    # --- routes -------------------------------------------------------------------------------

    def route(self, method: str, path: str, name: str, handler: Handler) -> None:
        async def endpoint(request: Request) -> Response:
            body = await request.body()
            recorded = Recorded(
                route=name,
                method=request.method,
                path=request.url.path,
                query=parse_qs(request.url.query),
                headers={k.lower(): v for k, v in request.headers.items()},
                body=body,
            )
            self.requests.append(recorded)
            failures = self._failures.get(name)
            mode = failures.popleft() if failures else None
            if mode in GENERIC_MODES:
                return await self._generic(mode)
            return await handler(request, recorded, mode)

        self._routes.append(Route(path, endpoint, methods=[method], name=name))

    async def _generic(self, mode: str | None) -> Response:
        if mode == "rate_limit":
            return self.rate_limited()
        if mode == "unavailable":
            return JSONResponse(self.error_body("unavailable"), 503)
        if mode == "server_error":
            return JSONResponse(self.error_body("server_error"), 500)
        if mode == "hang":
            await self._release.wait()
            return Response(status_code=504)
        return Response("<html>an error page</html>", 200, media_type="text/html")

    def rate_limited(self) -> Response:
        raise NotImplementedError

    def error_body(self, what: str) -> Any:
        return {"error": what}

    async def _file(self, request: Request, _rec: Recorded, _mode: str | None) -> Response:
        data, mime = self._files[request.path_params["name"]]
        return Response(data, 200, media_type=mime)

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            Starlette(routes=self._routes),
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0)

    async def stop(self) -> None:
        self._release.set()
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            self._server.exit_now.set()
            await self._task


@contextlib.contextmanager
def in_thread(make: Callable[[Callable[[], datetime]], FakePlatform]) -> Iterator[FakePlatform]:
    """A fake on its own event loop in a thread, for synchronous callers (the CLI runner)."""
    loop = asyncio.new_event_loop()
    ready: Future[FakePlatform] = Future()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            fake = make(lambda: datetime.now(UTC))
            loop.run_until_complete(fake.start())
        except BaseException as exc:
            ready.set_exception(exc)
            return
        ready.set_result(fake)
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    fake = ready.result(timeout=30)
    try:
        yield fake
    finally:
        asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()
