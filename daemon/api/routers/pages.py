"""``/api/v1/pages``: every page the token reaches, flattened; one page."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from daemon.api import queries, schemas
from daemon.api.routers import ReadPages, error_responses
from daemon.api.routers.brands import CURSOR, LIMIT
from daemon.store.models import Brand

router = APIRouter(tags=["pages"])


@router.get(
    "/pages",
    response_model=schemas.PageList,
    responses=error_responses(),
    summary="Pages across every brand this token reaches",
)
async def list_pages(
    request: Request,
    principal: ReadPages,
    platform: str | None = Query(
        default=None,
        description="facebook, instagram, linkedin, twitter, tiktok, youtube, mastodon, "
        "bluesky, sandbox (or FB, IG, LN, TW, TT, YT)",
    ),
    brand_id: str | None = Query(default=None, description="Only this brand's pages"),
    cursor: str | None = CURSOR,
    limit: int = LIMIT,
) -> dict[str, Any]:
    after = queries.decode_cursor(cursor, 1)
    name = queries.platform_filter(platform) if platform else None
    async with queries.read_session(queries.postd(request)) as session:
        brands: frozenset[str] | set[str] = principal.brand_ids
        if brand_id is not None:
            await queries.check_brand_reach(session, principal, brand_id)
            brands = {brand_id}
        pages = await queries.list_pages(
            session, brands, platform=name, after=after[0] if after else None, limit=limit + 1
        )
    return queries.paged("pages", pages, limit)


@router.get(
    "/pages/{page_id}",
    response_model=schemas.PageOne,
    responses=error_responses(),
    summary="One page",
)
async def get_page(request: Request, page_id: str, principal: ReadPages) -> dict[str, Any]:
    async with queries.read_session(queries.postd(request)) as session:
        page = await queries.reachable_page(session, principal, page_id)
        brand = await session.get(Brand, page.brand_id)
    return {"page": queries.page_detail(page, brand.name if brand is not None else "")}
