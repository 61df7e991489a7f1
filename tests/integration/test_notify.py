"""PostgreSQL LISTEN/NOTIFY: scheduling a post anywhere wakes every daemon's timer."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from daemon import services
from daemon.store import notify
from tests.conftest import make_settings


@pytest.mark.postgres
async def test_scheduling_notifies_listeners_on_commit(
    tmp_path: Path, pg_database: str, app_factory: Any
) -> None:
    """A committed schedule reaches a LISTENing daemon with the post's due instant."""
    app = await app_factory(make_settings(tmp_path, pg_database))
    received: list[datetime] = []
    got = asyncio.Event()

    def on_due(when: datetime) -> None:
        received.append(when)
        got.set()

    stop = asyncio.Event()
    dsn = pg_database
    listener = asyncio.create_task(notify.listen(dsn, on_due, stop))
    try:
        async with app.sessions() as session, session.begin():
            brand = await services.add_brand(session, "b", app.clock.now())
            await session.flush()
            page = await services.add_page(
                session, brand_id=brand.id, platform="sandbox", name="p", now=app.clock.now()
            )
            await session.flush()
        at = app.clock.now() + timedelta(hours=1)
        # The listener needs its LISTEN in place before the NOTIFY: retry the schedule until the
        # notification arrives (bounded), each one a real scheduled post.
        for _ in range(50):
            async with app.sessions() as session, session.begin():
                new = services.NewPost(page_id=page.id, scheduled_at=at, message="hi")
                await services.schedule_post(
                    session, new, now=app.clock.now(), scheduling=app.settings.scheduling
                )
            try:
                await asyncio.wait_for(got.wait(), timeout=0.2)
                break
            except TimeoutError:
                continue
        assert received and received[0] == at
    finally:
        stop.set()
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
