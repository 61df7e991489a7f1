"""``GET /api/v1/errors``: the machine-readable error catalog (no token)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from daemon.api import errors, schemas
from daemon.api.routers import error_responses

router = APIRouter(tags=["meta"])


@router.get(
    "/errors",
    response_model=schemas.Catalog,
    responses=error_responses(public=True),
    summary="Error catalog (no token)",
)
async def catalog() -> dict[str, Any]:
    return errors.catalog_json()
