"""``/api/v1/webhooks`` routes: subscribe (SSRF policy, events), read, change, delete, rotate,
the delivery log with pagination, redelivery, the test ping, scopes and brand restriction."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from daemon.store.models import WebhookSubscription
from tests.api_shim import World, build_world
from tests.conftest import make_settings
from tests.webhook_receiver import Receiver, running
from tests.webhooks_support import Owner, emit, settle, webhook_settings

EVENTS = ["post.published", "post.failed"]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from running()


@pytest.fixture
async def world(tmp_path: Path, db_url: str, app_factory: Any) -> World:
    return await build_world(await app_factory(webhook_settings(tmp_path, db_url)))


async def _create(http: httpx.AsyncClient, headers: dict[str, str], url: str) -> dict[str, Any]:
    made = await http.post("/webhooks", headers=headers, json={"url": url, "events": EVENTS})
    assert made.status_code == 201, made.text
    hook: dict[str, Any] = made.json()["webhook"]
    return hook


async def test_create_read_list_patch_delete(world: World, receiver: Receiver) -> None:
    """The secret comes once; GET/list never show it; PATCH changes url, events and enabled;
    DELETE makes it 404 everywhere."""
    token = world.token("t", scopes=("*",))
    async with world.client() as http:
        hook = await _create(http, token, receiver.url)
        assert hook["secret"].startswith("whsec_")
        assert hook["events"] == EVENTS and hook["url"] == receiver.url
        assert hook["enabled"] is True and hook["status"] == "enabled"
        assert hook["consecutive_failures"] == 0 and hook["brand_ids"] == []
        assert hook["previous_secret_expires_at"] is None

        one = (await http.get(f"/webhooks/{hook['id']}", headers=token)).json()["webhook"]
        assert "secret" not in one
        assert {k: v for k, v in hook.items() if k != "secret"} == one
        listed = (await http.get("/webhooks", headers=token)).json()
        assert [h["id"] for h in listed["webhooks"]] == [hook["id"]]
        assert "secret" not in listed["webhooks"][0] and listed["has_more"] is False

        other_url = receiver.url.replace("/hook", "/other")
        patched = await http.patch(
            f"/webhooks/{hook['id']}",
            headers=token,
            json={"url": other_url, "events": ["account.quota.warning", "post.failed"]},
        )
        assert patched.status_code == 200, patched.text
        body = patched.json()["webhook"]
        assert body["url"] == other_url and body["events"] == [
            "account.quota.warning",
            "post.failed",
        ]
        off = await http.patch(f"/webhooks/{hook['id']}", headers=token, json={"enabled": False})
        assert off.json()["webhook"]["disabled_reason"] == "manual"
        assert (await http.patch(f"/webhooks/{hook['id']}", headers=token, json={})).json()[
            "code"
        ] == "MISSING_FIELD"

        gone = await http.delete(f"/webhooks/{hook['id']}", headers=token)
        assert gone.status_code == 200 and gone.json() == {"success": True, "id": hook["id"]}
        for method, path in (
            ("GET", f"/webhooks/{hook['id']}"),
            ("DELETE", f"/webhooks/{hook['id']}"),
            ("POST", f"/webhooks/{hook['id']}/test"),
            ("GET", f"/webhooks/{hook['id']}/deliveries"),
        ):
            response = await http.request(method, path, headers=token)
            assert response.status_code == 404 and response.json()["code"] == "NOT_FOUND"
    async with world.app.sessions() as session:
        assert await session.get(WebhookSubscription, hook["id"]) is None


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://127.0.0.1:8080/hook", "loopback"),
        ("https://10.0.0.7/hook", "private"),
        ("https://169.254.169.254/latest/meta-data", "link-local"),
        ("https://[::ffff:127.0.0.1]/hook", "loopback"),
        ("https://2130706433/hook", "numeric"),
        ("https://localhost/hook", "local name"),
        ("http://example.com/hook", "scheme"),
        ("ftp://example.com/hook", "scheme"),
        ("https://user:pw@example.com/hook", "credentials"),
        ("https://no-such-host.invalid/hook", "resolved"),
    ],
)
async def test_unsafe_urls_are_refused_at_subscribe_time(
    tmp_path: Path, db_url: str, app_factory: Any, url: str, reason: str
) -> None:
    """Default policy (https, public addresses): 400 UNSAFE_URL naming why; nothing stored."""
    app = await app_factory(make_settings(tmp_path, db_url))
    world = await build_world(app)
    token = world.token("t", scopes=("write:webhooks",))
    async with world.client() as http:
        response = await http.post("/webhooks", headers=token, json={"url": url, "events": EVENTS})
        assert response.status_code == 400, response.text
        body = response.json()
        assert body["code"] == "UNSAFE_URL" and body["field"] == "url"
        assert reason in body["reason"], body
        assert body["message"].startswith("This webhook URL is refused")
    async with app.sessions() as session:
        assert await session.get(WebhookSubscription, "x") is None
        assert (await session.execute(WebhookSubscription.__table__.select())).all() == []


async def test_patch_to_an_unsafe_url_changes_nothing(
    tmp_path: Path, db_url: str, app_factory: Any
) -> None:
    """The URL is checked again on PATCH."""
    app = await app_factory(webhook_settings(tmp_path, db_url, netguard={"allow_http": True}))
    world = await build_world(app)
    token = world.token("t")
    async with world.client() as http:
        hook = await _create(http, token, "http://8.8.8.8/hook")
        response = await http.patch(
            f"/webhooks/{hook['id']}", headers=token, json={"url": "http://127.0.0.1/x"}
        )
        assert response.status_code == 400 and response.json()["code"] == "UNSAFE_URL"
        got = (await http.get(f"/webhooks/{hook['id']}", headers=token)).json()["webhook"]
        assert got["url"] == "http://8.8.8.8/hook"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"url": "http://127.0.0.1:9/h", "events": []}, "INVALID_EVENTS"),
        ({"url": "http://127.0.0.1:9/h", "events": ["post.deleted"]}, "INVALID_EVENTS"),
        ({"url": "http://127.0.0.1:9/h", "events": ["webhook.test"]}, "INVALID_EVENTS"),
        ({"url": "http://127.0.0.1:9/h"}, "MISSING_FIELD"),
        ({"events": EVENTS}, "MISSING_FIELD"),
        ({"url": "http://127.0.0.1:9/h", "events": "post.failed"}, "INVALID_REQUEST"),
        ({"url": "http://127.0.0.1:9/" + "a" * 2048, "events": EVENTS}, "INVALID_REQUEST"),
    ],
)
async def test_bad_bodies_get_stable_codes(world: World, body: dict[str, Any], code: str) -> None:
    """Bad events, missing or mistyped fields: 400 with a stable code."""
    token = world.token("t")
    async with world.client() as http:
        response = await http.post("/webhooks", headers=token, json=body)
    assert response.status_code == 400 and response.json()["code"] == code, response.text
    if code == "INVALID_EVENTS":
        assert "post.published" in response.json()["allowed"]


async def test_scopes_read_and_write_webhooks(world: World) -> None:
    """read:webhooks cannot write, write:webhooks cannot read: 403 MISSING_SCOPE names it."""
    reader = world.token("reader", scopes=("read:webhooks",))
    writer = world.token("writer", scopes=("write:webhooks",))
    async with world.client() as http:
        refused = await http.post(
            "/webhooks", headers=reader, json={"url": "http://127.0.0.1:9/h", "events": EVENTS}
        )
        assert refused.status_code == 403
        assert refused.json()["required_scope"] == "write:webhooks"
        assert refused.json()["your_scopes"] == ["read:webhooks"]
        hook = await _create(http, writer, "http://127.0.0.1:9/h")
        denied = await http.get(f"/webhooks/{hook['id']}/deliveries", headers=writer)
        assert denied.status_code == 403 and denied.json()["required_scope"] == "read:webhooks"
        assert (await http.get("/webhooks", headers=reader)).status_code == 200


async def test_brand_restricted_tokens_see_their_own_subscriptions(world: World) -> None:
    """A token restricted to brand A makes A-only subscriptions and sees only those; an
    unrestricted token sees all; a token reaching another owner's brand cannot subscribe."""
    full = world.token("full")
    only_a = world.token("only-a", brands=(world.brand_a,))
    async with world.client() as http:
        everything = await _create(http, full, "http://127.0.0.1:9/all")
        scoped = await _create(http, only_a, "http://127.0.0.1:9/a")
        assert scoped["brand_ids"] == [world.brand_a]
        seen_by_a = (await http.get("/webhooks", headers=only_a)).json()["webhooks"]
        assert [h["id"] for h in seen_by_a] == [scoped["id"]]
        assert (await http.get(f"/webhooks/{everything['id']}", headers=only_a)).status_code == 404
        seen_by_full = (await http.get("/webhooks", headers=full)).json()["webhooks"]
        assert {h["id"] for h in seen_by_full} == {everything["id"], scoped["id"]}

    world.principals["foreign"] = dataclasses.replace(
        world.principals["only-a"],
        brand_ids=frozenset({world.brand_c}),  # another user's brand, e.g. as a collaborator
        restricted_brand_ids=(world.brand_c,),
    )
    async with world.client() as http:
        response = await http.post(
            "/webhooks",
            headers={"Authorization": "Bearer foreign"},
            json={"url": "http://127.0.0.1:9/c", "events": EVENTS},
        )
    assert response.status_code == 403 and response.json()["code"] == "BRAND_NOT_AUTHORIZED"


async def test_pages_of_subscriptions_and_deliveries(world: World, receiver: Receiver) -> None:
    """limit + cursor walk both lists without gaps or repeats; deliveries newest first."""
    token = world.token("t")
    async with world.client() as http:
        made = [await _create(http, token, receiver.url) for _ in range(5)]
        seen, cursor = [], None
        while True:
            params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            page = (await http.get("/webhooks", headers=token, params=params)).json()
            seen += [h["id"] for h in page["webhooks"]]
            cursor = page["next_cursor"]
            if not page["has_more"]:
                assert cursor is None
                break
        assert seen == sorted(h["id"] for h in made)  # id order, no gap, no repeat

        hook = made[0]
        for sub in made[1:]:
            await http.delete(f"/webhooks/{sub['id']}", headers=token)
        who = Owner(world.user, world.brand_a, world.sandbox_page)
        for _ in range(5):
            await emit(world.app, who)
            world.app.clock.advance(1)
        await settle(world.app)
        listed, cursor = [], None
        while True:
            params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            response = await http.get(
                f"/webhooks/{hook['id']}/deliveries", headers=token, params=params
            )
            page = response.json()
            listed += page["deliveries"]
            cursor = page["next_cursor"]
            if not page["has_more"]:
                break
        assert len(listed) == 5 and len({d["id"] for d in listed}) == 5
        created = [d["created_at"] for d in listed]
        assert created == sorted(created, reverse=True)
        first = listed[0]
        assert first["status"] == "succeeded" and first["attempts"] == 1
        assert first["webhook_id"] == hook["id"] and first["event"] == "post.published"
        assert first["next_attempt_at"] is None and first["last_status_code"] == 200
        (attempt,) = first["attempt_log"]
        assert attempt["attempt"] == 1 and attempt["status_code"] == 200
        assert attempt["error"] is None and attempt["duration_ms"] >= 0
        failed = await http.get(
            f"/webhooks/{hook['id']}/deliveries", headers=token, params={"status": "failed"}
        )
        assert failed.json()["deliveries"] == []
        bad = await http.get(
            f"/webhooks/{hook['id']}/deliveries", headers=token, params={"cursor": "nope"}
        )
        assert bad.status_code == 400 and bad.json()["code"] == "INVALID_REQUEST"


async def test_ping_and_redeliver(world: World, receiver: Receiver) -> None:
    """The ping sends webhook.test to that subscription only; redelivery resends a delivery with
    its webhook-id and body; a disabled subscription refuses both with 409 WEBHOOK_DISABLED."""
    token = world.token("t")
    async with world.client() as http:
        hook = await _create(http, token, receiver.url)
        other = await _create(http, token, receiver.url.replace("/hook", "/other"))
        ping = await http.post(f"/webhooks/{hook['id']}/test", headers=token)
        assert ping.status_code == 202, ping.text
        queued = ping.json()["delivery"]
        assert queued["event"] == "webhook.test" and queued["status"] == "pending"
        await settle(world.app)
        (got,) = receiver.received
        assert got.path == "/hook" and got.event == "webhook.test"
        assert got.webhook_id == queued["id"]
        assert got.payload["data"]["webhook"]["id"] == hook["id"]

        again = await http.post(
            f"/webhooks/{hook['id']}/deliveries/{queued['id']}/redeliver", headers=token
        )
        assert again.status_code == 202, again.text
        assert again.json()["delivery"]["status"] == "pending"
        assert [a["attempt"] for a in again.json()["delivery"]["attempt_log"]] == [1]
        await settle(world.app)
        assert len(receiver.received) == 2
        assert receiver.received[1].webhook_id == got.webhook_id
        assert receiver.received[1].body == got.body
        log = (await http.get(f"/webhooks/{hook['id']}/deliveries", headers=token)).json()
        (delivery,) = log["deliveries"]
        assert delivery["attempts"] == 2 and delivery["status"] == "succeeded"

        missing = await http.post(
            f"/webhooks/{other['id']}/deliveries/{queued['id']}/redeliver", headers=token
        )
        assert missing.status_code == 404 and missing.json()["code"] == "NOT_FOUND"
        await http.patch(f"/webhooks/{hook['id']}", headers=token, json={"enabled": False})
        for path in (
            f"/webhooks/{hook['id']}/test",
            f"/webhooks/{hook['id']}/deliveries/{queued['id']}/redeliver",
        ):
            refused = await http.post(path, headers=token)
            assert refused.status_code == 409 and refused.json()["code"] == "WEBHOOK_DISABLED"


async def test_a_failed_ping_is_not_retried_and_does_not_count(
    world: World, receiver: Receiver
) -> None:
    """A test ping that fails is tried once and leaves the failure count alone."""
    token = world.token("t")
    receiver.status = 500
    async with world.client() as http:
        hook = await _create(http, token, receiver.url)
        await http.post(f"/webhooks/{hook['id']}/test", headers=token)
        await settle(world.app)
        got = (await http.get(f"/webhooks/{hook['id']}", headers=token)).json()["webhook"]
        log = (await http.get(f"/webhooks/{hook['id']}/deliveries", headers=token)).json()
    assert len(receiver.received) == 1
    assert got["consecutive_failures"] == 0 and got["enabled"] is True
    assert log["deliveries"][0]["status"] == "failed"
    assert log["deliveries"][0]["last_error"].startswith("HTTP 500")


async def test_the_error_catalog_lists_the_webhook_codes(world: World) -> None:
    """GET /errors documents UNSAFE_URL, INVALID_EVENTS, WEBHOOK_DISABLED, DELIVERY_IN_PROGRESS
    and the webhook scopes."""
    async with world.client() as http:
        catalog = {e["code"]: e for e in (await http.get("/errors")).json()["errors"]}
    assert catalog["UNSAFE_URL"]["http_status"] == 400
    assert catalog["INVALID_EVENTS"]["http_status"] == 400
    assert catalog["WEBHOOK_DISABLED"]["http_status"] == 409
    assert catalog["DELIVERY_IN_PROGRESS"]["http_status"] == 409
    assert "read:webhooks" in catalog["MISSING_SCOPE"]["fix"]
    assert "write:webhooks" in catalog["MISSING_SCOPE"]["fix"]
