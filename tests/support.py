"""Test helpers: seed brands/pages/posts straight through the services, audit the outcome."""

from __future__ import annotations

import os
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from daemon import guardrails, services
from daemon.store.models import OutboxEvent, Post, PublishAttempt


@dataclass
class Seeded:
    brands: list[str]
    pages: list[str]
    page_brand: dict[str, str]
    posts: list[str]


async def seed(
    app: Any,
    *,
    brands: int,
    pages_per_brand: int,
    posts_per_page: int,
    start: datetime,
    spread_seconds: float,
    platform: str = "sandbox",
    text: str = "post",
    first_comment: str | None = None,
) -> Seeded:
    """Brands x pages x posts with due times clustered in [start, start + spread)."""
    now = app.clock.now()
    out = Seeded([], [], {}, [])
    async with app.sessions() as session, session.begin():
        for b in range(brands):
            brand = await services.add_brand(session, f"brand {b}", now)
            out.brands.append(brand.id)
            await session.flush()
            for p in range(pages_per_brand):
                page = await services.add_page(
                    session, brand_id=brand.id, platform=platform, name=f"page {b}.{p}", now=now
                )
                await session.flush()
                out.pages.append(page.id)
                out.page_brand[page.id] = brand.id
        index = 0
        for n in range(posts_per_page):
            for page_id in out.pages:
                offset = (index * 7919 % 1000) / 1000 * spread_seconds
                at = start + timedelta(seconds=offset)
                post = await services.schedule_post(
                    session,
                    services.NewPost(
                        page_id=page_id,
                        scheduled_at=at,
                        message=f"{text} {n} {index}",
                        first_comment=first_comment,
                    ),
                    now=now,
                    scheduling=app.settings.scheduling,
                    check_lead=False,
                )
                out.posts.append(post.id)
                index += 1
    return out


async def run_until_idle(app: Any, *, max_rounds: int = 100_000) -> int:
    """Drive the dispatcher with its FakeClock until nothing is left to do; returns rounds."""
    for rounds in range(1, max_rounds + 1):
        wake = await app.dispatcher.drain()
        if wake.earliest is None:
            return rounds
        app.clock.set(wake.earliest)
    raise AssertionError("dispatcher did not settle")


async def states(app: Any) -> Counter[str]:
    async with app.sessions() as session:
        rows = await session.execute(select(Post.state, func.count()).group_by(Post.state))
        return Counter(dict(rows.all()))


async def terminal_events(app: Any) -> Counter[str]:
    async with app.sessions() as session:
        rows = await session.scalars(
            select(OutboxEvent.post_id).where(
                OutboxEvent.event.in_(["post.published", "post.failed"])
            )
        )
        return Counter(rows)


def audit_platform(
    records: list[Any], page_brand: dict[str, str], limits: guardrails.Limits
) -> list[guardrails.Violation]:
    """Every window/gap breach in what the (sandbox) platform actually received."""
    by_page: dict[str, list[datetime]] = defaultdict(list)
    by_brand: dict[str, list[datetime]] = defaultdict(list)
    for rec in records:
        by_page[rec.page_id].append(rec.published_at)
        by_brand[page_brand[rec.page_id]].append(rec.published_at)
    found: list[guardrails.Violation] = []
    for instants in by_page.values():
        found += guardrails.check_page_sequence(sorted(instants), limits.page)
    for instants in by_brand.values():
        found += guardrails.check_brand_sequence(sorted(instants), limits.brand_per_24h)
    return found


async def attempt_owners(app: Any) -> Counter[str]:
    """How many attempts each instance made."""
    async with app.sessions() as session:
        return Counter(await session.scalars(select(PublishAttempt.instance)))


def postd_command() -> list[str]:
    """How to run this checkout's ``postd`` CLI as a subprocess."""
    script = Path(sys.executable).with_name("postd")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from daemon.cli import main; main()"]


def clean_env() -> dict[str, str]:
    """The environment for a ``postd`` subprocess: the caller's shell without its POSTD_*
    variables, which would override the test's config file."""
    return {k: v for k, v in os.environ.items() if not k.startswith("POSTD_")}
