"""The real stack for black-box API tests: a migrated SQLite database, ``App.start()`` (uvicorn on
a free 127.0.0.1 port, the gate, the dispatcher pumping, the sandbox platform) on its own event
loop in a thread, and users/tokens made by the token service. Synchronous clients (the official
SDK, httpx, schemathesis) then talk to it over loopback like any integration would.
"""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

MISSING = [
    name for name in ("daemon.tokens", "daemon.api.gate") if importlib.util.find_spec(name) is None
]
needs_stack = pytest.mark.skipif(
    bool(MISSING), reason=f"the real API stack is not built yet (missing {', '.join(MISSING)})"
)

# Limits high enough that a test suite never meets them, except where a test lowers them.
ROOMY_TIER = {
    "publishes": 100_000,
    "replies": 100_000,
    "reads": 10_000_000,
    "webhooks": 100_000,
    "per_minute": 1_000_000,
    "per_day": 10_000_000,
    "storage_bytes": 1 << 30,
    "max_file_bytes": 100 << 20,
    "active_keys": 25,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Live:
    """A running postd: ``base_url`` ends in ``/api/v1``; ``token`` has every scope."""

    app: Any
    loop: asyncio.AbstractEventLoop
    root_url: str
    token: str = ""
    user_id: str = ""
    brand_id: str = ""
    page_id: str = ""
    pages: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/api/v1"

    def run(self, make: Callable[[], Awaitable[T]]) -> T:
        """Run a coroutine on the server's loop (store reads, more tokens) and return its result."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(_call(make), self.loop)
        return future.result(timeout=60)

    def new_token(
        self,
        scopes: Iterable[str] = ("*",),
        *,
        email: str | None = None,
        tier: str = "elite",
        brands: Iterable[str] = (),
    ) -> str:
        """A live token (of a new user with its own brand and page when ``email`` is given)."""
        return self.run(lambda: _token(self, tuple(scopes), email, tier, tuple(brands)))


async def _call(make: Callable[[], Awaitable[T]]) -> T:
    return await make()


async def _token(
    live: Live, scopes: tuple[str, ...], email: str | None, tier: str, brands: tuple[str, ...]
) -> str:
    from daemon import services, tokens

    app, now = live.app, live.app.clock.now()
    async with app.sessions() as session, session.begin():
        user_id = live.user_id
        if email is not None:
            user, _sandbox = await tokens.add_user(session, email, now, tier=tier)
            user_id = user.id
            brand = await services.add_brand(session, f"brand of {email}", now, owner_id=user_id)
            await session.flush()
            await services.add_page(
                session, brand_id=brand.id, platform="sandbox", name="Main", now=now
            )
        _, raw = await tokens.create_token(
            session,
            user_id=user_id,
            name="test token",
            scopes=scopes,
            now=now,
            brand_ids=brands,
            tiers=app.settings.tiers,
        )
    return raw


async def _seed(live: Live) -> None:
    from daemon import services, tokens

    app, now = live.app, live.app.clock.now()
    async with app.sessions() as session, session.begin():
        user, _sandbox = await tokens.add_user(
            session, "you@example.com", now, tier="elite", firstname="Alex", lastname="Doe"
        )
        brand = await services.add_brand(session, "Acme Co.", now, owner_id=user.id)
        await session.flush()
        for platform, name in (("sandbox", "Acme Sandbox"), ("sandbox", "Acme Second")):
            page = await services.add_page(
                session, brand_id=brand.id, platform=platform, name=name, now=now, username="acme"
            )
            await session.flush()
            live.pages.append(page.id)
        live.user_id, live.brand_id, live.page_id = user.id, brand.id, live.pages[0]
    live.token = await _token(live, ("*",), None, "elite", ())


async def _gate_close(app: Any) -> None:
    from starlette.routing import Mount

    for route in app.http.routes:
        if isinstance(route, Mount) and hasattr(route.app, "aclose"):
            await route.app.aclose()


def serve(tmp_path: Path, **sections: dict[str, Any]) -> Iterator[Live]:
    """Start postd on a thread; yield it running; stop it (SIGTERM path) on exit."""
    from daemon.app import App
    from daemon.store import db
    from tests.conftest import make_settings

    port = free_port()
    sections.setdefault("tiers", {})
    for tier in ("free", "pro", "elite"):
        sections["tiers"].setdefault(tier, ROOMY_TIER)
    settings = make_settings(
        tmp_path,
        f"sqlite:///{tmp_path / 'live.db'}",
        server={"bind": f"127.0.0.1:{port}"},
        **sections,
    )
    ready: Future[Live] = Future()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def main() -> None:
        app = App(settings)
        try:
            await db.migrate(app.engine)
            await app.start()
            live = Live(app, loop, f"http://127.0.0.1:{port}")
            await _seed(live)
        except BaseException as exc:
            ready.set_exception(exc)
            raise
        ready.set_result(live)
        await stop.wait()
        await _gate_close(app)
        await app.stop()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    try:
        yield ready.result(timeout=60)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=60)
        loop.close()
