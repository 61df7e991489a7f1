"""Shared reads of the ``/api/v1`` routers: the postd App of a request, read-only sessions,
opaque cursors, reach-checked lookups (brand, page, post), and the wire dicts of brands and pages.

Reach: a token sees the brands in ``Principal.brand_ids`` and nothing else. A page or post of a
brand it cannot reach is answered exactly like one that does not exist (404 ``NOT_FOUND``), so ids
of other users' resources never leak. A brand named directly (``/brands/{id}``, ``?brand_id=``)
that belongs to the token's user but lies outside the token's brand restriction is
``403 BRAND_NOT_AUTHORIZED``; any other brand outside the reach is 404.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import json
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import Request
from sqlalchemy import and_, bindparam, case, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.sql.elements import UnaryExpression
from sqlalchemy.sql.operators import custom_op

from daemon import config as config_mod
from daemon import guardrails, lifecycle
from daemon.api.deps import Principal
from daemon.api.errors import ApiError
from daemon.errors import InputError
from daemon.store import db
from daemon.store.hot import Hot, detached
from daemon.store.models import Brand, Collaborator, Page, Post
from daemon.store.sync_sqlite import Reads
from daemon.timefmt import iso, parse_instant

if TYPE_CHECKING:
    from daemon.app import App

# The document's short platform codes; platforms without one use their name in capitals.
SHORT_CODES = {
    "facebook": "FB",
    "instagram": "IG",
    "linkedin": "LN",
    "tiktok": "TT",
    "twitter": "TW",
    "youtube": "YT",
}
_BY_CODE = {code.lower(): name for name, code in SHORT_CODES.items()}

T = TypeVar("T")
# Where the reads below run: a session, or a bare connection where no ORM object is needed.
Reader = AsyncSession | AsyncConnection | Reads


def postd(request: Request) -> App:
    """The postd App this API serves (``api.state.postd``)."""
    app: App = request.app.state.postd
    return app


def short_code(platform: str) -> str:
    return SHORT_CODES.get(platform, platform.upper())


def platform_filter(value: str) -> str:
    """A ``?platform=`` value (name or short code, any case) as the stored platform name."""
    name = value.strip().lower()
    name = _BY_CODE.get(name, "twitter" if name == "x" else name)
    if name not in config_mod.PLATFORMS:
        raise ApiError(
            "INVALID_PLATFORM",
            f"unknown platform {value!r}; one of {', '.join(config_mod.PLATFORMS)}",
            field="platform",
        )
    return name


@contextlib.asynccontextmanager
async def read_session(app: App) -> AsyncIterator[AsyncSession]:
    """A session for reads only: no transaction around the statements, so on SQLite a read never
    takes the write lock (every transaction there is BEGIN IMMEDIATE)."""
    makers = getattr(app, "read_sessions", None) or app.sessions
    session = makers()
    try:
        await session.connection(execution_options=db.single_read_options(app.engine))
        yield session
    finally:
        await db.closing(db.read_engine(app), session)


def unindexed(column: Any) -> Any:
    """``+column``: the same value, but SQLite's planner will not use the column's indexes for a
    condition on it (https://sqlite.org/optoverview.html#uplus)."""
    return UnaryExpression(column, operator=custom_op("+"), type_=column.type)


# -- cursors ------------------------------------------------------------------------------------


def encode_cursor(*parts: str) -> str:
    raw = json.dumps(list(parts), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None, size: int) -> list[str] | None:
    """The parts of an opaque cursor made by :func:`encode_cursor`; INVALID_REQUEST if forged."""
    if cursor is None or cursor == "":
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        parts = json.loads(raw)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        parts = None
    if not (
        isinstance(parts, list) and len(parts) == size and all(isinstance(p, str) for p in parts)
    ):
        raise ApiError("INVALID_REQUEST", "cursor is not one this API returned", field="cursor")
    return parts


def cursor_instant(text: str) -> datetime:
    try:
        return parse_instant(text, "cursor")
    except InputError:
        raise ApiError(
            "INVALID_REQUEST", "cursor is not one this API returned", field="cursor"
        ) from None


# -- reach --------------------------------------------------------------------------------------


async def _users_brand(session: AsyncSession, user_id: str, brand_id: str) -> bool:
    owned = await session.scalar(
        select(func.count()).where(Brand.id == brand_id, Brand.owner_id == user_id)
    )
    if owned:
        return True
    shared = await session.scalar(
        select(func.count()).where(
            Collaborator.brand_id == brand_id,
            Collaborator.user_id == user_id,
            Collaborator.removed_at.is_(None),
        )
    )
    return bool(shared)


async def check_brand_reach(session: AsyncSession, principal: Principal, brand_id: str) -> None:
    """403 BRAND_NOT_AUTHORIZED for the user's own brand outside the token's restriction; 404
    for any other brand the token cannot reach (unknown or someone else's)."""
    if brand_id in principal.brand_ids:
        return
    if await _users_brand(session, principal.user_id, brand_id):
        principal.check_brand(brand_id)
    raise ApiError("NOT_FOUND", f"No brand {brand_id!r}")


async def reachable_brand(session: AsyncSession, principal: Principal, brand_id: str) -> Brand:
    await check_brand_reach(session, principal, brand_id)
    brand = await session.get(Brand, brand_id)
    if brand is None:
        raise ApiError("NOT_FOUND", f"No brand {brand_id!r}")
    return brand


_PAGE = Hot(select(*Page.__table__.c).where(Page.id == bindparam("page_id")))


async def reachable_page(session: Reader, principal: Principal, page_id: str) -> Page:
    """The page, read as a row and returned detached (the ORM's identity-map lookup cost a tenth
    of a schedule); change it in a session of your own."""
    row = await _PAGE.first(session, {"page_id": page_id})
    if row is None or row.brand_id not in principal.brand_ids:
        raise ApiError("NOT_FOUND", f"No page {page_id!r}", field="page_id")
    return detached(Page, row._asdict())


async def reachable_post(
    session: AsyncSession, principal: Principal, post_id: str, *, lock: bool = False
) -> Post:
    """The post, row-locked (PostgreSQL) when it is about to be changed, so a claim cannot slip
    between the read and the write."""
    stmt: Any = select(Post).where(Post.id == post_id)
    if lock and session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    post: Post | None = (await session.scalars(stmt)).one_or_none()
    if post is None or post.brand_id not in principal.brand_ids:
        raise ApiError("NOT_FOUND", f"No post {post_id!r}")
    return post


# -- brands and pages on the wire ---------------------------------------------------------------


def page_item(page: Page, brand_name: str) -> dict[str, Any]:
    return {
        "id": page.id,
        "brand_id": page.brand_id,
        "brand_name": brand_name,
        "platform": page.platform,
        "name": page.name,
        "username": page.username,
        "followers": page.followers or 0,
        "expired": not page.connected,  # never connected, or refused by the platform
    }


def page_detail(page: Page, brand_name: str) -> dict[str, Any]:
    return {
        **page_item(page, brand_name),
        "profile_picture": page.profile_picture,
        "created_at": iso(page.created_at),
    }


def brand_item(brand: Brand, pages_count: int) -> dict[str, Any]:
    return {
        "id": brand.id,
        "name": brand.name,
        "logo": brand.logo,
        "timezone": brand.timezone or "UTC",
        "created_at": iso(brand.created_at),
        "pages_count": pages_count,
    }


async def list_pages(
    session: AsyncSession,
    brand_ids: frozenset[str] | set[str],
    *,
    platform: str | None = None,
    after: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Pages of ``brand_ids`` in id (creation) order, as /pages items."""
    stmt: Any = (
        select(Page, Brand.name)
        .join(Brand, Brand.id == Page.brand_id)
        .where(Page.brand_id.in_(sorted(brand_ids)))
        .order_by(Page.id)
    )
    if platform is not None:
        stmt = stmt.where(Page.platform == platform)
    if after is not None:
        stmt = stmt.where(Page.id > after)
    if limit is not None:
        stmt = stmt.limit(limit)
    return [page_item(page, name) for page, name in (await session.execute(stmt)).all()]


def split_page(rows: list[T], limit: int) -> tuple[list[T], bool]:
    """From ``limit + 1`` fetched rows: the first ``limit``, and whether there were more."""
    return rows[:limit], len(rows) > limit


def paged(key: str, rows: list[dict[str, Any]], limit: int, *sort: str) -> dict[str, Any]:
    """A list response from ``limit + 1`` fetched rows: the first ``limit`` under ``key``, and the
    opaque cursor of the last one (its ``sort`` fields, then its id) when there are more."""
    rows, has_more = split_page(rows, limit)
    cursor = None
    if has_more:
        last = rows[-1]
        cursor = encode_cursor(*(str(last[field]) for field in (*sort, "id")))
    return {key: rows, "next_cursor": cursor, "has_more": has_more}


# -- guardrail histories ------------------------------------------------------------------------


def _instant(name: str) -> Any:
    return bindparam(name, type_=Post.due_at.type)


def _counting(scheduled: bool, exclude: bool) -> Any:
    """The posts of :func:`histories`: of brand ``h_brand``, counted in ``(h_lo, h_hi]``
    (published, in flight, in doubt) or, with ``scheduled``, still scheduled in it."""
    lo, hi = _instant("h_lo"), _instant("h_hi")
    counted = and_(Post.counted_at.is_not(None), Post.counted_at > lo, Post.counted_at <= hi)
    pending = and_(
        Post.state == lifecycle.SCHEDULED,
        Post.counted_at.is_(None),
        Post.due_at > lo,
        Post.due_at <= hi,
    )
    where = and_(
        Post.brand_id == bindparam("h_brand"), or_(counted, pending) if scheduled else counted
    )
    return and_(where, Post.id != bindparam("h_exclude")) if exclude else where


@functools.cache
def _histories_statement(scheduled: bool, exclude: bool) -> Any:
    """The query of :func:`histories`, built once per shape (building it cost more than running
    it)."""
    return select(Post.page_id, Post.counted_at, Post.due_at).where(_counting(scheduled, exclude))


@functools.cache
def _nearby_statement(exclude: bool) -> Hot:
    """The query of :func:`nearby`: four counts in one pass over the brand's day either side."""
    instant = func.coalesce(Post.counted_at, Post.due_at)
    on_page = Post.page_id == bindparam("n_page")

    def within(lo: str, hi: str) -> Any:
        hit = and_(on_page, instant > _instant(lo), instant < _instant(hi))
        return func.coalesce(func.sum(case((hit, 1), else_=0)), 0)

    return Hot(
        select(
            within("n_hour_lo", "n_hour_hi"),
            func.coalesce(func.sum(case((on_page, 1), else_=0)), 0),
            within("n_gap_lo", "n_gap_hi"),
            func.count(),
        ).where(_counting(True, exclude))
    )


async def nearby(
    session: Reader, page: Page, at: datetime, min_gap: timedelta, exclude: str | None
) -> guardrails.Nearby:
    """The publishes close to ``at`` (every post :func:`histories` counts), counted by the
    database: for :func:`guardrails.surely_fits`, which spares reading the rows."""
    params = {
        "h_brand": page.brand_id,
        "h_lo": at - guardrails.DAY,
        "h_hi": at + guardrails.DAY,
        "h_exclude": exclude,
        "n_page": page.id,
        "n_hour_lo": at - guardrails.HOUR,
        "n_hour_hi": at + guardrails.HOUR,
        "n_gap_lo": at - min_gap,
        "n_gap_hi": at + min_gap,
    }
    row = await _nearby_statement(exclude is not None).one(session, params)
    return guardrails.Nearby(*(int(n) for n in row))


async def histories(
    session: Reader,
    page: Page,
    *,
    lo: datetime,
    hi: datetime,
    exclude: str | None = None,
    scheduled: bool = True,
) -> tuple[list[datetime], list[datetime]]:
    """Publish instants in ``(lo, hi]`` on ``page`` and on its whole brand, in one query: every
    post that counts (published, in flight, in doubt: ``counted_at``, as the dispatcher counts
    them) and, with ``scheduled``, every post still scheduled, at its ``due_at``."""
    params = {"h_brand": page.brand_id, "h_lo": lo, "h_hi": hi, "h_exclude": exclude}
    stmt = _histories_statement(scheduled, exclude is not None)
    on_page: list[datetime] = []
    on_brand: list[datetime] = []
    for page_id, counted_at, due_at in (await session.execute(stmt, params)).all():
        instant = counted_at if counted_at is not None else due_at
        on_brand.append(instant)
        if page_id == page.id:
            on_page.append(instant)
    return on_page, on_brand


def tier_limits(settings: config_mod.Settings, tier: str) -> config_mod.TierLimits:
    """A tier's limits; an unknown tier name gets the free tier's (never more than paid for)."""
    if tier in config_mod.TierSettings.model_fields:
        return settings.tiers.get(tier)
    return settings.tiers.free
