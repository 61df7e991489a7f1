"""Idle daemon (SPEC §2): with 100,000 future posts, each safety sweep makes at most one query.

Statements are counted with SQLAlchemy's ``before_cursor_execute`` event on the app's engine, so
they include what postd itself sends through SQLAlchemy (SQLite's ``BEGIN IMMEDIATE`` included).
What a driver sends on its own (psycopg's implicit BEGIN, the pool's pre-ping, the DBAPI
``rollback()``) does not pass through that event; ``bench/idle.py`` measures the daemon from
outside as well.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy import event, insert

from daemon import ids, lifecycle
from daemon.app import DUE_JOB
from daemon.store.models import Brand, Page, Post
from tests.conftest import make_settings
from tests.support import states

N_POSTS = 100_000
BRANDS = 10
PAGES_PER_BRAND = 10
SPACING = timedelta(seconds=5)  # 100,000 posts over ~5.8 days
LEAD = timedelta(days=1)  # the earliest post is due a day after "now"
SWEEPS = 10
STRIDE = 7919  # prime, coprime with N_POSTS: row i gets slot (i * STRIDE + OFFSET) % N_POSTS
OFFSET = 12_345
TRANSACTION_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "PRAGMA")


@dataclass
class Seeded:
    earliest: datetime
    earliest_id: str
    second: datetime


async def seed_future_posts(app: Any, n: int = N_POSTS) -> Seeded:
    """``n`` scheduled posts, due from ``now + LEAD`` on, bulk-inserted (earliest mid-table)."""
    now = app.clock.now()
    first = now + LEAD
    brands = [
        {"id": ids.new_id(now.timestamp()), "name": f"brand {b}", "timezone": "UTC"}
        for b in range(BRANDS)
    ]
    pages = [
        {
            "id": ids.new_id(now.timestamp()),
            "brand_id": brand["id"],
            "platform": "sandbox",
            "name": f"page {b}.{p}",
            "followers": 0,
            "status": "active",
        }
        for b, brand in enumerate(brands)
        for p in range(PAGES_PER_BRAND)
    ]
    rows = []
    earliest_id = ""
    for i in range(n):
        slot = (i * STRIDE + OFFSET) % n
        page = pages[i % len(pages)]
        due = first + slot * SPACING
        post_id = ids.new_id(now.timestamp())
        if slot == 0:
            earliest_id = post_id
        rows.append(
            {
                "id": post_id,
                "page_id": page["id"],
                "brand_id": page["brand_id"],
                "platform": "sandbox",
                "state": lifecycle.SCHEDULED,
                "message": f"future post {i}",
                "media": [],
                "options": {},
                "scheduled_at": due,
                "due_at": due,
                "attempts": 0,
                "created_at": now,
                "updated_at": now,
            }
        )
    async with app.engine.begin() as conn:
        await conn.execute(insert(Brand.__table__), [{**b, "created_at": now} for b in brands])
        await conn.execute(insert(Page.__table__), [{**p, "created_at": now} for p in pages])
        for start in range(0, n, 20_000):
            await conn.execute(insert(Post.__table__), rows[start : start + 20_000])
    return Seeded(first, earliest_id, first + SPACING)


@dataclass
class Recorder:
    statements: list[str] = field(default_factory=list)
    connects: int = 0

    def on_execute(self, *args: Any) -> None:
        self.statements.append(args[2])  # (conn, cursor, statement, parameters, context, many)

    def on_connect(self, *_args: Any) -> None:
        self.connects += 1


@contextlib.asynccontextmanager
async def recording(app: Any) -> AsyncIterator[Recorder]:
    """Every statement the app's engine executes, and every new DBAPI connection it opens."""
    rec = Recorder()
    engine = app.engine.sync_engine
    event.listen(engine, "before_cursor_execute", rec.on_execute)
    event.listen(engine, "connect", rec.on_connect)
    try:
        yield rec
    finally:
        event.remove(engine, "before_cursor_execute", rec.on_execute)
        event.remove(engine, "connect", rec.on_connect)


@contextlib.asynccontextmanager
async def paused_scheduler(app: Any) -> AsyncIterator[AsyncIOScheduler]:
    """A real APScheduler for ``App.arm`` to add its date job to; paused, so nothing fires."""
    scheduler = AsyncIOScheduler(timezone="UTC")
    scheduler.start(paused=True)
    app.scheduler = scheduler
    try:
        yield scheduler
    finally:
        scheduler.shutdown(wait=False)
        app.scheduler = None


def count_wakes(app: Any) -> list[datetime]:
    """Record every ``Dispatcher.wake()`` (the sweep calls it when something is due)."""
    woken: list[datetime] = []
    original: Callable[[], None] = app.dispatcher.wake

    def wake() -> None:
        woken.append(app.clock.now())
        original()

    app.dispatcher.wake = wake
    return woken


async def yield_to_loop(times: int = 5) -> None:
    for _ in range(times):
        await asyncio.sleep(0)


def _reads_posts(statement: str) -> bool:
    """A data query (not transaction control) that reads the posts table."""
    text = " ".join(statement.split()).upper()
    return not text.startswith(TRANSACTION_CONTROL) and " FROM POSTS" in text


def _show(per_sweep: list[list[str]]) -> str:
    lines = []
    for n, stmts in enumerate(per_sweep, 1):
        shown = "; ".join(" ".join(s.split())[:70] for s in stmts) or "(none)"
        lines.append(f"  sweep {n}: {len(stmts)} statement(s): {shown}")
    return "\n".join(lines)


async def test_idle_sweeps_make_at_most_one_query_each_with_100k_future_posts(
    tmp_path: Path, db_url: str, app_factory: Any
) -> None:
    """Ten idle sweeps over 100,000 future posts: one statement each, nothing published, armed."""
    settings = make_settings(tmp_path, db_url)
    app = await app_factory(settings)
    seeded = await seed_future_posts(app)
    interval = settings.scheduling.sweep_seconds
    woken = count_wakes(app)
    pump = asyncio.create_task(app.dispatcher.pump())  # runs whatever a sweep wakes
    per_sweep: list[list[str]] = []
    try:
        async with paused_scheduler(app) as scheduler, recording(app) as rec:
            for _ in range(SWEEPS):
                before = len(rec.statements)
                await app.sweep()
                await yield_to_loop()
                per_sweep.append(rec.statements[before:])
                job = scheduler.get_job(DUE_JOB)
                assert job is not None and job.next_run_time == seeded.earliest
                app.clock.advance(interval)
    finally:
        pump.cancel()
        await asyncio.gather(pump, return_exceptions=True)

    assert woken == [], "an idle sweep woke the dispatcher"
    assert app.dispatcher._armed == seeded.earliest
    assert app.dispatcher.in_flight == 0
    assert app.adapters["sandbox"].published_records() == []
    assert await states(app) == Counter({lifecycle.SCHEDULED: N_POSTS})
    assert app.metrics.registry.get_sample_value("postd_dispatcher_ticks_total") == SWEEPS
    assert rec.connects == 0, "an idle sweep opened a new connection instead of a pooled one"
    # The data query: exactly one per sweep (next_wake's SELECT over the posts table).
    data = [[s for s in stmts if _reads_posts(s)] for stmts in per_sweep]
    assert all(len(found) == 1 for found in data), _show(per_sweep)
    # SPEC §2 counted strictly: nothing else goes through the engine either.
    assert all(len(stmts) <= 1 for stmts in per_sweep), (
        f"SPEC §2: more than one statement per idle sweep on {app.engine.dialect.name}:\n"
        + _show(per_sweep)
    )


async def test_sweep_wakes_the_dispatcher_when_the_earliest_post_falls_due(
    tmp_path: Path, db_url: str, app_factory: Any
) -> None:
    """Once the clock passes the earliest of 100,000 posts, the sweep wakes; only it publishes."""
    settings = make_settings(tmp_path, db_url)
    app = await app_factory(settings)
    seeded = await seed_future_posts(app)
    woken = count_wakes(app)
    async with paused_scheduler(app) as scheduler:
        await app.sweep()
        job = scheduler.get_job(DUE_JOB)
        assert job is not None and job.next_run_time == seeded.earliest
        assert woken == []

        app.clock.set(seeded.earliest + timedelta(seconds=1))
        await app.sweep()
        await yield_to_loop()
        assert woken == [app.clock.now()]

        wake = await app.dispatcher.drain()
        await app.sweep()  # the next sweep re-arms the timer at the next post
        job = scheduler.get_job(DUE_JOB)

    records = app.adapters["sandbox"].published_records()
    assert [r.post_ref for r in records] == [seeded.earliest_id]
    assert await states(app) == Counter({lifecycle.PUBLISHED: 1, lifecycle.SCHEDULED: N_POSTS - 1})
    assert wake.next_due == seeded.second
    assert job is not None and job.next_run_time == seeded.second
