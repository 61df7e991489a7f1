"""Use cases shared by the CLI and the API: brands, pages, scheduling, cancelling, reading.

Every function validates before it writes: bad input raises InputError with a stable code and
changes nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from adapters import base
from daemon import config as config_mod
from daemon import ids, lifecycle
from daemon.dispatch import transitions
from daemon.errors import InputError, NotFoundError
from daemon.store import notify
from daemon.store.models import Brand, OutboxEvent, Page, Post, PublishAttempt, User
from daemon.timefmt import aware, iso

MAX_MESSAGE = 5000


async def add_brand(
    session: AsyncSession, name: str, now: datetime, owner_id: str | None = None
) -> Brand:
    name = name.strip()
    if not name:
        raise InputError("MISSING_FIELD", "a brand needs a name", field="name")
    if owner_id is not None and await session.get(User, owner_id) is None:
        raise NotFoundError(f"unknown user {owner_id!r}")
    brand = Brand(id=ids.new_id(now.timestamp()), name=name, owner_id=owner_id, created_at=now)
    session.add(brand)
    return brand


async def list_brands(session: AsyncSession) -> list[dict[str, Any]]:
    """Every brand, oldest first, with its owner's email and how many pages it has."""
    pages = select(Page.brand_id, func.count().label("pages")).group_by(Page.brand_id).subquery()
    rows = await session.execute(
        select(Brand, User.email, func.coalesce(pages.c.pages, 0))
        .outerjoin(User, User.id == Brand.owner_id)
        .outerjoin(pages, pages.c.brand_id == Brand.id)
        .order_by(Brand.created_at, Brand.id)
    )
    return [
        {
            "id": b.id,
            "name": b.name,
            "owner_id": b.owner_id,
            "owner_email": email,
            "pages": count,
            "created_at": iso(aware(b.created_at)),
        }
        for b, email, count in rows.all()
    ]


async def add_page(
    session: AsyncSession,
    *,
    brand_id: str,
    platform: str,
    name: str,
    now: datetime,
    username: str | None = None,
    external_id: str | None = None,
) -> Page:
    if await session.get(Brand, brand_id) is None:
        raise NotFoundError(f"unknown brand {brand_id!r}")
    if platform not in config_mod.PLATFORMS:
        raise InputError(
            "INVALID_PLATFORM",
            f"unknown platform {platform!r}; one of {', '.join(config_mod.PLATFORMS)}",
            field="platform",
        )
    if not name.strip():
        raise InputError("MISSING_FIELD", "a page needs a name", field="name")
    page = Page(
        id=ids.new_id(now.timestamp()),
        brand_id=brand_id,
        platform=platform,
        name=name.strip(),
        username=username,
        external_id=external_id,
        created_at=now,
    )
    session.add(page)
    return page


async def get_page(session: AsyncSession, page_id: str) -> Page:
    page = await session.get(Page, page_id)
    if page is None:
        raise NotFoundError(f"unknown page {page_id!r}")
    return page


@dataclass(frozen=True, slots=True)
class NewPost:
    page_id: str
    scheduled_at: datetime
    message: str | None = None
    media: tuple[dict[str, Any], ...] = ()
    first_comment: str | None = None
    options: dict[str, Any] | None = None


def check_time(at: datetime, now: datetime, scheduling: config_mod.SchedulingSettings) -> None:
    if at.tzinfo is None:
        raise InputError("INVALID_DATE", "scheduled_at has no time zone", field="scheduled_at")
    if at <= now:
        raise InputError(
            "INVALID_DATE",
            f"scheduled_at {iso(at)} is in the past (now {iso(now)})",
            field="scheduled_at",
        )
    lead = timedelta(seconds=scheduling.min_lead_seconds)
    if at < now + lead:
        raise InputError(
            "SCHEDULE_TOO_SOON",
            f"scheduled_at must be at least {scheduling.min_lead_seconds} s ahead "
            f"(scheduling.min_lead_seconds); earliest now is {iso(now + lead)}",
            field="scheduled_at",
        )
    horizon = timedelta(days=scheduling.max_horizon_days)
    if at > now + horizon:
        raise InputError(
            "SCHEDULE_TOO_FAR",
            f"scheduled_at must be at most {scheduling.max_horizon_days} days ahead",
            field="scheduled_at",
        )


def check_content(
    message: str | None,
    media: Sequence[dict[str, Any]],
    first_comment: str | None,
    page: Page,
    adapter: base.Adapter | None,
    options: dict[str, Any] | None = None,
) -> None:
    """What a post must hold before it is accepted, for the CLI and the API alike: a message or
    a media item, texts within the limit, and nothing the page's platform would refuse
    (``adapter.validate``). InputError with a stable code otherwise."""
    if not (message and message.strip()) and not media:
        raise InputError(
            "MISSING_FIELD", "Either message or one media item is required", field="message"
        )
    for field, text in (("message", message), ("first_comment", first_comment)):
        if text is not None and len(text) > MAX_MESSAGE:
            raise InputError(
                "MESSAGE_TOO_LONG",
                f"{field} is {len(text)} characters; the limit is {MAX_MESSAGE}",
                field=field,
            )
    if adapter is None:
        return
    draft = base.PostPayload(
        post_id="draft",
        page_id=page.id,
        platform=page.platform,
        message=message,
        media=tuple(
            base.MediaItem(url=str(m.get("src")), kind=str(m.get("type", "photo"))) for m in media
        ),
        first_comment=first_comment,
        options=options or {},
    )
    problems = adapter.validate(draft)
    if problems:
        raise InputError(
            "INVALID_POST",
            f"{page.platform} would refuse this post: " + "; ".join(problems),
            problems=problems,
        )


async def schedule_post(
    session: AsyncSession,
    new: NewPost,
    *,
    now: datetime,
    scheduling: config_mod.SchedulingSettings,
    adapter: base.Adapter | None = None,
    check_lead: bool = True,
) -> Post:
    page = await get_page(session, new.page_id)
    if check_lead:
        check_time(new.scheduled_at, now, scheduling)
    check_content(new.message, new.media, new.first_comment, page, adapter, new.options)
    post = Post(**post_values(new, page, now))
    session.add(post)
    await notify.due(session, post.due_at)
    return post


def post_values(new: NewPost, page: Page, now: datetime) -> dict[str, Any]:
    """The row of a new scheduled post for ``new`` on ``page`` (checked already)."""
    at = new.scheduled_at.astimezone(UTC)
    return {
        "id": ids.new_id(now.timestamp()),
        "page_id": page.id,
        "brand_id": page.brand_id,
        "platform": page.platform,
        "state": lifecycle.SCHEDULED,
        "message": new.message,
        "media": list(new.media),
        "first_comment": new.first_comment,
        "options": new.options or {},
        "scheduled_at": at,
        "due_at": at,
        "attempts": 0,
        "created_at": now,
        "updated_at": now,
    }


async def cancel_post(session: AsyncSession, post_id: str, now: datetime) -> Post:
    post = await session.get(Post, post_id)
    if post is None or post.state in (lifecycle.CANCELLED, lifecycle.PUBLISHED, lifecycle.FAILED):
        state = "" if post is None else f" (it is {post.state})"
        raise NotFoundError(f"no pending post {post_id!r}{state}")
    if post.state == lifecycle.PUBLISHING:
        raise InputError("POST_PUBLISHING", f"post {post_id} is being published right now")
    lifecycle.check(post.state, lifecycle.CANCELLED)
    post.state = lifecycle.CANCELLED
    post.updated_at = now
    return post


def attempt_dict(a: PublishAttempt) -> dict[str, Any]:
    return {
        "number": a.number,
        "started_at": iso(a.started_at),
        "finished_at": iso(a.finished_at),
        "outcome": a.outcome,
        "error_class": a.error_class,
        "error_code": a.error_code,
        "http_status": a.http_status,
        "excerpt": a.excerpt,
        "duration_ms": a.duration_ms,
        "instance": a.instance,
    }


def post_dict(post: Post, attempts: list[PublishAttempt] | None = None) -> dict[str, Any]:
    body = lifecycle.post_object(transitions.view(post))
    body.update(
        brand_id=post.brand_id,
        not_before=iso(post.not_before),
        defer_reason=post.defer_reason,
        attempts_count=post.attempts,
        last_error=(
            {"code": post.error_code, "message": post.error_message} if post.error_code else None
        ),
    )
    if attempts is not None:
        body["attempts"] = [attempt_dict(a) for a in attempts]
    return body


async def list_posts(
    session: AsyncSession,
    *,
    state: str | None = None,
    page_id: str | None = None,
    limit: int = 1000,
    with_attempts: bool = True,
) -> list[dict[str, Any]]:
    stmt = select(Post).order_by(Post.scheduled_at, Post.id).limit(limit)
    if state:
        stmt = stmt.where(Post.state == state)
    if page_id:
        stmt = stmt.where(Post.page_id == page_id)
    posts = list(await session.scalars(stmt))
    by_post: dict[str, list[PublishAttempt]] = {p.id: [] for p in posts}
    if with_attempts and posts:
        rows = await session.scalars(
            select(PublishAttempt)
            .where(PublishAttempt.post_id.in_(list(by_post)))
            .order_by(PublishAttempt.post_id, PublishAttempt.number, PublishAttempt.id)
        )
        for a in rows:
            by_post[a.post_id].append(a)
    return [post_dict(p, by_post[p.id] if with_attempts else None) for p in posts]


async def list_events(
    session: AsyncSession, *, after: int = 0, limit: int = 1000
) -> list[dict[str, Any]]:
    rows = await session.scalars(
        select(OutboxEvent).where(OutboxEvent.id > after).order_by(OutboxEvent.id).limit(limit)
    )
    return [
        {
            "id": e.id,
            "event": e.event,
            "post_id": e.post_id,
            "created_at": iso(e.created_at),
            "payload": e.payload,
        }
        for e in rows
    ]


async def status(
    session: AsyncSession, settings: config_mod.Settings, now: datetime
) -> dict[str, Any]:
    counts = dict(
        (await session.execute(select(Post.state, func.count()).group_by(Post.state))).all()
    )
    next_due = await session.scalar(
        select(func.min(Post.due_at)).where(Post.state == lifecycle.SCHEDULED)
    )
    usage = Counter[tuple[str, str]]()
    rows = await session.execute(
        select(Post.page_id, Post.counted_at).where(
            Post.counted_at.is_not(None), Post.counted_at > now - timedelta(hours=24)
        )
    )
    for page_id, counted in rows.all():
        usage[(page_id, "24h")] += 1
        if counted is not None and counted > now - timedelta(hours=1):
            usage[(page_id, "1h")] += 1
    pages = list(await session.scalars(select(Page).order_by(Page.created_at)))
    return {
        "posts": {state: counts.get(state, 0) for state in lifecycle.STATES},
        "next_due": iso(aware(next_due)),
        "pages": [
            {
                "id": p.id,
                "brand_id": p.brand_id,
                "name": p.name,
                "platform": p.platform,
                "status": p.connection,
                "last_hour": usage[(p.id, "1h")],
                "per_hour": settings.guardrails.for_platform(p.platform).per_hour,
                "last_24h": usage[(p.id, "24h")],
                "per_24h": settings.guardrails.for_platform(p.platform).per_24h,
            }
            for p in pages
        ],
    }
