"""End to end, in process: the daemon's dispatcher publishes to the sandbox on a FakeClock."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_settings
from tests.support import (
    attempt_owners,
    audit_platform,
    run_until_idle,
    seed,
    states,
    terminal_events,
)


async def test_300_posts_30_pages_3_brands_all_publish_within_guardrails(
    tmp_path: Path, db_url: str, app_factory: Any
) -> None:
    """300 clustered posts on 30 pages/3 brands publish once each, in limits, one event each."""
    settings = make_settings(
        tmp_path,
        db_url,
        guardrails={"sandbox": {"per_hour": 4, "per_24h": 9}, "brand_per_24h": 60},
        sandbox={"failure_rate": 0.05, "ambiguous_rate": 0.05, "seed": 7},
        retry={"max_attempts": 8},
    )
    app = await app_factory(settings)
    start = app.clock.now() + timedelta(minutes=15)
    seeded = await seed(
        app, brands=3, pages_per_brand=10, posts_per_page=10, start=start, spread_seconds=600
    )
    await run_until_idle(app)

    assert await states(app) == Counter({"published": 300})
    records = app.adapters["sandbox"].published_records()
    assert len(records) == 300
    assert len({r.post_ref for r in records}) == 300, "the platform received a post twice"
    violations = audit_platform(records, seeded.page_brand, app.dispatcher.limits_for("sandbox"))
    assert violations == []
    events = await terminal_events(app)
    assert set(events) == set(seeded.posts) and set(events.values()) == {1}


async def run_pair_until_idle(apps: list[Any], clock: Any, max_rounds: int = 20_000) -> None:
    """Drive several instances on one FakeClock until none has anything left to do."""
    for _ in range(max_rounds):
        wakes = await asyncio.gather(*(app.dispatcher.drain() for app in apps))
        times = [w.earliest for w in wakes if w.earliest is not None]
        if not times:
            return
        clock.set(min(times))
    raise AssertionError("instances did not settle")


@pytest.mark.postgres
async def test_two_instances_on_one_postgresql_publish_1000_once_within_limits(
    tmp_path: Path, pg_database: str, app_factory: Any, clock: Any
) -> None:
    """Two daemons sharing PostgreSQL publish 1,000 posts: no duplicate, no guardrail breach."""
    settings = make_settings(
        tmp_path,
        pg_database,
        guardrails={"sandbox": {"per_hour": 5, "per_24h": 12}, "brand_per_24h": 100},
        dispatch={"concurrency": 16, "batch_size": 50},
    )
    first = await app_factory(settings, owner="instance-a")
    second = await app_factory(settings, owner="instance-b")
    start = clock.now() + timedelta(minutes=15)
    seeded = await seed(
        first, brands=10, pages_per_brand=10, posts_per_page=10, start=start, spread_seconds=0
    )
    await run_pair_until_idle([first, second], clock)

    assert await states(first) == Counter({"published": 1000})
    records = first.adapters["sandbox"].published_records()
    assert len(records) == 1000
    assert len({r.post_ref for r in records}) == 1000, "a post reached the platform twice"
    violations = audit_platform(records, seeded.page_brand, first.dispatcher.limits_for("sandbox"))
    assert violations == []
    events = await terminal_events(first)
    assert len(events) == 1000 and set(events.values()) == {1}
    owners = await attempt_owners(first)
    assert set(owners) == {"instance-a", "instance-b"}, owners
