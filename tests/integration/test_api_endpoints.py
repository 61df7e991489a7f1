"""/api/v1 routes through a test-only gate shim: shapes field for field, reach, scopes, errors."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from daemon import guardrails
from daemon.api import limits
from daemon.api.errors import ApiError
from daemon.errors import InputError
from daemon.store.models import Page, Post, UsageCounter
from tests.api_shim import World, build_world
from tests.conftest import make_settings

SCHEDULED_POST_KEYS = {
    "id",
    "page_id",
    "platform",
    "scheduled_at",
    "status",
    "message",
    "media",
    "first_comment",
    "created_at",
}


@pytest.fixture
async def world(tmp_path: Path, db_url: str, app_factory: Any) -> World:
    """The two users' world on SQLite and on PostgreSQL."""
    return await build_world(await app_factory(make_settings(tmp_path, db_url)))


async def post_count(world: World) -> int:
    async with world.app.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(Post)) or 0)


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    assert body["error"] == body["message"] and body["message"]
    return body


# -- meta ---------------------------------------------------------------------------------------


async def test_root_and_error_catalog_need_no_token(world: World) -> None:
    """GET / and GET /errors answer without a token; the catalog lists every document code."""
    async with world.client() as http:
        root = (await http.get("/")).json()
        catalog = (await http.get("/errors")).json()
    assert root["name"] == "postd" and root["api_version"] == "v1"
    assert root["docs"] == {"openapi": "/api/v1/openapi.json", "errors": "/api/v1/errors"}
    codes = {e["code"]: e["http_status"] for e in catalog["errors"]}
    assert codes["MISSING_SCOPE"] == 403 and codes["PAGE_PUBLISH_GUARDRAIL"] == 429


async def test_openapi_declares_errors_and_never_422(world: World) -> None:
    """openapi.json is 3.1; every operation declares 2xx and the catalog body for 401/403/429."""
    async with world.client() as http:
        schema = (await http.get("/openapi.json")).json()
    assert schema["openapi"].startswith("3.1")
    assert "422" not in json.dumps(schema["paths"])
    assert "HTTPValidationError" not in schema.get("components", {}).get("schemas", {})
    for path, item in schema["paths"].items():
        for method, op in item.items():
            statuses = set(op["responses"])
            assert any(s.startswith("2") for s in statuses), (path, method)
            assert {"400", "429", "500"} <= statuses, (path, method)
            if path not in ("/", "/errors"):
                assert {"401", "403"} <= statuses, (path, method)


# -- me, account --------------------------------------------------------------------------------


async def test_me_works_with_any_scope(world: World) -> None:
    """/me answers any valid token, even one with no scope at all, in the document's shape."""
    headers = world.token("bare", scopes=())
    async with world.client() as http:
        body = (await http.get("/me", headers=headers)).json()
    assert body["authenticated_as"] == {
        "user_id": world.user,
        "email": "you@example.com",
        "firstname": "Alex",
        "lastname": "Doe",
    }
    assert set(body["api_key"]) == {"id", "name", "prefix", "scopes", "expires_at"}
    assert body["api_key"]["scopes"] == []


async def test_account_shape_and_guardrails_from_config(world: World) -> None:
    """/account has every field of the document; guardrails and storage come from config."""
    headers = world.token("acct", scopes=("read:account",))
    async with world.client() as http:
        body = (await http.get("/account", headers=headers)).json()
    assert set(body) == {"user", "credits", "tier", "api_key", "quota"}
    assert body["tier"] == "pro" and body["credits"]["plan"] == "pro"
    assert set(body["api_key"]) == {
        "id",
        "name",
        "prefix",
        "scopes",
        "brand_ids",
        "expires_at",
        "last_used_at",
        "request_count",
    }
    quota = body["quota"]
    assert quota["storage"] == {
        "used_bytes": 0,
        "limit_bytes": 1073741824,
        "remaining_bytes": 1073741824,
        "max_file_bytes": 104857600,
    }
    assert quota["rate_limit"] == {"per_minute": 60, "per_day": 90000}
    monthly = quota["monthly"]
    assert {"year_month", "resets_at", "publishes", "writes", "total_requests"} <= set(monthly)
    assert monthly["publishes"]["limit"] == 500
    assert body["credits"]["remaining"] == monthly["publishes"]["remaining"]
    assert quota["publish_guardrails"] == {
        "perPage": {
            "FB": {"perHour": 10, "per24h": 40},
            "IG": {"perHour": 8, "per24h": 30},
            "LN": {"perHour": 3, "per24h": 15},
            "TT": {"perHour": 10, "per24h": 50},
            "TW": {"perHour": 50, "per24h": 300},
        },
        "minGapBetweenSchedulesMs": 60000,
        "perBrandPer24hSafetyNet": 500,
    }


async def test_missing_scope_names_required_and_current(world: World) -> None:
    """A route without its scope is 403 MISSING_SCOPE with required_scope and your_scopes."""
    headers = world.token("ro", scopes=("read:posts",))
    async with world.client() as http:
        response = await http.post(
            "/posts/schedule", headers=headers, json={"page_id": world.sandbox_page}
        )
    body = assert_error(response, 403, "MISSING_SCOPE")
    assert body["required_scope"] == "write:posts" and body["your_scopes"] == ["read:posts"]


# -- brands and pages ---------------------------------------------------------------------------


async def test_brands_list_only_reachable_with_counts(world: World) -> None:
    """/brands lists the token's brands with pages_count; a restricted token sees only its own."""
    full, narrow = world.token("full"), world.token("narrow", brands=[world.brand_b])
    async with world.client() as http:
        brands = (await http.get("/brands", headers=full)).json()
        only_b = (await http.get("/brands", headers=narrow)).json()
    assert {b["id"]: b["pages_count"] for b in brands["brands"]} == {
        world.brand_a: 2,
        world.brand_b: 1,
    }
    assert set(brands["brands"][0]) == {
        "id",
        "name",
        "logo",
        "timezone",
        "created_at",
        "pages_count",
    }
    assert brands["has_more"] is False and brands["next_cursor"] is None
    assert [b["id"] for b in only_b["brands"]] == [world.brand_b]


async def test_brand_detail_reach_403_vs_404(world: World) -> None:
    """/brands/{id}: own brand outside the restriction is 403; someone else's is 404."""
    full, narrow = world.token("full"), world.token("narrow", brands=[world.brand_b])
    async with world.client() as http:
        detail = (await http.get(f"/brands/{world.brand_a}", headers=full)).json()
        own_restricted = await http.get(f"/brands/{world.brand_a}", headers=narrow)
        foreign = await http.get(f"/brands/{world.brand_c}", headers=full)
        unknown = await http.get("/brands/nope", headers=full)
        pages = (await http.get(f"/brands/{world.brand_a}/pages", headers=full)).json()
    assert detail["brand"]["name"] == "Acme Co."
    assert {p["id"] for p in detail["brand"]["pages"]} == {
        world.sandbox_page,
        world.instagram_page,
    }
    assert_error(own_restricted, 403, "BRAND_NOT_AUTHORIZED")
    assert_error(foreign, 404, "NOT_FOUND")
    assert_error(unknown, 404, "NOT_FOUND")
    assert pages["pages"] == detail["brand"]["pages"]


async def test_pages_flattened_filters_and_detail(world: World) -> None:
    """/pages is flat across brands; platform (name or code) and brand_id filter; /pages/{id}."""
    headers = world.token("full")
    async with world.client() as http:
        everything = (await http.get("/pages", headers=headers)).json()["pages"]
        instagram = (await http.get("/pages?platform=IG", headers=headers)).json()["pages"]
        of_b = (await http.get(f"/pages?brand_id={world.brand_b}", headers=headers)).json()
        bad = await http.get("/pages?platform=myspace", headers=headers)
        foreign_filter = await http.get(f"/pages?brand_id={world.brand_c}", headers=headers)
        detail = (await http.get(f"/pages/{world.instagram_page}", headers=headers)).json()
        foreign = await http.get(f"/pages/{world.foreign_page}", headers=headers)
    assert {p["id"] for p in everything} == {
        world.sandbox_page,
        world.instagram_page,
        world.page_b,
    }
    assert set(everything[0]) == {
        "id",
        "brand_id",
        "brand_name",
        "platform",
        "name",
        "username",
        "followers",
        "expired",
    }
    assert [p["platform"] for p in instagram] == ["instagram"]
    assert [p["id"] for p in of_b["pages"]] == [world.page_b]
    assert_error(bad, 400, "INVALID_PLATFORM")
    assert_error(foreign_filter, 404, "NOT_FOUND")
    assert set(detail["page"]) >= {"profile_picture", "created_at", "expired"}
    assert_error(foreign, 404, "NOT_FOUND")


async def test_page_expired_until_connected_and_again_when_refused(world: World) -> None:
    """expired tells a caller to (re)connect: an Instagram page added without credentials is
    expired, the sandbox needs none; stored credentials make it live, a platform's refusal
    (needs_reauth) makes it expired again, on the list and on the detail alike."""
    headers = world.token("full")

    async def expired() -> dict[str, bool]:
        async with world.client() as http:
            listed = (await http.get("/pages", headers=headers)).json()["pages"]
            detail = (await http.get(f"/pages/{world.instagram_page}", headers=headers)).json()
        flags = {p["id"]: p["expired"] for p in listed}
        assert detail["page"]["expired"] == flags[world.instagram_page]
        return flags

    async def set_page(**values: Any) -> None:
        async with world.app.sessions() as session, session.begin():
            await session.execute(
                update(Page).where(Page.id == world.instagram_page).values(**values)
            )

    first = await expired()
    assert first[world.instagram_page] is True and first[world.sandbox_page] is False
    await set_page(credentials=b"gAAAA-encrypted")
    assert (await expired())[world.instagram_page] is False
    await set_page(status="needs_reauth", status_reason="AUTH_EXPIRED")
    assert (await expired())[world.instagram_page] is True


async def test_pages_cursor_walks_every_page_once(world: World) -> None:
    """limit=1 with next_cursor visits each page exactly once, then has_more is false."""
    headers = world.token("full")
    seen, cursor = [], None
    async with world.client() as http:
        for _ in range(5):
            params: dict[str, Any] = {"limit": 1, **({"cursor": cursor} if cursor else {})}
            body = (await http.get("/pages", headers=headers, params=params)).json()
            seen += [p["id"] for p in body["pages"]]
            cursor = body["next_cursor"]
            if not body["has_more"]:
                break
    assert sorted(seen) == sorted({world.sandbox_page, world.instagram_page, world.page_b})


# -- scheduling ---------------------------------------------------------------------------------


async def test_schedule_document_example_shape(world: World) -> None:
    """The document's schedule body gets 201 {"scheduled_post": ...} with exactly its fields."""
    # Issue 5: postd's Instagram adapter publishes one photo, so it refuses this carousel with a
    # video; without the adapter the API takes the document's body as is (its shape is pinned).
    world.app.adapters.pop("instagram")
    headers = world.token("w", scopes=("write:posts",))
    async with world.client() as http:
        response = await http.post(
            "/posts/schedule",
            headers=headers,
            json={
                "page_id": world.instagram_page,
                "message": "Launching tomorrow 🚀",
                "scheduled_at": world.at(60),
                "media_urls": ["https://cdn.example.com/hero.jpg", "https://x.test/a.mp4"],
                "first_comment": "More details at acme.com",
            },
        )
    assert response.status_code == 201, response.text
    post = response.json()["scheduled_post"]
    assert set(post) == SCHEDULED_POST_KEYS
    assert post["platform"] == "instagram" and post["status"] == "scheduled"
    assert post["scheduled_at"] == world.at(60)
    assert post["media"] == [
        {"src": "https://cdn.example.com/hero.jpg", "type": "photo"},
        {"src": "https://x.test/a.mp4", "type": "video"},
    ]
    assert post["first_comment"] == "More details at acme.com"


async def test_schedule_accepts_publish_at_link_and_tiktok_settings(world: World) -> None:
    """publish_at aliases scheduled_at; link is appended to the message and kept in options."""
    headers = world.token("w")
    async with world.client() as http:
        response = await http.post(
            "/posts/schedule",
            headers=headers,
            json={
                "page_id": world.sandbox_page,
                "message": "Launch!",
                "publish_at": world.at(30),
                "link": "https://acme.example/launch",
                "tiktok_settings": {"privacy": "public"},
                "media_urls": [""],
            },
        )
    assert response.status_code == 201, response.text
    post = response.json()["scheduled_post"]
    assert post["message"] == "Launch!\n\nhttps://acme.example/launch"
    assert post["media"] == []
    async with world.app.sessions() as session:
        stored = await session.get(Post, post["id"])
    assert stored is not None
    assert stored.options == {
        "tiktok_settings": {"privacy": "public"},
        "link": "https://acme.example/launch",
    }


BAD_BODIES = [
    ({"message": "x", "scheduled_at": "+60"}, 400, "MISSING_FIELD"),
    ({"page_id": "P", "message": "x"}, 400, "MISSING_FIELD"),
    ({"page_id": "P", "message": "x", "scheduled_at": "tomorrow"}, 400, "INVALID_DATE"),
    ({"page_id": "P", "message": "x", "scheduled_at": "2026-05-01T09:00:00"}, 400, "INVALID_DATE"),
    ({"page_id": "P", "message": "x", "scheduled_at": "+5"}, 400, "SCHEDULE_TOO_SOON"),
    ({"page_id": "P", "message": "x", "scheduled_at": "+120000"}, 400, "SCHEDULE_TOO_FAR"),
    ({"page_id": "P", "message": "x", "scheduled_at": "-60"}, 400, "INVALID_DATE"),
    ({"page_id": "P", "message": "x" * 5001, "scheduled_at": "+60"}, 400, "MESSAGE_TOO_LONG"),
    ({"page_id": "P", "scheduled_at": "+60"}, 400, "MISSING_FIELD"),
    ({"page_id": "P", "message": 5, "scheduled_at": "+60"}, 400, "INVALID_REQUEST"),
    (
        {"page_id": "P", "message": "x", "media_ids": ["m1"], "scheduled_at": "+60"},
        404,
        "NOT_FOUND",
    ),
    ({"page_id": "nope", "message": "x", "scheduled_at": "+60"}, 404, "NOT_FOUND"),
    ({"page_id": "FOREIGN", "message": "x", "scheduled_at": "+60"}, 404, "NOT_FOUND"),
    (
        {"page_id": "P", "message": "x", "link": "javascript:1", "scheduled_at": "+60"},
        400,
        "INVALID_REQUEST",
    ),
]


@pytest.mark.parametrize(("body", "status", "code"), BAD_BODIES)
async def test_schedule_bad_input_is_refused_and_writes_nothing(
    world: World, body: dict[str, Any], status: int, code: str
) -> None:
    """Every bad body gets its documented code (never 422) and no post is written."""
    body = dict(body)
    if body.get("page_id") == "P":
        body["page_id"] = world.sandbox_page
    if body.get("page_id") == "FOREIGN":
        body["page_id"] = world.foreign_page
    if isinstance(body.get("scheduled_at"), str) and body["scheduled_at"][0] in "+-":
        body["scheduled_at"] = world.at(float(body["scheduled_at"]))
    async with world.client() as http:
        response = await http.post("/posts/schedule", headers=world.token("w"), json=body)
    assert_error(response, status, code)
    assert await post_count(world) == 0


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost/a.jpg",
        "http://127.0.0.1/a.jpg",
        "https://10.0.0.8/a.jpg",
        "https://192.168.1.1/a.jpg",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/a.jpg",
        "http://[::ffff:127.0.0.1]/a.jpg",
        "http://2130706433/a.jpg",
        "http://0177.0.0.1/a.jpg",
        "http://0x7f000001/a.jpg",
        "ftp://cdn.example.com/a.jpg",
        "file:///etc/passwd",
        "http://printer.local/a.jpg",
    ],
)
async def test_schedule_refuses_ssrf_media_urls(world: World, url: str) -> None:
    """media_urls pointing at this machine or private space are 400 INVALID_MEDIA_URL."""
    body = {"page_id": world.sandbox_page, "scheduled_at": world.at(60), "media_urls": [url]}
    async with world.client() as http:
        response = await http.post("/posts/schedule", headers=world.token("w"), json=body)
    assert_error(response, 400, "INVALID_MEDIA_URL")


@pytest.mark.parametrize("raw", [b'{"page_id": ', b"\xff\xfe\x00garbage", b"[1, 2]", b'"text"'])
async def test_malformed_json_is_invalid_request(world: World, raw: bytes) -> None:
    """A body that is no JSON object (or not even UTF-8) is 400 INVALID_REQUEST, not 422/500."""
    async with world.client() as http:
        response = await http.post(
            "/posts/schedule",
            headers={**world.token("w"), "Content-Type": "application/json"},
            content=raw,
        )
    assert_error(response, 400, "INVALID_REQUEST")


async def test_schedule_gap_guardrail_says_when_it_fits(world: World) -> None:
    """A post 30 s after another on the page is 429 PAGE_PUBLISH_GUARDRAIL, retry after 30 s."""
    headers = world.token("w")
    first = world.app.clock.now() + timedelta(hours=2)
    async with world.client() as http:
        ok = await http.post(
            "/posts/schedule",
            headers=headers,
            json={"page_id": world.sandbox_page, "message": "a", "scheduled_at": first.isoformat()},
        )
        clash = await http.post(
            "/posts/schedule",
            headers=headers,
            json={
                "page_id": world.sandbox_page,
                "message": "b",
                "scheduled_at": (first - timedelta(seconds=30)).isoformat(),
            },
        )
        other_page = await http.post(
            "/posts/schedule",
            headers=headers,
            json={"page_id": world.page_b, "message": "c", "scheduled_at": first.isoformat()},
        )
    assert ok.status_code == 201 and other_page.status_code == 201
    body = assert_error(clash, 429, "PAGE_PUBLISH_GUARDRAIL")
    assert body["rule"] == guardrails.PAGE_MIN_GAP
    assert body["retry_after_seconds"] == 90  # after the neighbour + 60 s
    assert "Retry-After" not in clash.headers  # the SDK would sleep that long


async def test_schedule_hourly_cap_and_brand_safety_net(tmp_path: Path, app_factory: Any) -> None:
    """Per-hour page cap and the brand's 24 h net are 429 with the earliest fit computed."""
    settings = make_settings(
        tmp_path,
        f"sqlite:///{tmp_path / 'g.db'}",
        guardrails={"brand_per_24h": 3, "sandbox": {"per_hour": 2, "per_24h": 40}},
    )
    world = await build_world(await app_factory(settings))
    headers = world.token("w")
    base = world.app.clock.now() + timedelta(hours=1)

    async def schedule(page: str, minutes: float) -> Any:
        at = (base + timedelta(minutes=minutes)).isoformat()
        body = {"page_id": page, "message": f"m{minutes}", "scheduled_at": at}
        if page == world.instagram_page:  # issue 5: an Instagram post needs a photo
            body["media_urls"] = ["https://cdn.example.com/p.jpg"]
        return await http.post("/posts/schedule", headers=headers, json=body)

    async with world.client() as http:
        assert (await schedule(world.sandbox_page, 0)).status_code == 201
        assert (await schedule(world.sandbox_page, 10)).status_code == 201
        hourly = assert_error(await schedule(world.sandbox_page, 20), 429, "PAGE_PUBLISH_GUARDRAIL")
        assert (await schedule(world.instagram_page, 30)).status_code == 201
        net = assert_error(await schedule(world.instagram_page, 40), 429, "BRAND_PUBLISH_GUARDRAIL")
    assert hourly["rule"] == guardrails.PAGE_PER_HOUR
    assert hourly["retry_after_seconds"] == 40 * 60  # the first one leaves the hour at +60 min
    assert net["rule"] == guardrails.BRAND_PER_24H
    assert net["earliest_allowed_at"] is not None


async def test_monthly_quota_refusal_writes_nothing(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the monthly publishes bucket refuses, the schedule fails and no post is written."""
    calls: list[str] = []

    async def charge_in(*args: Any) -> tuple[Any, ...]:
        _conn, _app, _user, _tier, bucket, _now = args
        calls.append(bucket)
        if len(calls) > 1:
            raise ApiError("MONTHLY_LIMIT_EXCEEDED", "publishes used up")
        return ()

    monkeypatch.setattr(limits, "charge_in", charge_in)
    body = {"page_id": world.sandbox_page, "message": "x", "scheduled_at": world.at(60)}
    async with world.client() as http:
        first = await http.post("/posts/schedule", headers=world.token("w"), json=body)
        body["scheduled_at"] = world.at(120)
        second = await http.post("/posts/schedule", headers=world.token("w"), json=body)
    assert first.status_code == 201
    assert_error(second, 429, "MONTHLY_LIMIT_EXCEEDED")
    assert calls == ["publishes", "publishes"]
    assert await post_count(world) == 1


async def test_a_failed_insert_takes_no_publish_off_the_month(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The monthly count and the insert share one savepoint: when the insert fails, the count
    is rolled back with it (no refund needed, none lost if the process died in between)."""
    from daemon import services

    async def publishes() -> int:
        async with world.app.sessions() as session:
            stmt = select(func.coalesce(func.sum(UsageCounter.count), 0)).where(
                UsageCounter.bucket == "publishes"
            )
            return int(await session.scalar(stmt) or 0)

    body = {"page_id": world.sandbox_page, "message": "x", "scheduled_at": world.at(60)}
    async with world.client() as http:
        assert (await http.post("/posts/schedule", headers=world.token("w"), json=body)).is_success
        assert await publishes() == 1

        def broken(*_args: Any, **_kwargs: Any) -> None:  # refused inside the insert's job
            raise InputError("INVALID_DATE", "refused at insert time", field="scheduled_at")

        monkeypatch.setattr(services, "post_values", broken)
        body["scheduled_at"] = world.at(120)
        failed = await http.post("/posts/schedule", headers=world.token("w"), json=body)
    assert_error(failed, 400, "INVALID_DATE")
    assert await publishes() == 1
    assert await post_count(world) == 1


async def test_eleventh_facebook_publish_in_an_hour_and_the_61_second_rule(
    world: World,
) -> None:
    """Default Facebook limits: ten posts 61 s apart fit; the 11th in that hour is 429 with the
    exact wait; 59 s after a neighbour is refused, 61 s is accepted."""
    from daemon import services

    async with world.app.sessions() as session, session.begin():
        page = await services.add_page(
            session,
            brand_id=world.brand_a,
            platform="facebook",
            name="FB",
            now=world.app.clock.now(),
        )
    headers = world.token("fb")
    base = world.app.clock.now() + timedelta(hours=3)

    async def schedule(seconds: float) -> Any:
        at = (base + timedelta(seconds=seconds)).isoformat()
        body = {"page_id": page.id, "message": f"fb {seconds}", "scheduled_at": at}
        return await http.post("/posts/schedule", headers=headers, json=body)

    async with world.client() as http:
        for n in range(10):
            assert (await schedule(61 * n)).status_code == 201, n
        eleventh = assert_error(await schedule(61 * 10), 429, "PAGE_PUBLISH_GUARDRAIL")
        assert (await schedule(3610)).status_code == 201  # the first post has left the hour
        too_close = assert_error(await schedule(3610 + 59), 429, "PAGE_PUBLISH_GUARDRAIL")
        assert (await schedule(3610 + 61)).status_code == 201
    assert eleventh["rule"] == guardrails.PAGE_PER_HOUR
    assert eleventh["retry_after_seconds"] == 3600 - 610  # the first leaves the hour at +3600 s
    assert too_close["rule"] == guardrails.PAGE_MIN_GAP
    assert too_close["retry_after_seconds"] == 1
