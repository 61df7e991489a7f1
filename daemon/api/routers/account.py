"""``GET /api/v1/account``: the user, the token, and live quota usage (``read:account``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request

from daemon import config as config_mod
from daemon.api import limits, queries, schemas
from daemon.api.deps import Principal
from daemon.api.routers import ReadAccount, error_responses
from daemon.api.routers.me import key_block
from daemon.timefmt import iso

if TYPE_CHECKING:
    pass

router = APIRouter(tags=["account"])

# The document's guardrail table: short code -> the platform whose config row it shows.
GUARDRAIL_ROWS = {
    "FB": "facebook",
    "IG": "instagram",
    "LN": "linkedin",
    "TT": "tiktok",
    "TW": "twitter",
}


def guardrails_block(settings: config_mod.Settings) -> dict[str, Any]:
    conf = settings.guardrails
    return {
        "perPage": {
            code: {
                "perHour": conf.for_platform(name).per_hour,
                "per24h": conf.for_platform(name).per_24h,
            }
            for code, name in GUARDRAIL_ROWS.items()
        },
        "minGapBetweenSchedulesMs": conf.min_gap_seconds * 1000,
        "perBrandPer24hSafetyNet": conf.brand_per_24h,
    }


def rate_limit(settings: config_mod.Settings, principal: Principal) -> dict[str, int]:
    if principal.sandbox:
        sandbox = settings.sandbox_tokens
        return {"per_minute": sandbox.per_minute, "per_day": sandbox.per_day}
    tier = queries.tier_limits(settings, principal.tier)
    return {"per_minute": tier.per_minute, "per_day": tier.per_day}


@router.get(
    "/account",
    response_model=schemas.Account,
    responses=error_responses(),
    summary="Account, token and quota",
)
async def account(request: Request, principal: ReadAccount) -> dict[str, Any]:
    app = queries.postd(request)
    now = app.clock.now()
    tier = queries.tier_limits(app.settings, principal.tier)
    usage = await limits.usage(app, principal.user_id, principal.tier, now)
    return {
        "user": {
            "id": principal.user_id,
            "email": principal.email,
            "firstname": principal.firstname,
            "lastname": principal.lastname,
        },
        "credits": {"remaining": usage["publishes"]["remaining"], "plan": principal.tier},
        "tier": principal.tier,
        "api_key": {
            **key_block(principal),
            "brand_ids": list(principal.restricted_brand_ids),
            "last_used_at": iso(principal.last_used_at),
            "request_count": principal.request_count,
        },
        "quota": {
            # Media uploads do not exist yet: nothing is stored, so nothing is used.
            "storage": {
                "used_bytes": 0,
                "limit_bytes": tier.storage_bytes,
                "remaining_bytes": tier.storage_bytes,
                "max_file_bytes": tier.max_file_bytes,
            },
            "rate_limit": rate_limit(app.settings, principal),
            "monthly": usage,
            "publish_guardrails": guardrails_block(app.settings),
        },
    }
