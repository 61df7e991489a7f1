"""Quotas against a real App on SQLite and PostgreSQL: burst, day, month, sandbox, concurrency."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select

from daemon import config
from daemon.api import limits
from daemon.api.deps import Principal
from daemon.api.errors import ApiError
from daemon.clock import FakeClock
from daemon.store.models import UsageCounter
from tests.conftest import make_settings

START = datetime(2026, 5, 14, 10, 7, 23, tzinfo=UTC)


def principal(
    kind: str = "live", *, user_id: str = "user1", token_id: str = "tok1", tier: str = "free"
) -> Principal:
    return Principal(
        token_id=token_id,
        token_name="test",
        token_prefix="outreply_live_ab12c",
        kind=kind,
        user_id=user_id,
        email="a@example.com",
        firstname=None,
        lastname=None,
        tier=tier,
        scopes=("read:posts", "write:posts"),
        brand_ids=frozenset(),
        restricted_brand_ids=(),
        expires_at=None,
        last_used_at=None,
        request_count=0,
    )


def free_tier(**overrides: int) -> dict[str, Any]:
    """A ``tiers`` settings section whose free tier has ``overrides``."""
    return {"free": {**config.TierSettings().free.model_dump(), **overrides}}


async def make_app(
    app_factory: Any, tmp_path: Path, db_url: str, clock: FakeClock, **sections: Any
) -> Any:
    clock.set(START)
    return await app_factory(make_settings(tmp_path, db_url, **sections))


async def count(app: Any, subject: str, bucket: str, period: str) -> int:
    async with app.sessions() as session:
        value = await session.scalar(
            select(UsageCounter.count).where(
                UsageCounter.subject == subject,
                UsageCounter.bucket == bucket,
                UsageCounter.period == period,
            )
        )
    return int(value or 0)


async def refused(app: Any, who: Principal, method: str = "GET") -> ApiError:
    with pytest.raises(ApiError) as caught:
        await limits.admit(app, who, method, "/api/v1/posts/scheduled", app.clock.now())
    return caught.value


async def admit(app: Any, who: Principal, method: str = "GET") -> dict[str, str]:
    return await limits.admit(app, who, method, "/api/v1/posts/scheduled", app.clock.now())


async def test_burst_limit_answers_429_with_retry_after(
    app_factory: Any, tmp_path: Path, db_url: str, clock: FakeClock
) -> None:
    """Past the tier's per-minute burst: 429 RATE_LIMITED, Retry-After to the minute's end, the
    budget headers on the refusal, and the refused request is not counted."""
    app = await make_app(app_factory, tmp_path, db_url, clock, tiers=free_tier(per_minute=3))
    who = principal()
    remaining = [(await admit(app, who))["X-RateLimit-Remaining"] for _ in range(3)]
    assert remaining == ["2", "1", "0"]
    err = await refused(app, who)
    assert (err.status, err.body()["code"]) == (429, "RATE_LIMITED")
    assert err.headers["Retry-After"] == "37" and err.body()["retry_after_seconds"] == 37
    assert err.headers["X-RateLimit-Limit"] == "3"
    assert err.headers["X-RateLimit-Remaining"] == "0"
    window_end = START.replace(minute=8, second=0)
    assert err.headers["X-RateLimit-Reset"] == str(int(window_end.timestamp()))
    assert err.headers["X-API-Tier"] == "free"
    assert err.headers["X-API-Scopes"] == "read:posts write:posts"
    assert await count(app, "user1", "requests", limits.minute_key(START)) == 3
    assert (await limits.usage(app, "user1", "free", START))["total_requests"] == 3


async def test_minute_window_resets_after_time_travel(
    app_factory: Any, tmp_path: Path, db_url: str, clock: FakeClock
) -> None:
    """A refused burst is admitted again once the clock reaches the next minute."""
    app = await make_app(app_factory, tmp_path, db_url, clock, tiers=free_tier(per_minute=2))
    who = principal()
    await admit(app, who)
    await admit(app, who)
    await refused(app, who)
    clock.advance(36)  # 10:07:59
    await refused(app, who)
    clock.advance(1)  # 10:08:00
    headers = await admit(app, who)
    assert headers["X-RateLimit-Remaining"] == "1"


async def test_daily_budget(
    app_factory: Any, tmp_path: Path, db_url: str, clock: FakeClock
) -> None:
    """Past per_day: 429 DAILY_LIMIT_EXCEEDED (no Retry-After) until the next UTC day."""
    app = await make_app(app_factory, tmp_path, db_url, clock, tiers=free_tier(per_day=3))
    who = principal()
    for _ in range(3):
        await admit(app, who)
        clock.advance(60)
    err = await refused(app, who, "POST")
    assert (err.status, err.body()["code"]) == (429, "DAILY_LIMIT_EXCEEDED")
    assert "Retry-After" not in err.headers
    assert err.body()["resets_at"] == "2026-05-15T00:00:00.000Z"
    clock.set(datetime(2026, 5, 15, tzinfo=UTC))
    await admit(app, who)


async def test_monthly_reads_run_out_and_reset_on_the_first(
    app_factory: Any, tmp_path: Path, db_url: str, clock: FakeClock
) -> None:
    """GETs past the month's reads get MONTHLY_LIMIT_EXCEEDED; writes still pass; on the 1st
    (UTC) the bucket is fresh."""
    app = await make_app(app_factory, tmp_path, db_url, clock, tiers=free_tier(reads=2))
    who = principal()
    await admit(app, who)
    await admit(app, who)
    err = await refused(app, who, "GET")
    assert (err.status, err.body()["code"], err.body()["bucket"]) == (
        429,
        "MONTHLY_LIMIT_EXCEEDED",
        "reads",
    )
    assert err.body()["resets_at"] == "2026-06-01T00:00:00.000Z"
    await admit(app, who, "POST")
    monthly = await limits.usage(app, "user1", "free", clock.now())
    assert monthly["reads"] == {"used": 2, "limit": 2, "remaining": 0}
    assert monthly["writes"] == {"used": 1, "limit": None, "remaining": None}
    assert monthly["total_requests"] == 3
    clock.set(datetime(2026, 5, 31, 23, 59, 59, tzinfo=UTC))
    await refused(app, who, "GET")
    clock.set(datetime(2026, 6, 1, tzinfo=UTC))
    await admit(app, who, "GET")
    fresh = await limits.usage(app, "user1", "free", clock.now())
    assert fresh["year_month"] == "2026-06"
    assert fresh["reads"]["used"] == 1 and fresh["total_requests"] == 1


async def test_sandbox_caps_and_no_paid_counting(
    app_factory: Any, tmp_path: Path, db_url: str, clock: FakeClock
) -> None:
    """A sandbox token gets 5 a minute (429), 50 a day (429 daily), 100 in all (402 with
    upgrade_url), and none of it shows in its user's monthly usage."""
    app = await make_app(
        app_factory, tmp_path, db_url, clock, api={"upgrade_url": "https://postd.example/up"}
    )
    sandbox = principal("sandbox", token_id="sand1")
    for day in range(2):
        for minute in range(10):
            for _ in range(5):
                headers = await admit(app, sandbox)
            if minute == 0:
                assert headers["X-RateLimit-Limit"] == "5"
                assert headers["X-API-Tier"] == "free"
                assert (await refused(app, sandbox)).body()["code"] == "RATE_LIMITED"
            clock.advance(60)
        if day == 0:
            assert (await refused(app, sandbox)).body()["code"] == "DAILY_LIMIT_EXCEEDED"
            clock.set(datetime(2026, 5, 15, tzinfo=UTC))
    err = await refused(app, sandbox)
    assert (err.status, err.body()["code"]) == (402, "SANDBOX_EXHAUSTED")
    assert err.body()["upgrade_url"] == "https://postd.example/up"
    assert await count(app, "sand1", "sandbox_requests", "lifetime") == 100
    monthly = await limits.usage(app, "user1", "free", clock.now())
    assert monthly["total_requests"] == 0 and monthly["reads"]["used"] == 0
    await limits.consume(app, sandbox, "publishes", clock.now())
    assert (await limits.usage(app, "user1", "free", clock.now()))["publishes"]["used"] == 0


async def test_consume_refuses_without_counting_and_warns_once_at_80_percent(
    app_factory: Any, tmp_path: Path, db_url: str, clock: FakeClock
) -> None:
    """consume() takes from the month's bucket, refuses what would pass the limit (counting
    nothing), and calls on_quota_warning once when the bucket first reaches 80 %."""
    app = await make_app(app_factory, tmp_path, db_url, clock, tiers=free_tier(publishes=5))
    calls: list[tuple[Any, ...]] = []

    async def hook(*args: Any) -> None:
        calls.append(args)

    app.on_quota_warning = hook
    who = principal()
    for _ in range(3):
        await limits.consume(app, who, "publishes", clock.now())
    assert calls == []
    await limits.consume(app, who, "publishes", clock.now())
    assert calls == [("user1", "publishes", 4, 5, START)]
    with pytest.raises(ApiError) as caught:
        await limits.consume(app, who, "publishes", clock.now(), n=2)
    assert caught.value.body()["code"] == "MONTHLY_LIMIT_EXCEEDED"
    assert caught.value.body()["used"] == 4
    await limits.consume(app, who, "publishes", clock.now())
    with pytest.raises(ApiError):
        await limits.consume(app, who, "publishes", clock.now())
    assert (await limits.usage(app, "user1", "free", clock.now()))["publishes"] == {
        "used": 5,
        "limit": 5,
        "remaining": 0,
    }
    assert len(calls) == 1
    clock.set(datetime(2026, 6, 1, tzinfo=UTC))
    for _ in range(4):
        await limits.consume(app, who, "publishes", clock.now())
    assert [c[1:4] for c in calls] == [("publishes", 4, 5), ("publishes", 4, 5)]


async def test_reads_warning_fires_from_admit(
    app_factory: Any, tmp_path: Path, db_url: str, clock: FakeClock
) -> None:
    """Reads reaching 80 % through requests call the (sync) hook once."""
    app = await make_app(app_factory, tmp_path, db_url, clock, tiers=free_tier(reads=5))
    calls: list[tuple[Any, ...]] = []
    app.on_quota_warning = lambda *args: calls.append(args)
    for _ in range(5):
        await admit(app, principal())
    assert calls == [("user1", "reads", 4, 5, START)]


async def two_apps(app: Any, app_factory: Any, db_url: str) -> list[Any]:
    """The app, plus a second instance on the same database where the backend allows it
    (SQLite is single-instance: the instance lock forbids a second)."""
    if db_url.startswith("sqlite"):
        return [app]
    return [app, await app_factory(app.settings)]


async def test_concurrent_admits_count_exactly(
    app_factory: Any, tmp_path: Path, db_url: str, clock: FakeClock
) -> None:
    """50 concurrent admits (two instances on PostgreSQL) leave every counter at exactly 50."""
    app = await make_app(app_factory, tmp_path, db_url, clock, tiers=free_tier(per_minute=100))
    apps = await two_apps(app, app_factory, db_url)
    who = principal()
    await asyncio.gather(*(admit(apps[i % len(apps)], who) for i in range(50)))
    assert await count(app, "user1", "requests", limits.minute_key(START)) == 50
    assert await count(app, "user1", "requests", limits.day_key(START)) == 50
    monthly = await limits.usage(app, "user1", "free", START)
    assert monthly["reads"]["used"] == 50 and monthly["total_requests"] == 50


async def test_concurrent_admits_never_pass_the_limit(
    app_factory: Any, tmp_path: Path, db_url: str, clock: FakeClock
) -> None:
    """50 concurrent admits against 20 per minute: exactly 20 pass, 30 get RATE_LIMITED, and
    only the 20 are counted (two instances on PostgreSQL)."""
    app = await make_app(app_factory, tmp_path, db_url, clock, tiers=free_tier(per_minute=20))
    apps = await two_apps(app, app_factory, db_url)
    who = principal()
    results = await asyncio.gather(
        *(admit(apps[i % len(apps)], who) for i in range(50)), return_exceptions=True
    )
    passed = [r for r in results if isinstance(r, dict)]
    refusals = [r for r in results if isinstance(r, ApiError)]
    assert (len(passed), len(refusals)) == (20, 30)
    assert {r.body()["code"] for r in refusals} == {"RATE_LIMITED"}
    assert sorted(int(h["X-RateLimit-Remaining"]) for h in passed) == list(range(20))
    assert await count(app, "user1", "requests", limits.minute_key(START)) == 20
    assert (await limits.usage(app, "user1", "free", START))["total_requests"] == 20


async def test_concurrent_consumes_never_pass_the_bucket(
    app_factory: Any, tmp_path: Path, db_url: str, clock: FakeClock
) -> None:
    """30 concurrent publishes against a bucket of 12: exactly 12 pass and are counted."""
    app = await make_app(app_factory, tmp_path, db_url, clock, tiers=free_tier(publishes=12))
    apps = await two_apps(app, app_factory, db_url)
    who = principal()
    results = await asyncio.gather(
        *(limits.consume(apps[i % len(apps)], who, "publishes", START) for i in range(30)),
        return_exceptions=True,
    )
    assert sum(r is None for r in results) == 12
    assert (await limits.usage(app, "user1", "free", START))["publishes"]["used"] == 12


async def test_users_and_tokens_count_apart(
    app_factory: Any, tmp_path: Path, db_url: str, clock: FakeClock
) -> None:
    """Two tokens of one user share its burst; another user has their own."""
    app = await make_app(app_factory, tmp_path, db_url, clock, tiers=free_tier(per_minute=2))
    await admit(app, principal(token_id="a"))
    await admit(app, principal(token_id="b"))
    await refused(app, principal(token_id="c"))
    await admit(app, principal(user_id="user2", token_id="d"))


async def test_purge_keeps_months_and_recent_windows(
    app_factory: Any, tmp_path: Path, db_url: str, clock: FakeClock
) -> None:
    """purge_counters drops minute and day rows older than two days and keeps the rest."""
    app = await make_app(app_factory, tmp_path, db_url, clock)
    await admit(app, principal())
    clock.advance(timedelta(days=3))
    await admit(app, principal())
    async with app.sessions() as session, session.begin():
        deleted = await limits.purge_counters(session, clock.now())
    assert deleted == 2
    async with app.sessions() as session:
        periods = sorted(await session.scalars(select(UsageCounter.period)))
    assert periods == ["2026-05", "2026-05", "d:2026-05-17", "m:2026-05-17T10:07"]


async def test_refund_gives_back_what_was_taken(
    app_factory: Any, tmp_path: Path, db_url: str, clock: FakeClock
) -> None:
    """refund() returns consumed units to the month's bucket, never below zero."""
    app = await make_app(app_factory, tmp_path, db_url, clock)
    await limits.consume(app, principal(), "replies", START, n=2)
    await limits.refund(app, "user1", "replies", START)
    assert (await limits.usage(app, "user1", "free", START))["replies"]["used"] == 1
    await limits.refund(app, "user1", "replies", START, n=5)
    assert (await limits.usage(app, "user1", "free", START))["replies"]["used"] == 1


async def test_a_rider_runs_in_the_admission_transaction_only_when_admitted(
    app_factory: Any, tmp_path: Path, db_url: str, clock: FakeClock
) -> None:
    """admit(..., rider) runs the rider in the counting transaction (no transaction of its own)
    when the request is admitted, not when it is refused; a rider that fails is undone alone
    and the request is admitted and counted all the same."""
    app = await make_app(app_factory, tmp_path, db_url, clock, tiers=free_tier(per_minute=2))
    who, now, path = principal(), clock.now(), "/api/v1/posts/schedule"
    ran: list[str] = []

    async def rider(conn: Any) -> None:
        await conn.execute(
            insert(UsageCounter).values(subject="rider", bucket="b", period="p", count=1)
        )
        ran.append("ok")

    async def failing(conn: Any) -> None:
        await conn.execute(
            insert(UsageCounter).values(subject="failing", bucket="b", period="p", count=1)
        )
        raise RuntimeError("a rider of its own failure")

    before = app.writer.batches
    await limits.admit(app, who, "POST", path, now, rider)
    assert ran == ["ok"] and app.writer.batches == before + 1
    await limits.admit(app, who, "POST", path, now, failing)
    with pytest.raises(ApiError):
        await limits.admit(app, who, "POST", path, now, rider)
    assert ran == ["ok"]
    assert await count(app, "rider", "b", "p") == 1
    assert await count(app, "failing", "b", "p") == 0  # undone alone
    assert await count(app, "user1", "requests", limits.minute_key(START)) == 2
