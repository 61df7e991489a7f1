"""The deliverer's store side on both backends: fan-out exactly once and to the right
subscriptions, claims under leases across instances, recovery after a crash, quota, retention,
and the wake-up when the dispatcher commits an event."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update
from structlog.testing import capture_logs

from daemon import services
from daemon.events import fanout, policy, results, store
from daemon.store.models import OutboxEvent, WebhookAttempt, WebhookDelivery, WebhookSubscription
from tests.support import run_until_idle
from tests.webhook_receiver import Receiver, running
from tests.webhooks_support import (
    attempts,
    deliveries,
    emit,
    owner,
    settle,
    subscribe,
    subscription,
    webhook_settings,
)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from running()


async def unfanned(app: Any) -> int:
    async with app.sessions() as session:
        return int(
            await session.scalar(select(func.count()).where(OutboxEvent.fanned_out_at.is_(None)))
            or 0
        )


async def fan_out_all(app: Any) -> int:
    made = 0
    while True:
        async with app.engine.begin() as conn:
            result = await fanout.fan_out(conn, now=app.clock.now(), batch=50)
        made += result.deliveries
        if not result.events:
            return made


async def test_fan_out_reaches_exactly_the_matching_subscriptions(
    tmp_path: Path, db_url: str, app_factory: Any
) -> None:
    """One row per matching subscription and event: the user's own, their events, their brands;
    not another user's, not a disabled one, not one created after the event."""
    app = await app_factory(webhook_settings(tmp_path, db_url))
    alice, bob = await owner(app, "alice@example.com"), await owner(app, "bob@example.com")
    url = "http://127.0.0.1:9/hook"
    everything, _ = await subscribe(app, alice.user_id, url)
    failed_only, _ = await subscribe(app, alice.user_id, url, events=("post.failed",))
    restricted, _ = await subscribe(app, alice.user_id, url, brand_ids=(alice.brand_id,))
    elsewhere, _ = await subscribe(app, alice.user_id, url, brand_ids=("0" * 24,))
    off, _ = await subscribe(app, alice.user_id, url)
    bobs, _ = await subscribe(app, bob.user_id, url)
    async with app.sessions() as session, session.begin():
        sub = await session.get(WebhookSubscription, off)
        assert sub is not None
        sub.enabled = False

    published = await emit(app, alice, 3)
    (failed,) = await emit(app, alice, event="post.failed")
    assert await fan_out_all(app) == 3 * 2 + 1 * 3
    app.clock.advance(1)
    late, _ = await subscribe(app, alice.user_id, url)  # after the events: receives none

    rows = await deliveries(app)
    got = Counter((d.subscription_id, json.loads(d.body)["data"]["post"]["id"]) for d in rows)
    expected = Counter(
        [(everything, p) for p in [*published, failed]]
        + [(restricted, p) for p in [*published, failed]]
        + [(failed_only, failed)]
    )
    assert got == expected
    assert not {elsewhere, off, bobs, late} & {d.subscription_id for d in rows}
    assert all(d.status == "pending" and d.attempts == 0 for d in rows)
    assert await unfanned(app) == 0
    assert await fan_out_all(app) == 0  # nothing fans out twice


async def test_a_rolled_back_fan_out_leaves_the_event_for_the_next(
    tmp_path: Path, db_url: str, app_factory: Any
) -> None:
    """A crash inside the fan-out transaction writes no delivery and leaves the event unmarked;
    the next fan-out delivers it once."""
    app = await app_factory(webhook_settings(tmp_path, db_url))
    who = await owner(app)
    await subscribe(app, who.user_id, "http://127.0.0.1:9/hook")
    await emit(app, who, 2)
    with pytest.raises(RuntimeError):
        async with app.engine.begin() as conn:
            result = await fanout.fan_out(conn, now=app.clock.now(), batch=10)
            assert result == fanout.FanOut(2, 2)
            raise RuntimeError("killed mid-transaction")
    assert await deliveries(app) == [] and await unfanned(app) == 2
    assert await fan_out_all(app) == 2
    assert len(await deliveries(app)) == 2


@pytest.mark.postgres
async def test_two_instances_fan_out_each_event_once(
    tmp_path: Path, pg_database: str, app_factory: Any
) -> None:
    """Two instances fanning out the same 600 events at once write 600 rows per subscription."""
    settings = webhook_settings(tmp_path, pg_database)
    first = await app_factory(settings)
    second = await app_factory(settings)
    who = await owner(first)
    subs = [(await subscribe(first, who.user_id, "http://127.0.0.1:9/h"))[0] for _ in range(2)]
    await emit(first, who, 600)
    made = await asyncio.gather(*(fan_out_all(app) for app in (first, second, first, second)))
    assert sum(made) == 1200
    counts = Counter(d.subscription_id for d in await deliveries(first))
    assert counts == {subs[0]: 600, subs[1]: 600}
    pairs = Counter((d.subscription_id, d.event_id) for d in await deliveries(first))
    assert max(pairs.values()) == 1


@pytest.mark.postgres
async def test_two_deliverers_on_one_database_never_send_an_attempt_twice(
    tmp_path: Path, pg_database: str, app_factory: Any, receiver: Receiver
) -> None:
    """Two instances draining 300 deliveries at once: every webhook-id reaches the receiver
    exactly once, each delivery has one attempt, and both instances took part."""
    settings = webhook_settings(tmp_path, pg_database, webhooks={"concurrency": 16})
    apps = [await app_factory(settings, owner=f"instance-{n}") for n in range(2)]
    who = await owner(apps[0])
    await subscribe(apps[0], who.user_id, receiver.url)
    await emit(apps[0], who, 300)
    await fan_out_all(apps[0])
    await asyncio.gather(*(app.deliverer.drain() for app in apps for _ in range(2)))
    await settle(apps[1])  # what the other instance held locked when a drain looked
    ids = Counter(r.webhook_id for r in receiver.received)
    assert len(ids) == 300 and set(ids.values()) == {1}
    async with apps[0].sessions() as session:
        rows = (await session.execute(select(WebhookAttempt.instance, WebhookAttempt.number))).all()
    assert len(rows) == 300 and {n for _, n in rows} == {1}
    by_instance = Counter(instance for instance, _ in rows)
    assert set(by_instance) == {"instance-0", "instance-1"}, by_instance


@pytest.mark.postgres
async def test_an_expired_lease_is_taken_over_and_the_late_result_ignored(
    tmp_path: Path, pg_database: str, app_factory: Any, receiver: Receiver
) -> None:
    """Instance A claims and goes silent; after the lease, B sends attempt 2 (attempt 1 logged as
    lost); A's late result changes nothing."""
    settings = webhook_settings(tmp_path, pg_database)
    a = await app_factory(settings, owner="instance-a")
    b = await app_factory(settings, owner="instance-b")
    who = await owner(a)
    await subscribe(a, who.user_id, receiver.url)
    await emit(a, who)
    await fan_out_all(a)
    async with a.engine.begin() as conn:
        (claimed,) = await store.claim(
            conn,
            now=a.clock.now(),
            owner="instance-a",
            lease=timedelta(seconds=60),
            limit=10,
            batch=10,
            per_subscription=10,
            busy={},
        )
    assert claimed.attempt == 1
    assert await b.deliverer.drain() is not None  # leased: nothing to do before it expires
    assert receiver.received == []
    a.clock.advance(61)
    await b.deliverer.drain()
    assert len(receiver.received) == 1
    late = results.Result(
        claimed, policy.Attempted(500, "HTTP 500"), a.clock.now(), a.clock.now(), 5
    )
    applied = await a.deliverer.apply([late])
    assert applied.applied == 0
    (delivery,) = await deliveries(a)
    assert delivery.status == "succeeded" and delivery.attempts == 2
    log = await attempts(a, delivery.id)
    assert [(x.number, x.instance, x.status_code) for x in log] == [
        (1, "instance-a", None),
        (2, "instance-b", 200),
    ]
    assert (log[0].error or "").startswith("LEASE_EXPIRED")


async def test_a_restart_resends_what_a_crash_left_in_flight(
    tmp_path: Path, db_url: str, app_factory: Any, receiver: Receiver
) -> None:
    """Deliveries left 'delivering' by a dead process are due again on the next start (SQLite at
    once, by the instance lock; PostgreSQL when the lease ends), same webhook-id, attempt 1."""
    settings = webhook_settings(tmp_path, db_url)
    app = await app_factory(settings, owner="dead")
    who = await owner(app)
    await subscribe(app, who.user_id, receiver.url)
    await emit(app, who, 3)
    await fan_out_all(app)
    async with app.engine.begin() as conn:
        claimed = await store.claim(
            conn,
            now=app.clock.now(),
            owner="dead",
            lease=timedelta(seconds=60),
            limit=10,
            batch=10,
            per_subscription=10,
            busy={},
        )
    assert len(claimed) == 3
    await app.close()  # the process "dies": no result is ever written
    restarted = await app_factory(settings, owner="reborn")
    if db_url.startswith("postgresql"):
        restarted.clock.advance(61)
    await settle(restarted)
    assert sorted(r.webhook_id for r in receiver.received) == sorted(c.id for c in claimed)
    rows = await deliveries(restarted)
    assert {(d.status, d.attempts) for d in rows} == {("succeeded", 1 if "sqlite" in db_url else 2)}


async def test_each_attempt_is_charged_and_the_80_percent_warning_is_delivered_once(
    tmp_path: Path, db_url: str, app_factory: Any, receiver: Receiver
) -> None:
    """Attempts take from the webhooks bucket; at 80 % one account.quota.warning is recorded and
    delivered; past the limit deliveries fail unsent (MONTHLY_LIMIT_EXCEEDED), not counted."""
    tight = {"webhooks": 10}
    from tests.live_server import ROOMY_TIER

    settings = webhook_settings(
        tmp_path, db_url, tiers={t: {**ROOMY_TIER, **tight} for t in ("free", "pro", "elite")}
    )
    app = await app_factory(settings)
    who = await owner(app)
    sub_id, _ = await subscribe(app, who.user_id, receiver.url)
    receiver.script = [500]  # one retry: attempts, not deliveries, are charged
    await emit(app, who, 7)
    await settle(app)
    from daemon.api import limits

    # 7 events + 1 retry reach 80 % of 10 at the 8th attempt; the warning's delivery is the 9th
    usage = await limits.usage(app, who.user_id, "pro", app.clock.now())
    assert usage["webhooks"]["used"] == 9
    warnings = [r for r in receiver.received if r.event == "account.quota.warning"]
    assert len(warnings) == 1
    data = warnings[0].payload["data"]
    assert data["userId"] == who.user_id and data["brandId"] is None
    quota = data["quota"]
    assert quota["bucket"] == "webhooks" and quota["limit"] == 10 and quota["used"] == 8
    assert quota["percent"] == 80 and quota["remaining"] == 2
    assert quota["period"] == app.clock.now().strftime("%Y-%m")

    sent = len(receiver.received)
    await emit(app, who, 3)
    await settle(app)
    assert len(receiver.received) == sent + 1  # 10 of 10 used; the other two are refused
    refused = [d for d in await deliveries(app, sub_id) if d.status == "failed"]
    assert len(refused) == 2
    assert all((d.last_error or "").startswith("MONTHLY_LIMIT_EXCEEDED") for d in refused)
    assert (await subscription(app, sub_id)).consecutive_failures == 0
    async with app.sessions() as session:
        events = Counter(await session.scalars(select(OutboxEvent.event)))
    assert events["account.quota.warning"] == 1


async def test_retention_purges_old_finished_deliveries_only(
    tmp_path: Path, db_url: str, app_factory: Any, receiver: Receiver
) -> None:
    """The daily purge drops finished deliveries older than 30 days with their attempts; recent
    ones and pending ones stay."""
    app = await app_factory(webhook_settings(tmp_path, db_url))
    who = await owner(app)
    sub_id, _ = await subscribe(app, who.user_id, receiver.url)
    await emit(app, who, 2)
    await settle(app)  # two delivered on day 0
    app.clock.advance(timedelta(days=30, seconds=1))
    await emit(app, who, 1)
    await settle(app)  # one delivered on day 30
    receiver.status = 500
    await emit(app, who, 1)
    await app.deliverer.drain()  # one pending (retrying), made to look 40 days old
    async with app.engine.begin() as conn:
        await conn.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.status == "pending")
            .values(created_at=app.clock.now() - timedelta(days=40))
        )
    await app.purge()
    left = await deliveries(app, sub_id)
    assert sorted(d.status for d in left) == ["pending", "succeeded"]
    async with app.sessions() as session:
        orphans = await session.scalar(
            select(func.count())
            .select_from(WebhookAttempt)
            .where(WebhookAttempt.delivery_id.not_in([d.id for d in left]))
        )
    assert orphans == 0


async def test_a_committed_event_wakes_the_running_deliverer(
    tmp_path: Path, db_url: str, app_factory: Any, receiver: Receiver
) -> None:
    """With the deliverer's pump running and no timer, a post the dispatcher publishes reaches
    the receiver: the commit of its outbox event is what wakes the deliverer."""
    app = await app_factory(webhook_settings(tmp_path, db_url))
    who = await owner(app)
    await subscribe(app, who.user_id, receiver.url)
    await app.deliverer.drain()
    pump = asyncio.create_task(app.deliverer.pump())
    try:
        async with app.sessions() as session, session.begin():
            post = await services.schedule_post(
                session,
                services.NewPost(
                    page_id=who.page_id,
                    scheduled_at=app.clock.now() + timedelta(seconds=1),
                    message="wake up",
                ),
                now=app.clock.now(),
                scheduling=app.settings.scheduling,
                check_lead=False,
            )
        app.clock.advance(2)
        await run_until_idle(app)
        assert await asyncio.to_thread(receiver.wait_until, 1, 10.0)
    finally:
        await app.deliverer.stop(1)
        pump.cancel()
        await asyncio.gather(pump, return_exceptions=True)
    assert receiver.received[0].payload["data"]["post"]["id"] == post.id


async def test_a_failing_quota_store_sends_rather_than_drops(
    tmp_path: Path, db_url: str, app_factory: Any, receiver: Receiver
) -> None:
    """When counting the quota fails, the claimed deliveries are still sent (and logged)."""
    app = await app_factory(webhook_settings(tmp_path, db_url))
    who = await owner(app)
    await subscribe(app, who.user_id, receiver.url)

    async def broken(*_args: Any) -> list[bool]:
        raise RuntimeError("usage store down")

    app.deliverer._charge = broken
    await emit(app, who, 3)
    with capture_logs() as logs:
        await settle(app)
    assert len(receiver.received) == 3
    assert {d.status for d in await deliveries(app)} == {"succeeded"}
    assert any(e["event"] == "webhook_quota_unavailable" for e in logs)


async def test_a_retry_arms_the_timer_and_idle_sweeps_cost_one_statement(
    tmp_path: Path, db_url: str, app_factory: Any, receiver: Receiver
) -> None:
    """A failed attempt arms the webhooks date job at its retry; once everything is delivered,
    a safety sweep is still one statement (SPEC §2), subscriptions or not."""
    from apscheduler.schedulers.asyncio import AsyncIOScheduler
    from sqlalchemy import event

    from daemon.app import WEBHOOK_JOB

    app = await app_factory(webhook_settings(tmp_path, db_url))
    who = await owner(app)
    await subscribe(app, who.user_id, receiver.url)
    scheduler = AsyncIOScheduler(timezone="UTC")
    scheduler.start(paused=True)
    app.scheduler = scheduler
    try:
        receiver.script = [500]
        await emit(app, who)
        await app.deliverer.drain()
        job = scheduler.get_job(WEBHOOK_JOB)
        assert job is not None
        assert job.next_run_time == app.clock.now() + timedelta(seconds=30)
        await settle(app)
        assert [r.answered for r in receiver.received] == [500, 200]

        statements: list[str] = []
        listener = lambda *args: statements.append(args[2])  # noqa: E731
        pump = asyncio.create_task(app.deliverer.pump())  # runs whatever a sweep wakes
        for _ in range(500):  # the pump first takes the wakes the drains left
            if app.deliverer.idle:
                break
            await asyncio.sleep(0.01)
        assert app.deliverer.idle
        event.listen(app.engine.sync_engine, "before_cursor_execute", listener)
        try:
            for _ in range(5):
                before = len(statements)
                await app.sweep()
                for _ in range(5):
                    await asyncio.sleep(0)
                assert len(statements) - before <= 1, statements[before:]
                app.clock.advance(app.settings.scheduling.sweep_seconds)
        finally:
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
            event.remove(app.engine.sync_engine, "before_cursor_execute", listener)
    finally:
        scheduler.shutdown(wait=False)
        app.scheduler = None
