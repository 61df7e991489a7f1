"""End to end, in process: the daemon publishes to the X fake with a page whose access token has
expired. A token-endpoint outage (503) is retried and leaves the page active; a refused refresh
token marks the page for re-connect instead of being retried."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from adapters import x
from daemon import credentials, services
from daemon.clock import FakeClock
from daemon.store.models import Page, PublishAttempt
from tests.conftest import make_settings
from tests.fakes import x as fake_x
from tests.support import run_until_idle, states


async def _app(tmp_path: Path, db_url: str, app_factory: Any, fake: fake_x.FakeX) -> Any:
    settings = make_settings(
        tmp_path,
        db_url,
        security={"secret_key": credentials.generate_key()},
        platforms={
            "twitter": {
                "api_base": fake.base_url,
                "client_id": fake_x.CLIENT_ID,
                "client_secret": fake_x.CLIENT_SECRET,
            }
        },
        retry={"max_attempts": 5},
    )
    return await app_factory(settings)


async def _seed(app: Any, fake: fake_x.FakeX) -> str:
    """One X page (tokens from the fake, as the connect flow stores them), one post due in
    15 minutes; returns the page id."""
    vault = credentials.Vault(credentials.key_source(app.settings).keys)
    creds = {
        **x.token_credentials(fake.issue(fake.alice), app.clock.now()),
        "user_id": fake.alice["id"],
        "username": "alice",
    }
    now = app.clock.now()
    async with app.sessions() as session, session.begin():
        brand = await services.add_brand(session, "Acme", now)
        await session.flush()
        page = await services.add_page(
            session, brand_id=brand.id, platform="twitter", name="X", now=now
        )
        await credentials.store(session, page, vault, creds)
        await session.flush()
        new = services.NewPost(
            page_id=page.id, scheduled_at=now + timedelta(hours=3), message="Hello X"
        )
        await services.schedule_post(
            session, new, now=now, scheduling=app.settings.scheduling, check_lead=False
        )
        return page.id


async def _page(app: Any, page_id: str) -> Page:
    async with app.sessions() as session:
        page = await session.get(Page, page_id)
        assert page is not None
        return page


async def test_refresh_outage_is_retried_and_the_page_stays_active(
    tmp_path: Path, db_url: str, app_factory: Any, clock: FakeClock
) -> None:
    """The token expired by publish time; the token endpoint answers 503 twice: the post is
    rescheduled (attempts say why), published once, and the page never leaves "active"."""
    fake = fake_x.FakeX(clock.now)
    await fake.start()
    try:
        app = await _app(tmp_path, db_url, app_factory, fake)
        page_id = await _seed(app, fake)
        fake.fail("token", "unavailable", times=2)

        await run_until_idle(app)

        assert await states(app) == Counter({"published": 1})
        assert fake.root_texts() == ["Hello X"]
        assert (await _page(app, page_id)).status == "active"
        async with app.sessions() as session:
            attempts = list(await session.scalars(select(PublishAttempt)))
        retries = [(a.error_code, a.http_status) for a in attempts if a.outcome == "retry"]
        assert retries == [("UNAVAILABLE", 503), ("UNAVAILABLE", 503)]
        assert len(fake.calls("token")) == 3 and fake.violations == []
    finally:
        await fake.stop()


async def test_refused_refresh_marks_the_page_for_reconnect(
    tmp_path: Path, db_url: str, app_factory: Any, clock: FakeClock
) -> None:
    """X refusing the refresh token fails the post AUTH_EXPIRED and marks the page
    needs_reauth after one token call (no retries against a dead token)."""
    fake = fake_x.FakeX(clock.now)
    await fake.start()
    try:
        app = await _app(tmp_path, db_url, app_factory, fake)
        page_id = await _seed(app, fake)
        fake.fail("token", "invalid_grant")

        await run_until_idle(app)

        assert await states(app) == Counter({"failed": 1})
        assert (await _page(app, page_id)).status == "needs_reauth"
        assert len(fake.calls("token")) == 1 and fake.root_texts() == []
    finally:
        await fake.stop()
