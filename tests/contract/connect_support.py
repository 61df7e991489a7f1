"""What the connect-flow tests of every OAuth platform share: a started daemon whose public URL
is :data:`PUBLIC` with one brand and the platform's app pointed at its fake, the browser at the
fake's consent page, the daemon's callback driven in-process, and the database file's bytes (to
show that no raw token is stored)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from daemon import credentials, services
from daemon.clock import FakeClock
from daemon.store.models import Page
from tests.conftest import make_settings, started_app

PUBLIC = "http://postd.test"


@asynccontextmanager
async def connect_app(
    tmp_path: Path, clock: FakeClock, platforms: Mapping[str, Mapping[str, str]], **sections: Any
) -> AsyncIterator[Any]:
    """The daemon (its HTTP app serves the callback) with ``platforms`` apps configured and a
    brand whose id is ``app.brand_id``."""
    settings = make_settings(
        tmp_path,
        f"sqlite:///{tmp_path / 'postd.db'}",
        server={"public_url": PUBLIC},
        security={"secret_key": credentials.generate_key()},
        platforms={name: dict(conf) for name, conf in platforms.items()},
        **sections,
    )
    made = await started_app(settings, clock)
    async with made.sessions() as session, session.begin():
        made.brand_id = (await services.add_brand(session, "Acme", clock.now())).id
    try:
        yield made
    finally:
        await made.dispatcher.stop(0)
        await made.close()


def client(app: Any) -> httpx.AsyncClient:
    """A client of the daemon's HTTP app, as the browser reaches it at :data:`PUBLIC`."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app.http), base_url=PUBLIC)


async def consent(url: str) -> httpx.URL:
    """The browser at the platform's authorization page: the fake signs the user in, consents
    and redirects; where it redirects to."""
    async with httpx.AsyncClient() as browser:
        answer = await browser.get(url)
    assert answer.status_code == 302, answer.text
    return httpx.URL(answer.headers["location"])


async def callback(app: Any, back: httpx.URL) -> httpx.Response:
    """The browser following that redirect to the daemon's callback."""
    async with client(app) as http:
        return await http.get(back.path, params=dict(back.params))


def database_bytes(directory: Path) -> bytes:
    """The SQLite database as stored, its WAL included."""
    return b"".join(f.read_bytes() for f in sorted(directory.glob("postd.db*")))


async def pages(app: Any) -> list[Page]:
    """Every stored page, by external id."""
    async with app.sessions() as session:
        return list(await session.scalars(select(Page).order_by(Page.external_id)))
