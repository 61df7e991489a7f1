"""The API's error catalog: one table that the code raises from and ``GET /api/v1/errors`` serves.

Every error body is ``{"error": <sentence>, "code": <STABLE_CODE>, "message": <same sentence>,
...extra}`` (the official SDK reads ``message``; the document shows ``error``). The HTTP status
of each code is the document's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from daemon.errors import InputError


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    code: str
    status: int
    category: str
    message: str
    fix: str
    source: str = "document"  # "document" (the public API document) or "postd"


_CATALOG: tuple[ErrorSpec, ...] = (
    # -- request -----------------------------------------------------------------------------
    ErrorSpec(
        "MISSING_FIELD",
        400,
        "request",
        "Required field missing from request body",
        "Send every required field; the error names the missing one.",
    ),
    ErrorSpec(
        "INVALID_DATE",
        400,
        "request",
        "Malformed timestamp",
        "Use ISO 8601 with a zone, e.g. 2026-05-12T14:30:00Z.",
    ),
    ErrorSpec(
        "INVALID_REQUEST",
        400,
        "request",
        "Malformed JSON or a field of the wrong type",
        "Fix the fields listed in `fields`.",
        "postd",
    ),
    ErrorSpec(
        "SCHEDULE_TOO_SOON",
        400,
        "request",
        "scheduled_at is closer than the minimum lead time (10 minutes by default)",
        "Schedule further ahead, or use POST /posts/publish to publish now.",
        "postd",
    ),
    ErrorSpec(
        "SCHEDULE_TOO_FAR",
        400,
        "request",
        "scheduled_at is beyond the scheduling horizon (75 days by default)",
        "Schedule closer to now.",
        "postd",
    ),
    ErrorSpec(
        "MESSAGE_TOO_LONG",
        400,
        "request",
        "message exceeds 5,000 characters",
        "Shorten the message.",
        "postd",
    ),
    ErrorSpec(
        "INVALID_POST",
        400,
        "request",
        "The platform would refuse this post",
        "Fix the problems listed in `problems` (length, media, platform rules).",
        "postd",
    ),
    ErrorSpec(
        "INVALID_PLATFORM",
        400,
        "request",
        "Unknown platform",
        "Use one of facebook, instagram, linkedin, twitter, tiktok, youtube, mastodon, "
        "bluesky, sandbox.",
        "postd",
    ),
    ErrorSpec(
        "INVALID_MEDIA_URL",
        400,
        "media",
        "media_urls contains localhost, private IP, or non-http(s) URL",
        "Pass public https URLs only.",
    ),
    ErrorSpec(
        "INVALID_FILE_CONTENT",
        400,
        "media",
        "Uploaded file's magic bytes don't match declared MIME",
        "Upload a genuine image/video of the declared type.",
    ),
    ErrorSpec(
        "UPLOAD_ERROR",
        400,
        "media",
        "Malformed multipart, unsupported extension, etc.",
        "Send multipart/form-data with one allowed file in the field `file`.",
    ),
    ErrorSpec(
        "NO_FILE",
        400,
        "media",
        "Field file missing",
        "Send the file in the multipart field named `file`.",
    ),
    ErrorSpec(
        "UNSAFE_URL",
        400,
        "webhooks",
        "The webhook URL is refused by the outbound URL policy (`reason` says why)",
        "Use an https URL of a public host: no localhost, private, link-local or reserved "
        "address, no numeric host spellings, no credentials in the URL.",
        "postd",
    ),
    ErrorSpec(
        "INVALID_EVENTS",
        400,
        "webhooks",
        "events is empty or names an unknown event",
        "Use post.published, post.failed, comment.received, comment.replied and/or "
        "account.quota.warning (listed in `allowed`).",
        "postd",
    ),
    ErrorSpec(
        "INVALID_IDEMPOTENCY_KEY",
        400,
        "idempotency",
        "Idempotency-Key is missing or > 120 chars",
        "Use 1-120 characters; a UUIDv4.",
    ),
    # -- authentication ----------------------------------------------------------------------
    ErrorSpec(
        "MISSING_TOKEN",
        401,
        "auth",
        "No token in request",
        "Send Authorization: Bearer <token> or X-API-Key.",
    ),
    ErrorSpec(
        "INVALID_TOKEN",
        401,
        "auth",
        "Token is malformed or not found",
        "Check the token; create a new one if it was lost.",
    ),
    ErrorSpec(
        "TOKEN_REVOKED",
        401,
        "auth",
        "Token was revoked",
        "Create a new token (`postd token create`).",
    ),
    ErrorSpec(
        "TOKEN_EXPIRED",
        401,
        "auth",
        "Token past its expiry date",
        "Create or rotate a token with a later expiry.",
    ),
    # -- authorization -----------------------------------------------------------------------
    ErrorSpec(
        "MISSING_SCOPE",
        403,
        "auth",
        "Token lacks required scope",
        "Create a token with the scope named in `required_scope`. Scopes: read:account, "
        "read:brands, read:pages, read:posts, write:posts, read:comments, write:comments, "
        "read:media, write:media, read:webhooks (list webhooks and their deliveries), "
        "write:webhooks (create, change, delete, rotate, test, redeliver); * grants all.",
    ),
    ErrorSpec(
        "IP_NOT_ALLOWED",
        403,
        "auth",
        "Request IP not in token's allowlist",
        "Call from an allowed address or widen the token's allowlist.",
    ),
    ErrorSpec(
        "BRAND_NOT_AUTHORIZED",
        403,
        "auth",
        "Token can't reach the requested brand",
        "Use a token restricted to that brand, or an unrestricted one.",
    ),
    ErrorSpec(
        "COLLABORATOR_INSUFFICIENT",
        403,
        "auth",
        "The issuing collaborator no longer has full access",
        "Restore the collaborator's full access, or have the owner issue a token.",
    ),
    ErrorSpec(
        "TOO_MANY_KEYS",
        403,
        "auth",
        "The tier's active-key limit is reached",
        "Revoke an unused token first.",
        "postd",
    ),
    # -- resources ---------------------------------------------------------------------------
    ErrorSpec(
        "NOT_FOUND",
        404,
        "resource",
        "Resource does not exist or not yours",
        "Check the id; list the resource to find valid ids.",
    ),
    ErrorSpec(
        "MEDIA_IN_USE",
        409,
        "media",
        "Media is attached to a pending post",
        "Cancel the post first.",
    ),
    ErrorSpec(
        "POST_PUBLISHING",
        409,
        "resource",
        "The post is being published right now",
        "Wait for it to finish; it can no longer be cancelled or edited.",
        "postd",
    ),
    ErrorSpec(
        "WEBHOOK_DISABLED",
        409,
        "webhooks",
        "The webhook is disabled (by hand, after 20 failed deliveries, or after a 410)",
        "Fix the receiver, then PATCH /webhooks/{id} with enabled=true.",
        "postd",
    ),
    ErrorSpec(
        "DELIVERY_IN_PROGRESS",
        409,
        "webhooks",
        "The delivery is being attempted right now",
        "Wait for the attempt to finish (see GET /webhooks/{id}/deliveries), then redeliver.",
        "postd",
    ),
    ErrorSpec(
        "IDEMPOTENCY_KEY_MISMATCH",
        409,
        "idempotency",
        "Same Idempotency-Key used with a different request body",
        "Use a new key for a different request.",
    ),
    ErrorSpec(
        "IDEMPOTENCY_KEY_IN_USE",
        409,
        "idempotency",
        "A request with this Idempotency-Key is still being processed",
        "Retry shortly with the same key to get the stored response.",
        "postd",
    ),
    ErrorSpec(
        "FILE_TOO_LARGE",
        413,
        "media",
        "Upload exceeds per-file limit",
        "Upload a smaller file or move to a higher tier.",
    ),
    ErrorSpec(
        "QUOTA_EXCEEDED",
        413,
        "media",
        "Upload would exceed concurrent storage quota",
        "Delete media or wait for attached posts to publish.",
    ),
    # -- limits ------------------------------------------------------------------------------
    ErrorSpec(
        "SANDBOX_EXHAUSTED",
        402,
        "limits",
        "Sandbox token hit its 100-request lifetime cap — see response upgrade_url",
        "Use a live token.",
    ),
    ErrorSpec(
        "RATE_LIMITED",
        429,
        "limits",
        "Too many requests per minute — retry after Retry-After seconds",
        "Wait Retry-After seconds; spread requests out.",
    ),
    ErrorSpec(
        "DAILY_LIMIT_EXCEEDED",
        429,
        "limits",
        "Daily request budget consumed",
        "Wait for the next UTC day.",
    ),
    ErrorSpec(
        "MONTHLY_LIMIT_EXCEEDED",
        429,
        "limits",
        "The monthly bucket for this action is used up",
        "Wait for the 1st of next month (UTC) or move to a higher tier.",
        "postd",
    ),
    ErrorSpec(
        "PAGE_PUBLISH_GUARDRAIL",
        429,
        "guardrails",
        "This page's per-platform publish guardrail would be exceeded",
        "Retry after retry_after_seconds, or schedule the post later.",
    ),
    ErrorSpec(
        "BRAND_PUBLISH_GUARDRAIL",
        429,
        "guardrails",
        "The brand's 500 publishes / 24 h safety net would be exceeded",
        "Retry after retry_after_seconds.",
    ),
    # -- publishing --------------------------------------------------------------------------
    ErrorSpec(
        "PAGE_NOT_CONNECTED",
        409,
        "publishing",
        "The page cannot publish: it was never connected, or the platform refused its credentials",
        "Connect the page again (`postd page connect <platform> --page <id>`), then retry.",
        "postd",
    ),
    ErrorSpec(
        "PUBLISH_FAILED",
        502,
        "publishing",
        "The platform refused or failed the publish",
        "Read `platform_code` and the post's attempt log.",
        "postd",
    ),
    ErrorSpec(
        "PUBLISH_IN_DOUBT",
        502,
        "publishing",
        "The platform may or may not have published the post",
        "Check the page before retrying; postd will not publish it twice.",
        "postd",
    ),
    # -- server ------------------------------------------------------------------------------
    ErrorSpec(
        "SERVER_ERROR",
        500,
        "server",
        "Something went wrong on our side",
        "Retry with the same Idempotency-Key; report it if it persists.",
    ),
)

CATALOG: dict[str, ErrorSpec] = {spec.code: spec for spec in _CATALOG}


class ApiError(Exception):
    """Raise with a catalog code; the handler renders the document's error shape."""

    def __init__(
        self,
        code: str,
        message: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        spec = CATALOG[code]  # KeyError = a code missing from the catalog: a bug
        super().__init__(message or spec.message)
        self.spec = spec
        self.message = message or spec.message
        self.headers = headers or {}
        self.extra = extra

    @property
    def status(self) -> int:
        return self.spec.status

    def body(self) -> dict[str, Any]:
        return {
            "error": self.message,
            "code": self.spec.code,
            "message": self.message,
            **self.extra,
        }


def response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def from_input(exc: InputError) -> ApiError:
    """Translate a service-layer InputError (stable code) into the API's error."""
    code = exc.code if exc.code in CATALOG else "INVALID_REQUEST"
    return ApiError(code, exc.message, **exc.extra)


def _field_name(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def from_validation(exc: RequestValidationError) -> ApiError:
    """FastAPI's 422 never leaks: a missing field is MISSING_FIELD, the rest INVALID_REQUEST."""
    errors = exc.errors()
    missing = [e for e in errors if e.get("type") == "missing"]
    if missing and len(missing) == len(errors):
        names = [_field_name(tuple(e["loc"])) for e in missing]
        return ApiError(
            "MISSING_FIELD",
            f"Missing required field: {', '.join(names)}",
            field=names[0],
            fields=names,
        )
    fields = [{"field": _field_name(tuple(e["loc"])), "problem": str(e.get("msg"))} for e in errors]
    if any(e.get("type") == "json_invalid" for e in errors):
        return ApiError("INVALID_REQUEST", "The request body is not valid JSON", fields=fields)
    detail = "; ".join(f"{f['field']}: {f['problem']}" for f in fields)
    return ApiError("INVALID_REQUEST", f"Invalid request: {detail}", fields=fields)


def install(app: Any) -> None:
    """Register the handlers that turn every failure into the catalog's shape."""

    async def api_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return response(exc)

    async def input_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, InputError)
        return response(from_input(exc))

    async def validation(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return response(from_validation(exc))

    async def http_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            return response(ApiError("NOT_FOUND", "No such endpoint or resource"))
        if exc.status_code == 400:  # e.g. a body FastAPI cannot decode (not UTF-8)
            return response(
                ApiError("INVALID_REQUEST", f"Unreadable request: {exc.detail}", fields=[])
            )
        if exc.status_code == 405:
            err = ApiError("INVALID_REQUEST", "Method not allowed on this endpoint", fields=[])
            return JSONResponse(err.body(), status_code=405)
        return response(ApiError("SERVER_ERROR", str(exc.detail)))

    async def unexpected(_request: Request, _exc: Exception) -> JSONResponse:
        return response(ApiError("SERVER_ERROR"))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(InputError, input_error)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)


def catalog_json() -> dict[str, Any]:
    return {
        "errors": [
            {
                "code": s.code,
                "http_status": s.status,
                "category": s.category,
                "message": s.message,
                "fix": s.fix,
                "source": s.source,
            }
            for s in _CATALOG
        ]
    }
