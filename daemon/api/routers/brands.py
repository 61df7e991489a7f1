"""``/api/v1/brands``: the brands the token reaches, one brand with its pages, a brand's pages."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from daemon.api import queries, schemas
from daemon.api.routers import ReadBrands, ReadPages, error_responses
from daemon.store.models import Brand, Page

router = APIRouter(tags=["brands"])

CURSOR = Query(default=None, description="next_cursor of the previous page of results")
LIMIT = Query(default=100, ge=1, le=100, description="At most this many items (1-100)")


async def _pages_count(session: AsyncSession, brand_ids: list[str]) -> dict[str, int]:
    stmt = (
        select(Page.brand_id, func.count())
        .where(Page.brand_id.in_(brand_ids))
        .group_by(Page.brand_id)
    )
    return {brand_id: count for brand_id, count in (await session.execute(stmt)).all()}


@router.get(
    "/brands",
    response_model=schemas.BrandList,
    responses=error_responses(),
    summary="Brands this token reaches",
)
async def list_brands(
    request: Request,
    principal: ReadBrands,
    cursor: str | None = CURSOR,
    limit: int = LIMIT,
) -> dict[str, Any]:
    after = queries.decode_cursor(cursor, 1)
    stmt: Any = (
        select(Brand)
        .where(Brand.id.in_(sorted(principal.brand_ids)))
        .order_by(Brand.id)
        .limit(limit + 1)
    )
    if after is not None:
        stmt = stmt.where(Brand.id > after[0])
    async with queries.read_session(queries.postd(request)) as session:
        brands = list(await session.scalars(stmt))
        brands, has_more = queries.split_page(brands, limit)
        counts = await _pages_count(session, [b.id for b in brands])
    return {
        "brands": [queries.brand_item(b, counts.get(b.id, 0)) for b in brands],
        "next_cursor": queries.encode_cursor(brands[-1].id) if has_more else None,
        "has_more": has_more,
    }


@router.get(
    "/brands/{brand_id}",
    response_model=schemas.BrandOne,
    responses=error_responses(),
    summary="One brand with its pages",
)
async def get_brand(request: Request, brand_id: str, principal: ReadBrands) -> dict[str, Any]:
    async with queries.read_session(queries.postd(request)) as session:
        brand = await queries.reachable_brand(session, principal, brand_id)
        pages = await queries.list_pages(session, {brand.id})
    return {"brand": {**queries.brand_item(brand, len(pages)), "pages": pages}}


@router.get(
    "/brands/{brand_id}/pages",
    response_model=schemas.PageList,
    responses=error_responses(),
    summary="A brand's pages (same shape as /pages)",
)
async def brand_pages(
    request: Request,
    principal: ReadPages,
    brand_id: str,
    cursor: str | None = CURSOR,
    limit: int = LIMIT,
) -> dict[str, Any]:
    after = queries.decode_cursor(cursor, 1)
    async with queries.read_session(queries.postd(request)) as session:
        brand = await queries.reachable_brand(session, principal, brand_id)
        pages = await queries.list_pages(
            session, {brand.id}, after=after[0] if after else None, limit=limit + 1
        )
    return queries.paged("pages", pages, limit)
