"""Webhook delivery end to end (acceptance 1-3): posts publish or fail through the dispatcher,
the deliverer POSTs their events to a loopback receiver, signed for the SDK's verifier and for
Standard Webhooks verifiers; retries follow the schedule in fake time; 20 failed deliveries in a
row disable a subscription and re-enabling it resumes delivery of new events."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import time_machine
from outreply.webhooks import verify_webhook_signature
from sqlalchemy import select
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from structlog.testing import capture_logs

from daemon import __version__, services
from daemon.clock import FakeClock
from daemon.store.models import OutboxEvent
from tests.api_shim import World, build_world
from tests.support import run_until_idle
from tests.webhook_receiver import Received, Receiver, running
from tests.webhooks_support import (
    Owner,
    at,
    attempts,
    deliveries,
    emit,
    owner,
    settle,
    subscribe,
    subscription,
    webhook_settings,
)

START = datetime(2026, 5, 12, 9, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from running()


def sdk_ok(item: Received, secret: str) -> bool:
    return verify_webhook_signature(item.body, item.headers["x-outreply-signature"], secret)


def standard_ok(item: Received, secret: str) -> bool:
    """standardwebhooks' own verify, at the instant the delivery was signed (fake time)."""
    signed_at = datetime.fromtimestamp(int(item.headers["webhook-timestamp"]), UTC)
    with time_machine.travel(signed_at, tick=False):
        try:
            Webhook(secret).verify(item.body, item.headers)
        except WebhookVerificationError:
            return False
    return True


async def publish(app: Any, world: World, *texts: str) -> list[str]:
    """Schedule posts due now on the world's sandbox page and run the dispatcher to the end."""
    now = app.clock.now()
    made = []
    async with app.sessions() as session, session.begin():
        for n, text in enumerate(texts):
            post = await services.schedule_post(
                session,
                services.NewPost(
                    page_id=world.sandbox_page,
                    scheduled_at=now + timedelta(seconds=1 + n),
                    message=text,
                ),
                now=now,
                scheduling=app.settings.scheduling,
                check_lead=False,
            )
            made.append(post.id)
    app.clock.advance(len(texts) + 1)
    await run_until_idle(app)
    return made


async def test_published_and_failed_posts_reach_the_receiver_signed_and_rotation_works(
    tmp_path: Path, db_url: str, app_factory: Any, receiver: Receiver
) -> None:
    """Acceptance 1: post.published and post.failed arrive, verified by the SDK and by
    standardwebhooks; in the rotation window both secrets verify, after it only the new one."""
    app = await app_factory(webhook_settings(tmp_path, db_url))
    world = await build_world(app)
    token = world.token("hooks", scopes=("read:webhooks", "write:webhooks"))
    async with world.client() as http:
        made = await http.post(
            "/webhooks",
            headers=token,
            json={"url": receiver.url, "events": ["post.published", "post.failed"]},
        )
        assert made.status_code == 201, made.text
        hook = made.json()["webhook"]
        old = hook["secret"]

        ok, bad = await publish(app, world, "hello webhooks", "no [sandbox:reject]")
        await app.deliverer.drain()
        got = {r.payload["data"]["post"]["id"]: r for r in receiver.received}
        assert set(got) == {ok, bad} and len(receiver.received) == 2
        assert got[ok].event == "post.published" and got[bad].event == "post.failed"
        for item in got.values():
            assert list(item.payload) == ["event", "created_at", "data"]
            assert set(item.payload["data"]) == {"userId", "brandId", "post"}
            assert item.payload["data"]["userId"] == world.user
            assert item.payload["data"]["brandId"] == world.brand_a
            assert item.headers["user-agent"] == f"postd/{__version__}"
            assert item.headers["content-type"] == "application/json"
            assert item.webhook_id.startswith("msg_")
            assert sdk_ok(item, old) and standard_ok(item, old)
        assert got[bad].payload["data"]["post"]["error"]["code"] == "SANDBOX_REJECTED"
        assert got[ok].payload["data"]["post"]["status"] == "published"

        rotated_at = app.clock.now()
        rotated = await http.post(f"/webhooks/{hook['id']}/rotate-secret", headers=token)
        assert rotated.status_code == 200, rotated.text
        new = rotated.json()["webhook"]["secret"]
        assert new != old and new.startswith("whsec_")
        expires = rotated.json()["webhook"]["previous_secret_expires_at"]
        assert expires == at(rotated_at + timedelta(hours=24))

    (during_id,) = await publish(app, world, "during the rotation window")
    await app.deliverer.drain()
    during = receiver.received[-1]
    assert during.payload["data"]["post"]["id"] == during_id
    assert len(during.headers["x-outreply-signature"].split(",")) == 2
    assert len(during.headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        assert sdk_ok(during, secret) and standard_ok(during, secret)

    app.clock.advance(timedelta(hours=24, seconds=1))
    (after_id,) = await publish(app, world, "after the rotation window")
    await app.deliverer.drain()
    after = receiver.received[-1]
    assert after.payload["data"]["post"]["id"] == after_id
    assert sdk_ok(after, new) and standard_ok(after, new)
    assert not sdk_ok(after, old) and not standard_ok(after, old)
    assert len(receiver.received) == 4


async def test_retries_follow_the_schedule_with_one_webhook_id(
    tmp_path: Path, db_url: str, app_factory: Any, receiver: Receiver
) -> None:
    """Acceptance 2: failing 3 times then succeeding, the receiver sees attempts at +0, +30 s,
    +2 m 30 s, +12 m 30 s (+-1 s), all with one webhook-id, and nothing after; the delivery log
    shows the four attempts."""
    app = await app_factory(webhook_settings(tmp_path, db_url))
    who = await owner(app)
    sub_id, _ = await subscribe(app, who.user_id, receiver.url)
    receiver.script = [500, 503, 500]
    sent_at: list[datetime] = []
    receiver.respond = None
    (post_id,) = await emit(app, who)
    start = app.clock.now()

    def stamp(_index: int, headers: dict[str, str]) -> int:
        sent_at.append(app.clock.now())
        return 200

    receiver.respond = stamp
    await settle(app)
    app.clock.advance(timedelta(hours=6))  # long after: nothing more comes
    assert await app.deliverer.drain() is None

    assert [r.answered for r in receiver.received] == [500, 503, 500, 200]
    offsets = [
        int(r.headers["webhook-timestamp"]) - int(start.timestamp()) for r in receiver.received
    ]
    for got, want in zip(offsets, [0, 30, 150, 750], strict=True):
        assert abs(got - want) <= 1, offsets
    assert len({r.webhook_id for r in receiver.received}) == 1
    assert {r.payload["data"]["post"]["id"] for r in receiver.received} == {post_id}
    assert len({r.body for r in receiver.received}) == 1  # the identical body every time
    assert sent_at == [start + timedelta(seconds=750)]

    (delivery,) = await deliveries(app, sub_id)
    assert delivery.id == receiver.received[0].webhook_id
    assert delivery.status == "succeeded" and delivery.attempts == 4
    log = await attempts(app, delivery.id)
    assert [(a.number, a.status_code) for a in log] == [(1, 500), (2, 503), (3, 500), (4, 200)]
    assert [int((a.started_at - start).total_seconds()) for a in log] == [0, 30, 150, 750]
    assert log[0].error and log[0].error.startswith("HTTP 500")
    assert (await subscription(app, sub_id)).consecutive_failures == 0


async def test_twenty_failed_deliveries_disable_and_reenabling_resumes_new_events(
    tmp_path: Path, db_url: str, app_factory: Any, receiver: Receiver
) -> None:
    """Acceptance 3: 19 failed deliveries leave it enabled; the 20th disables it (logged, with its
    reason in the API); events while disabled are not delivered; PATCH enabled=true resumes
    delivering new events."""
    app = await app_factory(webhook_settings(tmp_path, db_url))
    world = await build_world(app)
    token = world.token("hooks", scopes=("read:webhooks", "write:webhooks"))
    who = Owner(world.user, world.brand_a, world.sandbox_page)
    receiver.status = 500
    async with world.client() as http:
        made = await http.post(
            "/webhooks", headers=token, json={"url": receiver.url, "events": ["post.published"]}
        )
        hook_id = made.json()["webhook"]["id"]

        await emit(app, who, 19)
        await settle(app)
        sub = await subscription(app, hook_id)
        assert sub.enabled and sub.consecutive_failures == 19
        assert len(receiver.received) == 19 * 6  # every delivery tried 1 + 5 times

        await emit(app, who, 1)
        with capture_logs() as logs:
            await settle(app)
        got = (await http.get(f"/webhooks/{hook_id}", headers=token)).json()["webhook"]
        assert got["enabled"] is False and got["status"] == "disabled"
        assert got["disabled_reason"] == "consecutive_failures"
        assert got["consecutive_failures"] == 20 and got["disabled_at"] is not None
        assert [e for e in logs if e["event"] == "webhook_disabled"] == [
            {
                "event": "webhook_disabled",
                "log_level": "warning",
                "webhook_id": hook_id,
                "reason": "consecutive_failures",
            }
        ]
        assert len(receiver.received) == 20 * 6

        (silent,) = await emit(app, who, 1)  # while disabled: never delivered
        assert await settle(app) == 1
        assert len(receiver.received) == 20 * 6

        receiver.status = 200
        patched = await http.patch(f"/webhooks/{hook_id}", headers=token, json={"enabled": True})
        assert patched.status_code == 200, patched.text
        body = patched.json()["webhook"]
        assert body["enabled"] is True and body["consecutive_failures"] == 0
        assert body["disabled_reason"] is None and body["disabled_at"] is None

        (fresh,) = await emit(app, who, 1)
        await settle(app)
    delivered = [r.payload["data"]["post"]["id"] for r in receiver.received if r.answered == 200]
    assert delivered == [fresh] and silent not in delivered


async def test_a_2xx_resets_the_count_and_410_disables_at_once(
    tmp_path: Path, db_url: str, app_factory: Any, receiver: Receiver
) -> None:
    """Failures in a row are counted only until a 2xx; 410 Gone disables without retrying and
    fails what was still pending."""
    app = await app_factory(webhook_settings(tmp_path, db_url))
    who = await owner(app)
    sub_id, _ = await subscribe(app, who.user_id, receiver.url)
    receiver.status = 500
    await emit(app, who, 3)
    await settle(app)
    assert (await subscription(app, sub_id)).consecutive_failures == 3
    receiver.status = 200
    await emit(app, who, 1)
    await settle(app)
    assert (await subscription(app, sub_id)).consecutive_failures == 0

    receiver.status = 503
    (retrying,) = await emit(app, who, 1)
    await app.deliverer.drain()  # first attempt fails; the retry waits 30 s
    receiver.status = 410
    (gone,) = await emit(app, who, 1)
    before = len(receiver.received)
    await app.deliverer.drain()
    assert len(receiver.received) == before + 1  # the 410 came at once
    await settle(app)
    sub = await subscription(app, sub_id)
    assert not sub.enabled and sub.disabled_reason == "gone"
    assert len(receiver.received) == before + 1  # no retry of anything after the 410
    by_post = {json.loads(d.body)["data"]["post"]["id"]: d for d in await deliveries(app, sub_id)}
    assert by_post[gone].status == "failed"
    assert (by_post[gone].last_error or "").startswith("HTTP 410")
    assert by_post[retrying].status == "failed"
    assert "WEBHOOK_DISABLED" in (by_post[retrying].last_error or "")


async def test_redirects_are_failures_and_never_followed(
    tmp_path: Path, db_url: str, app_factory: Any, receiver: Receiver
) -> None:
    """A 302 to the metadata address is a failed attempt; nothing is fetched from its Location."""
    app = await app_factory(webhook_settings(tmp_path, db_url))
    who = await owner(app)
    sub_id, _ = await subscribe(app, who.user_id, receiver.url)
    receiver.script = [302]
    await emit(app, who)
    await app.deliverer.drain()
    (delivery,) = await deliveries(app, sub_id)
    assert delivery.status == "pending" and delivery.last_status_code == 302
    assert "redirect not followed" in (delivery.last_error or "")
    assert len(receiver.received) == 1
    await settle(app)
    assert [r.answered for r in receiver.received] == [302, 200]


async def test_a_receiver_that_times_out_is_retried(
    tmp_path: Path, db_url: str, app_factory: Any
) -> None:
    """An answer slower than timeout_seconds is a failed attempt (TIMEOUT), retried later."""
    import threading

    release = threading.Event()
    slow = Receiver()

    def hang(index: int, _headers: dict[str, str]) -> int:
        if index == 0:
            release.wait(5)
        return 200

    slow.respond = hang
    slow.start()
    try:
        settings = webhook_settings(tmp_path, db_url, webhooks={"timeout_seconds": 0.3})
        app = await app_factory(settings)
        who = await owner(app)
        sub_id, _ = await subscribe(app, who.user_id, slow.url)
        await emit(app, who)
        await app.deliverer.drain()
        release.set()
        (delivery,) = await deliveries(app, sub_id)
        assert delivery.status == "pending" and delivery.last_status_code is None
        assert (delivery.last_error or "").startswith("TIMEOUT")
        await settle(app)
        (delivery,) = await deliveries(app, sub_id)
        assert delivery.status == "succeeded" and delivery.attempts == 2
    finally:
        release.set()
        slow.stop()


async def test_the_sdk_body_is_exactly_the_outbox_payload(
    tmp_path: Path, db_url: str, app_factory: Any, receiver: Receiver
) -> None:
    """What is POSTed is the event's outbox payload, byte for byte the same on every attempt."""
    app = await app_factory(webhook_settings(tmp_path, db_url))
    who = await owner(app)
    await subscribe(app, who.user_id, receiver.url)
    await emit(app, who)
    await settle(app)
    async with app.sessions() as session:
        (event,) = list(await session.scalars(select(OutboxEvent)))
    assert json.loads(receiver.received[0].body) == event.payload
