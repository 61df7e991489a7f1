"""The API's counts-only guardrail check reads the same posts as the full histories."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from daemon import guardrails, ids, lifecycle, services
from daemon.api import queries
from daemon.store import db
from daemon.store.models import Post
from tests.conftest import make_settings

AT = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
NOW = datetime(2026, 5, 1, tzinfo=UTC)
STATES = (lifecycle.SCHEDULED, lifecycle.PUBLISHED, lifecycle.PUBLISHING, lifecycle.CANCELLED)


def row(page: Any, state: str, due: datetime, counted: datetime | None) -> dict[str, Any]:
    return {
        "id": ids.new_id(NOW.timestamp()),
        "page_id": page.id,
        "brand_id": page.brand_id,
        "platform": page.platform,
        "state": state,
        "message": "m",
        "media": [],
        "options": {},
        "scheduled_at": due,
        "due_at": due,
        "counted_at": counted,
        "attempts": 0,
        "created_at": NOW,
        "updated_at": NOW,
    }


async def test_nearby_counts_what_histories_returns(
    tmp_path: Path, db_url: str, app_factory: Any
) -> None:
    """Random posts in every state around AT, some exactly on a window's edge: for several
    instants and gaps, queries.nearby's four counts equal the ones taken from the rows of
    queries.histories (open intervals), on both databases."""
    app = await app_factory(make_settings(tmp_path, db_url))
    rng = random.Random(7)
    edges = [timedelta(hours=h) for h in (-24, -1, 1, 24)] + [
        timedelta(seconds=s) for s in (-60, 60)
    ]
    async with app.sessions() as session, session.begin():
        brand = await services.add_brand(session, "b", NOW)
        other = await services.add_brand(session, "other", NOW)
        await session.flush()
        pages = [
            await services.add_page(session, brand_id=b.id, platform="sandbox", name=n, now=NOW)
            for b, n in ((brand, "p1"), (brand, "p2"), (other, "p3"))
        ]
        await session.flush()
        rows = []
        for i in range(300):
            page = pages[i % 3]
            offset = (
                rng.choice(edges)
                if i % 5 == 0
                else timedelta(seconds=rng.randint(-30 * 3600, 30 * 3600))
            )
            state = rng.choice(STATES)
            instant = AT + offset
            counted = instant if state in (lifecycle.PUBLISHED, lifecycle.PUBLISHING) else None
            # A published post's due_at may be far from when it counted.
            due = instant - timedelta(hours=rng.randint(0, 40)) if counted else instant
            rows.append(row(page, state, due, counted))
        mine = row(pages[0], lifecycle.SCHEDULED, AT + timedelta(minutes=10), None)
        await session.execute(insert(Post), [*rows, mine])
    async with db.reading(app) as conn:
        checked = 0
        for page in pages[:2]:
            for at in (AT, AT + timedelta(minutes=17), AT - timedelta(hours=5)):
                for gap in (timedelta(0), timedelta(seconds=60), timedelta(minutes=30)):
                    got = await queries.nearby(conn, page, at, gap, None)
                    on_page, on_brand = await queries.histories(
                        conn, page, lo=at - guardrails.DAY, hi=at + guardrails.DAY
                    )

                    def within(events: list[datetime], span: timedelta, at: datetime = at) -> int:
                        return sum(1 for e in events if at - span < e < at + span)

                    want = guardrails.Nearby(
                        page_hour=within(on_page, guardrails.HOUR),
                        page_day=len(on_page),
                        page_gap=within(on_page, gap),
                        brand_day=len(on_brand),
                    )
                    # Day counts are over (lo, hi], as histories reads; the rest open intervals.
                    assert got == want, (page.name, at, gap)
                    checked += got.brand_day
        both = await queries.nearby(conn, pages[0], AT, timedelta(minutes=15), None)
        without = await queries.nearby(conn, pages[0], AT, timedelta(minutes=15), mine["id"])
    assert checked > 0
    # Leaving a rescheduled post out of its own check takes it out of every count.
    assert (both.page_hour - without.page_hour, both.page_day - without.page_day) == (1, 1)
    assert (both.page_gap - without.page_gap, both.brand_day - without.brand_day) == (1, 1)
