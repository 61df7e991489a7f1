"""/api/v1 scheduled posts through the gate shim: list, read, cancel, edit, bulk, published list."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from daemon import lifecycle
from daemon.store.models import Post
from tests.api_shim import World, build_world
from tests.conftest import make_settings
from tests.integration.test_api_endpoints import SCHEDULED_POST_KEYS, assert_error, post_count


@pytest.fixture
async def world(tmp_path: Path, db_url: str, app_factory: Any) -> World:
    """The two users' world on SQLite and on PostgreSQL."""
    return await build_world(await app_factory(make_settings(tmp_path, db_url)))


async def schedule(http: Any, world: World, page: str, minutes: float, text: str = "hi") -> str:
    body = {"page_id": page, "message": text, "scheduled_at": world.at(minutes)}
    response = await http.post("/posts/schedule", headers=world.token("w"), json=body)
    assert response.status_code == 201, response.text
    post_id: str = response.json()["scheduled_post"]["id"]
    return post_id


async def set_state(world: World, post_id: str, **values: Any) -> None:
    async with world.app.sessions() as session, session.begin():
        await session.execute(update(Post).where(Post.id == post_id).values(**values))


async def test_list_scheduled_pages_through_cursor_in_time_order(world: World) -> None:
    """GET /posts/scheduled walks every pending post once, soonest first, via next_cursor."""
    async with world.client() as http:
        made = [await schedule(http, world, world.sandbox_page, 20 + 2 * i) for i in range(5)]
        foreign = await schedule(http, world, world.page_b, 30)
        seen: list[str] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 2, "page_id": world.sandbox_page}
            if cursor:
                params["cursor"] = cursor
            body = (
                await http.get("/posts/scheduled", headers=world.token("r"), params=params)
            ).json()
            seen += [p["id"] for p in body["scheduled_posts"]]
            cursor = body["next_cursor"]
            assert body["has_more"] is (cursor is not None)
            if not body["has_more"]:
                break
        everything = (await http.get("/posts/scheduled", headers=world.token("r"))).json()
    assert seen == made
    assert foreign in {p["id"] for p in everything["scheduled_posts"]}
    assert set(everything["scheduled_posts"][0]) == SCHEDULED_POST_KEYS


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"limit": 0}, "INVALID_REQUEST"),
        ({"limit": 101}, "INVALID_REQUEST"),
        ({"limit": "ten"}, "INVALID_REQUEST"),
        ({"cursor": "not-a-cursor"}, "INVALID_REQUEST"),
        ({"page_id": "unknown"}, "NOT_FOUND"),
    ],
)
async def test_list_scheduled_bad_query(world: World, params: dict[str, Any], code: str) -> None:
    """Out-of-range limit, forged cursor, unknown page: catalog errors, never 422."""
    async with world.client() as http:
        response = await http.get("/posts/scheduled", headers=world.token("r"), params=params)
    assert_error(response, 404 if code == "NOT_FOUND" else 400, code)


async def test_other_users_posts_are_invisible(world: World) -> None:
    """A token restricted to brand B does not see, read, edit or cancel brand A's posts."""
    narrow = world.token("narrow", brands=[world.brand_b])
    async with world.client() as http:
        post_id = await schedule(http, world, world.sandbox_page, 30)
        listed = (await http.get("/posts/scheduled", headers=narrow)).json()
        read = await http.get(f"/posts/scheduled/{post_id}", headers=narrow)
        edit = await http.patch(
            f"/posts/scheduled/{post_id}", headers=narrow, json={"message": "mine now"}
        )
        cancel = await http.delete(f"/posts/scheduled/{post_id}", headers=narrow)
    assert listed["scheduled_posts"] == []
    for response in (read, edit, cancel):
        assert_error(response, 404, "NOT_FOUND")


async def test_get_one_post_explains_itself(world: World) -> None:
    """GET /posts/scheduled/{id} has the create shape plus why: deferral, last error, attempts."""
    async with world.client() as http:
        post_id = await schedule(http, world, world.sandbox_page, 30)
        body = (await http.get(f"/posts/scheduled/{post_id}", headers=world.token("r"))).json()
    post = body["scheduled_post"]
    assert set(post) >= SCHEDULED_POST_KEYS
    assert post["attempts"] == [] and post["attempts_count"] == 0
    assert post["defer_reason"] is None and post["last_error"] is None


async def test_cancel_then_404_and_publishing_is_409(world: World) -> None:
    """DELETE answers {"success": true, "id"}, then 404; a post in flight is 409."""
    async with world.client() as http:
        post_id = await schedule(http, world, world.sandbox_page, 30)
        busy = await schedule(http, world, world.sandbox_page, 60)
        await set_state(world, busy, state=lifecycle.PUBLISHING)
        first = await http.delete(f"/posts/scheduled/{post_id}", headers=world.token("w"))
        again = await http.delete(f"/posts/scheduled/{post_id}", headers=world.token("w"))
        in_flight = await http.delete(f"/posts/scheduled/{busy}", headers=world.token("w"))
        listed = (await http.get("/posts/scheduled", headers=world.token("r"))).json()
    assert first.status_code == 200 and first.json() == {"success": True, "id": post_id}
    assert_error(again, 404, "NOT_FOUND")
    assert_error(in_flight, 409, "POST_PUBLISHING")
    assert [p["id"] for p in listed["scheduled_posts"]] == [busy]


async def test_patch_edits_message_and_time_with_checks(world: World) -> None:
    """PATCH edits message and time, re-checking lead, guardrails; in flight is 409."""
    async with world.client() as http:
        post_id = await schedule(http, world, world.sandbox_page, 30)
        neighbour = await schedule(http, world, world.sandbox_page, 90)
        path = f"/posts/scheduled/{post_id}"
        moved = await http.patch(
            path, headers=world.token("w"), json={"message": "new", "scheduled_at": world.at(45)}
        )
        too_soon = await http.patch(
            path, headers=world.token("w"), json={"publish_at": world.at(2)}
        )
        clash = await http.patch(
            path, headers=world.token("w"), json={"scheduled_at": world.at(90.5)}
        )
        empty = await http.patch(path, headers=world.token("w"), json={})
        await set_state(world, neighbour, state=lifecycle.PUBLISHING)
        busy = await http.patch(
            f"/posts/scheduled/{neighbour}", headers=world.token("w"), json={"message": "x"}
        )
    assert moved.status_code == 200, moved.text
    post = moved.json()["scheduled_post"]
    assert post["message"] == "new" and post["scheduled_at"] == world.at(45)
    assert_error(too_soon, 400, "SCHEDULE_TOO_SOON")
    assert_error(clash, 429, "PAGE_PUBLISH_GUARDRAIL")
    assert_error(empty, 400, "MISSING_FIELD")
    assert_error(busy, 409, "POST_PUBLISHING")
    async with world.app.sessions() as session:
        stored = await session.get(Post, post_id)
    assert stored is not None and stored.due_at == world.app.clock.now() + timedelta(minutes=45)


async def test_bulk_reports_each_item(world: World) -> None:
    """Bulk schedules each item on its own; bad items carry the catalog error at their index."""
    posts = [
        {"page_id": world.sandbox_page, "message": "one", "scheduled_at": world.at(30)},
        {"page_id": world.sandbox_page, "message": "clash", "scheduled_at": world.at(30.5)},
        {"message": "no page", "scheduled_at": world.at(40)},
        {"page_id": world.page_b, "message": 7, "scheduled_at": world.at(40)},
        {"page_id": world.page_b, "message": "two", "publish_at": world.at(40)},
    ]
    async with world.client() as http:
        response = await http.post(
            "/posts/schedule/bulk", headers=world.token("w"), json={"posts": posts}
        )
        too_many = await http.post(
            "/posts/schedule/bulk", headers=world.token("w"), json={"posts": [posts[0]] * 51}
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["scheduled"], body["failed"]) == (2, 3)
    by_index = {r["index"]: r for r in body["results"]}
    assert (
        by_index[0]["status"] == 201 and set(by_index[0]["scheduled_post"]) == SCHEDULED_POST_KEYS
    )
    assert by_index[1]["error"]["code"] == "PAGE_PUBLISH_GUARDRAIL" and by_index[1]["status"] == 429
    assert by_index[2]["error"]["code"] == "MISSING_FIELD" and by_index[2]["status"] == 400
    assert by_index[3]["error"]["code"] == "INVALID_REQUEST"
    assert by_index[4]["status"] == 201
    assert_error(too_many, 400, "INVALID_REQUEST")
    assert await post_count(world) == 2


async def test_published_list_since_cursor_and_metrics(world: World) -> None:
    """GET /posts/published lists published posts newest first with since and cursor paging."""
    clock = world.app.clock
    async with world.client() as http:
        made = [await schedule(http, world, world.sandbox_page, 20 + 5 * i) for i in range(3)]
        for n, post_id in enumerate(made):
            await set_state(
                world,
                post_id,
                state=lifecycle.PUBLISHED,
                remote_id=f"r{n}",
                permalink=f"https://sandbox.test/{n}",
                published_at=clock.now() + timedelta(minutes=n),
            )
        since = (clock.now() + timedelta(seconds=30)).isoformat()
        first = (
            await http.get("/posts/published", headers=world.token("r"), params={"limit": 1})
        ).json()
        rest = (
            await http.get(
                "/posts/published",
                headers=world.token("r"),
                params={"limit": 5, "cursor": first["next_cursor"]},
            )
        ).json()
        recent = (
            await http.get("/posts/published", headers=world.token("r"), params={"since": since})
        ).json()
        bad_since = await http.get(
            "/posts/published", headers=world.token("r"), params={"since": "yesterday"}
        )
        pending = (await http.get("/posts/scheduled", headers=world.token("r"))).json()
    newest = first["published_posts"][0]
    assert newest["id"] == made[2] and newest["remote_id"] == "r2"
    assert newest["metrics"] == {"likes": None, "comments": None, "shares": None}
    assert set(newest) == {
        "id",
        "page_id",
        "platform",
        "remote_id",
        "permalink",
        "published_at",
        "message",
        "metrics",
    }
    assert [p["id"] for p in rest["published_posts"]] == [made[1], made[0]]
    assert rest["has_more"] is False
    assert [p["id"] for p in recent["published_posts"]] == [made[2], made[1]]
    assert_error(bad_since, 400, "INVALID_DATE")
    assert pending["scheduled_posts"] == []
    assert await post_count(world) == 3
