"""POST /api/v1/posts/publish through the gate shim, with the real dispatcher pumping."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from daemon import lifecycle, services
from daemon.api import limits, posting
from daemon.store.models import Page, Post
from tests.api_shim import World, build_world
from tests.conftest import make_settings
from tests.integration.test_api_endpoints import assert_error


async def pumping(app: Any) -> AsyncIterator[None]:
    """Run the dispatcher's pump as the daemon does (woken by notify_due), stop it after."""
    task = asyncio.create_task(app.dispatcher.pump())
    try:
        yield
    finally:
        await app.dispatcher.stop(0)
        await task


async def make_world(tmp_path: Path, app_factory: Any, url: str = "", **sections: Any) -> World:
    settings = make_settings(tmp_path, url or f"sqlite:///{tmp_path / 'pub.db'}", **sections)
    return await build_world(await app_factory(settings))


@pytest.fixture
async def world(tmp_path: Path, db_url: str, app_factory: Any) -> AsyncIterator[World]:
    """The two users' world on SQLite and on PostgreSQL, the dispatcher pumping."""
    made = await make_world(tmp_path, app_factory, db_url)
    async for _ in pumping(made.app):
        yield made


async def only_post(world: World) -> Post:
    async with world.app.sessions() as session:
        (post,) = list(await session.scalars(select(Post)))
    return post


async def test_publish_now_answers_after_the_platform_accepted(world: World) -> None:
    """201 with the platform's id, short code, permalink; the post is published in the store."""
    body = {
        "page_id": world.sandbox_page,
        "message": "Live from the API 🚀",
        "media_urls": ["https://cdn.example.com/hero.jpg"],
        "first_comment": "More details at acme.com",
    }
    async with world.client() as http:
        response = await http.post("/posts/publish", headers=world.token("w"), json=body)
        published = (await http.get("/posts/published", headers=world.token("r"))).json()
    assert response.status_code == 201, response.text
    made = response.json()
    assert set(made) == {
        "post_id",
        "id",
        "platform",
        "published_at",
        "message",
        "permalink",
        "status",
    }
    assert made["platform"] == "SANDBOX" and made["status"] == "published"
    assert made["message"] == "Live from the API 🚀"
    post = await only_post(world)
    assert post.state == lifecycle.PUBLISHED and made["id"] == post.id
    assert made["post_id"] == post.remote_id and made["permalink"] == post.permalink
    assert [p["id"] for p in published["published_posts"]] == [post.id]
    records = world.app.adapters["sandbox"].published_records()
    assert [r.remote_id for r in records] == [post.remote_id]


async def test_publish_twice_in_a_row_hits_the_gap_guardrail(world: World) -> None:
    """A second publish on the page within 60 s is 429 with retry_after_seconds, not published."""
    body = {"page_id": world.sandbox_page, "message": "one"}
    async with world.client() as http:
        first = await http.post("/posts/publish", headers=world.token("w"), json=body)
        world.app.clock.advance(20)
        second = await http.post(
            "/posts/publish", headers=world.token("w"), json={**body, "message": "two"}
        )
    assert first.status_code == 201
    error = assert_error(second, 429, "PAGE_PUBLISH_GUARDRAIL")
    assert error["retry_after_seconds"] == 40
    assert len(world.app.adapters["sandbox"].published_records()) == 1


async def test_platform_refusal_is_502_with_platform_code(world: World) -> None:
    """A permanent platform error is 502 PUBLISH_FAILED naming the platform's code."""
    body = {"page_id": world.sandbox_page, "message": "[sandbox:reject] nope"}
    async with world.client() as http:
        response = await http.post("/posts/publish", headers=world.token("w"), json=body)
    error = assert_error(response, 502, "PUBLISH_FAILED")
    post = await only_post(world)
    assert error["platform_code"] == "SANDBOX_REJECTED" and error["id"] == post.id
    assert error["retryable"] is False and post.state == lifecycle.FAILED


async def test_platform_without_adapter_fails_cleanly(world: World) -> None:
    """A page whose platform has no adapter configured is 502 with PLATFORM_UNAVAILABLE."""
    world.app.adapters.pop("instagram")  # issue 5 built it: take it away again for this case
    await set_page(world, world.instagram_page, credentials=b"gAAAA-connected")
    body = {"page_id": world.instagram_page, "message": "hello"}
    async with world.client() as http:
        response = await http.post("/posts/publish", headers=world.token("w"), json=body)
    assert assert_error(response, 502, "PUBLISH_FAILED")["platform_code"] == "PLATFORM_UNAVAILABLE"


async def set_page(world: World, page_id: str, **values: Any) -> None:
    async with world.app.sessions() as session, session.begin():
        await session.execute(update(Page).where(Page.id == page_id).values(**values))


async def test_page_not_connected_is_409_and_writes_nothing(world: World) -> None:
    """Publishing on a page that cannot publish (never connected; or its credentials refused,
    needs_reauth) is 409 PAGE_NOT_CONNECTED naming the page and the command that fixes it, before
    any post is written or any publish is counted; once connected, the same body publishes."""
    headers = world.token("w")

    async def publish(page_id: str) -> Any:
        async with world.client() as http:
            return await http.post(
                "/posts/publish", headers=headers, json={"page_id": page_id, "message": "hi"}
            )

    async def counted() -> int:
        principal = world.principals["w"]
        now = world.app.clock.now()
        usage = await limits.usage(world.app, principal.user_id, principal.tier, now)
        return int(usage["publishes"]["used"])

    async with world.app.sessions() as session, session.begin():
        now = world.app.clock.now()
        page = await services.add_page(
            session, brand_id=world.brand_a, platform="facebook", name="FB", now=now
        )
        facebook = page.id
    before = await counted()
    never = assert_error(await publish(facebook), 409, "PAGE_NOT_CONNECTED")
    assert never["page_id"] == facebook and "no credentials yet" in never["message"]
    assert f"postd page connect facebook --page {facebook}" in never["message"]
    await set_page(world, world.sandbox_page, status="needs_reauth", status_reason="AUTH_EXPIRED")
    refused = assert_error(await publish(world.sandbox_page), 409, "PAGE_NOT_CONNECTED")
    assert "refused its credentials (AUTH_EXPIRED)" in refused["message"]
    async with world.app.sessions() as session:
        assert list(await session.scalars(select(Post))) == []
    assert await counted() == before
    await set_page(world, world.sandbox_page, status="active", status_reason=None)
    assert (await publish(world.sandbox_page)).status_code == 201


async def test_transient_failure_cancels_so_it_never_goes_out_later(
    tmp_path: Path, app_factory: Any
) -> None:
    """A transient platform error is 502 retryable; the post is cancelled, nothing published."""
    world = await make_world(tmp_path, app_factory, sandbox={"failure_rate": 1.0, "seed": 1})
    async for _ in pumping(world.app):
        async with world.client() as http:
            response = await http.post(
                "/posts/publish",
                headers=world.token("w"),
                json={"page_id": world.sandbox_page, "message": "flaky"},
            )
    error = assert_error(response, 502, "PUBLISH_FAILED")
    assert error["retryable"] is True and error["platform_code"] == "SANDBOX_UNAVAILABLE"
    post = await only_post(world)
    assert post.state == lifecycle.CANCELLED
    assert world.app.adapters["sandbox"].published_records() == []


async def test_publish_validates_like_schedule(world: World) -> None:
    """No message and no media is 400 MISSING_FIELD; an unknown page is 404; nothing written."""
    async with world.client() as http:
        empty = await http.post(
            "/posts/publish", headers=world.token("w"), json={"page_id": world.sandbox_page}
        )
        unknown = await http.post(
            "/posts/publish", headers=world.token("w"), json={"page_id": "x", "message": "m"}
        )
        no_scope = await http.post(
            "/posts/publish",
            headers=world.token("ro", scopes=("read:posts",)),
            json={"page_id": world.sandbox_page, "message": "m"},
        )
    assert_error(empty, 400, "MISSING_FIELD")
    assert_error(unknown, 404, "NOT_FOUND")
    assert_error(no_scope, 403, "MISSING_SCOPE")
    async with world.app.sessions() as session:
        assert list(await session.scalars(select(Post))) == []


async def test_dispatcher_deferral_is_429_cancelled_and_refunded(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the claim defers the post (a race the API check lost), it is cancelled, 429, refunded."""

    async def no_check(*_args: Any) -> None:
        return None

    body = {"page_id": world.sandbox_page, "message": "one"}
    headers = world.token("w")
    principal = world.principals["w"]
    async with world.client() as http:
        assert (await http.post("/posts/publish", headers=headers, json=body)).status_code == 201
        monkeypatch.setattr(posting, "check_now", no_check)
        world.app.clock.advance(15)
        raced = await http.post("/posts/publish", headers=headers, json={**body, "message": "2"})
    error = assert_error(raced, 429, "PAGE_PUBLISH_GUARDRAIL")
    assert error["retry_after_seconds"] == 45
    async with world.app.sessions() as session:
        states = sorted((p.message, p.state) for p in await session.scalars(select(Post)))
    assert states == [("2", lifecycle.CANCELLED), ("one", lifecycle.PUBLISHED)]
    usage = await limits.usage(world.app, principal.user_id, principal.tier, world.app.clock.now())
    assert usage["publishes"]["used"] == 1
