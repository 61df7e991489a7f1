"""The ``/api/v1`` routers, one module per resource, and the error responses they declare.

Every route declares the catalog's error body for each status it can answer with, so the OpenAPI
document matches what the API really sends (FastAPI's default 422 is never sent: validation
failures are 400 ``MISSING_FIELD`` / ``INVALID_REQUEST``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends

from daemon.api.deps import Principal, require
from daemon.api.schemas import ErrorBody

_DESCRIPTIONS = {
    400: "Bad request: MISSING_FIELD, INVALID_DATE, INVALID_REQUEST, INVALID_IDEMPOTENCY_KEY, "
    "UNSAFE_URL, INVALID_EVENTS...",
    401: "No token, or a malformed, unknown, revoked or expired one",
    402: "SANDBOX_EXHAUSTED: the sandbox token used up its lifetime requests",
    403: "MISSING_SCOPE, IP_NOT_ALLOWED, BRAND_NOT_AUTHORIZED, COLLABORATOR_INSUFFICIENT",
    404: "NOT_FOUND: no such resource, or not reachable with this token",
    409: "POST_PUBLISHING, PAGE_NOT_CONNECTED, WEBHOOK_DISABLED, DELIVERY_IN_PROGRESS, or an "
    "Idempotency-Key conflict (IDEMPOTENCY_KEY_MISMATCH / IN_USE)",
    429: "RATE_LIMITED, DAILY_LIMIT_EXCEEDED, MONTHLY_LIMIT_EXCEEDED, PAGE/BRAND_PUBLISH_GUARDRAIL",
    500: "SERVER_ERROR",
    502: "PUBLISH_FAILED (platform_code says why) or PUBLISH_IN_DOUBT",
}
# What any authenticated route can answer, whatever it does: the gate's refusals and limits.
AUTHENTICATED = (400, 401, 402, 403, 404, 429, 500)
PUBLIC = (400, 404, 429, 500)


def error_responses(*statuses: int, public: bool = False) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: the catalog body for the common statuses plus ``statuses``."""
    base = PUBLIC if public else AUTHENTICATED
    return {
        status: {"model": ErrorBody, "description": _DESCRIPTIONS[status]}
        for status in sorted({*base, *statuses})
    }


# The caller, after the scope check of the document's scope table.
AnyToken = Annotated[Principal, Depends(require(None))]
ReadAccount = Annotated[Principal, Depends(require("read:account"))]
ReadBrands = Annotated[Principal, Depends(require("read:brands"))]
ReadPages = Annotated[Principal, Depends(require("read:pages"))]
ReadPosts = Annotated[Principal, Depends(require("read:posts"))]
WritePosts = Annotated[Principal, Depends(require("write:posts"))]
