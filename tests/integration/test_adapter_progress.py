"""The adapters' progress store: the database implementation (SQLite and PostgreSQL, through the
migrations) and the in-memory one behave the same."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from adapters import _progress
from daemon import progress, services
from daemon.clock import FakeClock
from tests.conftest import make_settings


async def _post_id(app: Any) -> str:
    now = app.clock.now()
    async with app.sessions() as session, session.begin():
        brand = await services.add_brand(session, "Acme", now)
        await session.flush()
        page = await services.add_page(
            session, brand_id=brand.id, platform="sandbox", name="s", now=now
        )
        await session.flush()
        new = services.NewPost(
            page_id=page.id, scheduled_at=now + timedelta(hours=1), message="hi", media=()
        )
        post = await services.schedule_post(
            session, new, now=now, scheduling=app.settings.scheduling,
            check_lead=False, adapter=app.adapters["sandbox"],
        )  # fmt: skip
        return str(post.id)


@pytest.fixture(params=["memory", "database"])
async def store_and_post(
    request: pytest.FixtureRequest, tmp_path: Path, db_url: str, app_factory: Any
) -> tuple[_progress.ProgressStore, str]:
    app = await app_factory(make_settings(tmp_path, db_url))
    post_id = await _post_id(app)
    if request.param == "memory":
        return _progress.MemoryProgress(), post_id
    return progress.DbProgress(app.engine, app.clock), post_id


async def test_put_get_replace_delete(
    store_and_post: tuple[_progress.ProgressStore, str], clock: FakeClock
) -> None:
    """put stores, a second put replaces, keys and posts are separate, delete forgets (twice
    is fine)."""
    store, post_id = store_and_post

    assert await store.get(post_id, "ig_container:abc") is None
    await store.put(post_id, "ig_container:abc", "17890000001")
    await store.put(post_id, "ig_publish_sent:abc", "2026-11-23T04:00:00+00:00")
    await store.put(post_id, "ig_container:abc", "17890000002")

    assert await store.get(post_id, "ig_container:abc") == "17890000002"
    assert await store.get(post_id, "ig_publish_sent:abc") == "2026-11-23T04:00:00+00:00"
    assert await store.get("another_post", "ig_container:abc") is None
    await store.delete(post_id, "ig_container:abc")
    await store.delete(post_id, "ig_container:abc")
    assert await store.get(post_id, "ig_container:abc") is None
    assert await store.get(post_id, "ig_publish_sent:abc") is not None


async def test_purge_drops_progress_of_posts_ended_a_week_ago(
    tmp_path: Path, db_url: str, app_factory: Any
) -> None:
    """The daily retention deletes the progress of a post that ended over a week ago and keeps
    the progress of one still scheduled (a later try resumes from it)."""
    app = await app_factory(make_settings(tmp_path, db_url))
    store = progress.DbProgress(app.engine, app.clock)
    live, ended = await _post_id(app), await _post_id(app)
    await store.put(live, "yt_session", "https://upload.example/s1")
    await store.put(ended, "yt_session", "https://upload.example/s2")
    async with app.sessions() as session, session.begin():
        await services.cancel_post(session, ended, app.clock.now())

    async with app.sessions() as session, session.begin():
        assert await progress.purge(session, app.clock.now()) == 0  # ended just now: kept
    app.clock.advance(progress.RETENTION.total_seconds() + 60)
    async with app.sessions() as session, session.begin():
        assert await progress.purge(session, app.clock.now()) == 1

    assert await store.get(ended, "yt_session") is None
    assert await store.get(live, "yt_session") == "https://upload.example/s1"
