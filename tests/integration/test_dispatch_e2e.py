"""End to end, in process: the daemon's dispatcher publishes to the sandbox on a FakeClock."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

from tests.conftest import make_settings
from tests.support import audit_platform, run_until_idle, seed, states, terminal_events


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
