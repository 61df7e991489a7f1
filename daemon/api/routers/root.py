"""``GET /api/v1/``: the root probe (no token): what this is and where its documents are."""

from __future__ import annotations

from fastapi import APIRouter, Request

from daemon import __version__
from daemon.api import schemas
from daemon.api.routers import error_responses

router = APIRouter(tags=["meta"])


@router.get(
    "/",
    response_model=schemas.Root,
    responses=error_responses(public=True),
    summary="Root probe (no token)",
)
async def root(request: Request) -> dict[str, object]:
    base = request.scope.get("root_path", "").rstrip("/")
    return {
        "name": "postd",
        "api_version": "v1",
        "version": __version__,
        "docs": {"openapi": f"{base}/openapi.json", "errors": f"{base}/errors"},
    }
