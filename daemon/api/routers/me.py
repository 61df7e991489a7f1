"""``GET /api/v1/me``: who the token is (any valid token, whatever its scopes)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from daemon.api import schemas
from daemon.api.deps import Principal
from daemon.api.routers import AnyToken, error_responses
from daemon.timefmt import iso

router = APIRouter(tags=["account"])


def key_block(principal: Principal) -> dict[str, Any]:
    return {
        "id": principal.token_id,
        "name": principal.token_name,
        "prefix": principal.token_prefix,
        "scopes": list(principal.scopes),
        "expires_at": iso(principal.expires_at),
    }


@router.get("/me", response_model=schemas.Me, responses=error_responses(), summary="Who am I")
async def me(principal: AnyToken) -> dict[str, Any]:
    return {
        "authenticated_as": {
            "user_id": principal.user_id,
            "email": principal.email,
            "firstname": principal.firstname,
            "lastname": principal.lastname,
        },
        "api_key": key_block(principal),
    }
