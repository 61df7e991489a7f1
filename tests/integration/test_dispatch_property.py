"""Property: whatever the schedule, the real dispatcher (store, claims, sandbox) never breaks a
window, the gap or the brand net, and never publishes early or twice."""

from __future__ import annotations

import asyncio
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters import sandbox
from daemon import services
from daemon.clock import FakeClock
from tests.conftest import make_settings, started_app
from tests.support import audit_platform, run_until_idle

PLATFORMS = ("sandbox", "facebook", "linkedin")

post_strategy = st.tuples(
    st.integers(min_value=0, max_value=5),  # page index
    st.floats(min_value=0, max_value=7200, allow_nan=False),  # seconds after the start
)


async def scenario(posts: list[tuple[int, float]], gap: int, brand_cap: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        conf = make_settings(
            base,
            f"sqlite:///{base / 'p.db'}",
            guardrails={
                "min_gap_seconds": gap,
                "brand_per_24h": brand_cap,
                "sandbox": {"per_hour": 3, "per_24h": 8},
                "linkedin": {"per_hour": 2, "per_24h": 5},
            },
        )
        clock = FakeClock()
        platform = sandbox.SandboxAdapter(base / "platform.db", clock)
        app = await started_app(conf, clock, adapters={p: platform for p in PLATFORMS})
        try:
            await check(app, platform, posts)
        finally:
            await app.dispatcher.stop(0)
            await app.close()


async def check(app: Any, platform: Any, posts: list[tuple[int, float]]) -> None:
    now = app.clock.now()
    start = now + timedelta(minutes=15)
    page_brand: dict[str, str] = {}
    page_platform: dict[str, str] = {}
    scheduled: dict[str, Any] = {}
    async with app.sessions() as session, session.begin():
        brands = [await services.add_brand(session, f"b{i}", now) for i in range(2)]
        await session.flush()
        pages = []
        for i in range(6):
            page = await services.add_page(
                session, brand_id=brands[i % 2].id, platform=PLATFORMS[i % 3], name=f"p{i}", now=now
            )
            await session.flush()
            pages.append(page)
            page_brand[page.id] = page.brand_id
            page_platform[page.id] = page.platform
        for n, (index, offset) in enumerate(posts):
            at = start + timedelta(seconds=offset)
            new = services.NewPost(page_id=pages[index].id, scheduled_at=at, message=f"m{n}")
            made = await services.schedule_post(
                session, new, now=now, scheduling=app.settings.scheduling, check_lead=False
            )
            scheduled[made.id] = at
    await run_until_idle(app)
    records = platform.published_records()
    assert sorted(r.post_ref for r in records) == sorted(scheduled)
    for rec in records:
        assert rec.published_at >= scheduled[rec.post_ref]
    for name in PLATFORMS:
        subset = [r for r in records if page_platform[r.page_id] == name]
        limits = app.dispatcher.limits_for(name)
        page_only = [
            v for v in audit_platform(subset, page_brand, limits) if v.rule.startswith("page")
        ]
        assert page_only == []
    brand_limits = app.dispatcher.limits_for("sandbox")
    brand_only = [
        v for v in audit_platform(records, page_brand, brand_limits) if v.rule.startswith("brand")
    ]
    assert brand_only == []


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    posts=st.lists(post_strategy, min_size=1, max_size=24),
    gap=st.sampled_from([0, 60, 300]),
    brand_cap=st.integers(min_value=4, max_value=30),
)
def test_dispatcher_respects_every_limit_for_random_schedules(
    posts: list[tuple[int, float]], gap: int, brand_cap: int
) -> None:
    """Random schedules on 6 pages/2 brands/3 platforms: each publishes once, in limits, on time."""
    asyncio.run(scenario(posts, gap, brand_cap))
