"""Wire shapes of ``/api/v1``: request bodies and the response models the OpenAPI document shows.

Response models are the truth of what a route returns: FastAPI drops any key a route returns that
is not declared here, so a field the document shows must be declared to reach the client. Fields
that only appear in some states (a published post's ``remote_id``...) are optional with no default
in the output and rendered with ``response_model_exclude_unset``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_TEXT = 5000
MAX_BULK = 50


class _Out(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _In(BaseModel):
    # No-code tools send whatever their mapping holds: unknown keys are ignored, not refused.
    model_config = ConfigDict(extra="ignore")


# -- errors -------------------------------------------------------------------------------------


class ErrorBody(BaseModel):
    """The catalog's error shape; codes may add fields (``required_scope``, ``retry_after_seconds``
    ...)."""

    model_config = ConfigDict(extra="allow")

    error: str
    code: str
    message: str


# -- root, errors, me, account ------------------------------------------------------------------


class Docs(_Out):
    openapi: str
    errors: str


class Root(_Out):
    name: str
    api_version: str
    version: str
    docs: Docs


class CatalogEntry(_Out):
    code: str
    http_status: int
    category: str
    message: str
    fix: str
    source: str


class Catalog(_Out):
    errors: list[CatalogEntry]


class AuthenticatedAs(_Out):
    user_id: str
    email: str
    firstname: str | None
    lastname: str | None


class MeKey(_Out):
    id: str
    name: str
    prefix: str
    scopes: list[str]
    expires_at: str | None


class Me(_Out):
    authenticated_as: AuthenticatedAs
    api_key: MeKey


class User(_Out):
    id: str
    email: str
    firstname: str | None
    lastname: str | None


class Credits(_Out):
    remaining: int
    plan: str


class AccountKey(MeKey):
    brand_ids: list[str]
    last_used_at: str | None
    request_count: int


class Storage(_Out):
    used_bytes: int
    limit_bytes: int
    remaining_bytes: int
    max_file_bytes: int


class RateLimit(_Out):
    per_minute: int
    per_day: int


class Bucket(_Out):
    used: int
    limit: int | None
    remaining: int | None


class Monthly(_Out):
    year_month: str
    resets_at: str
    publishes: Bucket
    replies: Bucket
    reads: Bucket
    webhooks: Bucket
    writes: Bucket
    total_requests: int


class PlatformCaps(_Out):
    perHour: int
    per24h: int


class Guardrails(_Out):
    perPage: dict[str, PlatformCaps]
    minGapBetweenSchedulesMs: int
    perBrandPer24hSafetyNet: int


class Quota(_Out):
    storage: Storage
    rate_limit: RateLimit
    monthly: Monthly
    publish_guardrails: Guardrails


class Account(_Out):
    user: User
    credits: Credits
    tier: str
    api_key: AccountKey
    quota: Quota


# -- brands and pages ---------------------------------------------------------------------------


class PageItem(_Out):
    id: str
    brand_id: str
    brand_name: str
    platform: str
    name: str
    username: str | None
    followers: int
    expired: bool


class PageDetail(_Out):
    id: str
    brand_id: str
    brand_name: str
    platform: str
    name: str
    username: str | None
    followers: int
    profile_picture: str | None
    expired: bool
    created_at: str


class PageList(_Out):
    pages: list[PageItem]
    next_cursor: str | None
    has_more: bool


class PageOne(_Out):
    page: PageDetail


class BrandItem(_Out):
    id: str
    name: str
    logo: str | None
    timezone: str
    created_at: str
    pages_count: int


class BrandDetail(BrandItem):
    pages: list[PageItem]


class BrandList(_Out):
    brands: list[BrandItem]
    next_cursor: str | None
    has_more: bool


class BrandOne(_Out):
    brand: BrandDetail


# -- posts --------------------------------------------------------------------------------------


class Media(_Out):
    src: str | None
    type: str | None


class PostError(_Out):
    code: str | None
    message: str | None


class ScheduledPost(_Out):
    """The document's "scheduled post object"; outcome fields appear once known."""

    id: str
    page_id: str
    platform: str
    scheduled_at: str
    status: Literal["scheduled", "publishing", "published", "failed", "cancelled"]
    message: str | None
    media: list[Media]
    first_comment: str | None
    created_at: str
    remote_id: str | None = None
    permalink: str | None = None
    published_at: str | None = None
    first_comment_status: str | None = None
    error: PostError | None = None


class Attempt(_Out):
    number: int
    started_at: str | None
    finished_at: str | None
    outcome: str
    error_class: str | None
    error_code: str | None
    http_status: int | None
    excerpt: str | None
    duration_ms: int | None
    instance: str | None


class ScheduledPostDetail(ScheduledPost):
    """One post with why it is where it is: deferral, last error, every attempt."""

    brand_id: str | None = None
    not_before: str | None = None
    defer_reason: str | None = None
    attempts_count: int | None = None
    last_error: PostError | None = None
    attempts: list[Attempt] | None = None


class ScheduledOne(_Out):
    scheduled_post: ScheduledPost


class ScheduledOneDetail(_Out):
    scheduled_post: ScheduledPostDetail


class ScheduledList(_Out):
    scheduled_posts: list[ScheduledPost]
    next_cursor: str | None
    has_more: bool


class Metrics(_Out):
    """Engagement is not collected yet: every count is ``null`` (unknown), never a made-up 0."""

    likes: int | None
    comments: int | None
    shares: int | None


class PublishedPost(_Out):
    id: str
    page_id: str
    platform: str
    remote_id: str | None
    permalink: str | None
    published_at: str | None
    message: str | None
    metrics: Metrics


class PublishedList(_Out):
    published_posts: list[PublishedPost]
    next_cursor: str | None
    has_more: bool


class Published(_Out):
    post_id: str = Field(description="The platform's id of the post (as the document shows).")
    id: str = Field(description="postd's id of the post (GET /posts/scheduled/{id}).")
    platform: str = Field(description='Short platform code: "FB", "IG", "LN", "TT", "TW"...')
    published_at: str
    message: str | None
    permalink: str | None
    status: Literal["published"]


class Cancelled(_Out):
    success: bool
    id: str


class BulkItemResult(_Out):
    index: int
    status: int = Field(description="The HTTP status this item would have had on its own.")
    scheduled_post: ScheduledPost | None = None
    error: ErrorBody | None = None


class BulkResult(_Out):
    results: list[BulkItemResult]
    scheduled: int
    failed: int


# -- webhooks -----------------------------------------------------------------------------------

WEBHOOK_EVENTS = (
    "post.published",
    "post.failed",
    "comment.received",
    "comment.replied",
    "account.quota.warning",
)
# Checked by the route (INVALID_EVENTS names the unknown ones); the document lists the names.
EventName = Annotated[str, Field(json_schema_extra={"enum": list(WEBHOOK_EVENTS)})]


class Webhook(_Out):
    """A subscription. ``secret`` appears only in the answers of create and rotate-secret."""

    id: str
    url: str
    events: list[str]
    enabled: bool
    status: Literal["enabled", "disabled"]
    disabled_reason: str | None = Field(
        description='Why it is disabled: "manual", "consecutive_failures" or "gone" (410).'
    )
    disabled_at: str | None
    consecutive_failures: int = Field(
        description="Deliveries in a row that failed after their last retry (2xx resets it)."
    )
    brand_ids: list[str] = Field(description="Brands it is restricted to ([]: all the user's).")
    previous_secret_expires_at: str | None = Field(
        description="Until then the previous secret also signs every delivery (rotation)."
    )
    created_at: str
    updated_at: str
    secret: str | None = Field(
        default=None, description="whsec_...: shown once, on create and rotate-secret."
    )


class WebhookOne(_Out):
    webhook: Webhook


class WebhookList(_Out):
    webhooks: list[Webhook]
    next_cursor: str | None
    has_more: bool


class WebhookDeleted(_Out):
    success: bool
    id: str


class DeliveryAttempt(_Out):
    attempt: int
    started_at: str | None
    status_code: int | None
    duration_ms: int | None
    error: str | None


class Delivery(_Out):
    id: str = Field(description="The webhook-id header: the same on every attempt.")
    webhook_id: str
    event: str
    event_id: int | None
    status: Literal["pending", "delivering", "succeeded", "failed"]
    attempts: int
    last_status_code: int | None
    last_error: str | None
    last_attempt_at: str | None
    next_attempt_at: str | None = Field(description="The next retry, while pending.")
    created_at: str
    attempt_log: list[DeliveryAttempt]


class DeliveryOne(_Out):
    delivery: Delivery


class DeliveryList(_Out):
    deliveries: list[Delivery]
    next_cursor: str | None
    has_more: bool


# -- request bodies -----------------------------------------------------------------------------

_MESSAGE = Field(
    default=None,
    description="Post text, at most 5,000 characters. Either message or one media item.",
    json_schema_extra={"maxLength": MAX_TEXT},
)


class PublishBody(_In):
    page_id: str = Field(description="Target page id from GET /pages.")
    message: str | None = _MESSAGE
    media_ids: list[str] | None = Field(default=None, description="Ids of uploaded media.")
    media_urls: list[str] | None = Field(
        default=None, description="Public http(s) URLs; fetched only when publishing."
    )
    link: str | None = Field(
        default=None,
        description="A URL (official SDK). Kept as the post's link and appended to the message "
        "unless the message already contains it.",
    )
    first_comment: str | None = Field(
        default=None, json_schema_extra={"maxLength": MAX_TEXT}, description="Posted right after."
    )
    tiktok_settings: dict[str, Any] | None = Field(
        default=None, description="TikTok options (privacy, duet/stitch...), passed through."
    )


class ScheduleBody(PublishBody):
    scheduled_at: str | None = Field(
        default=None,
        description="ISO 8601 instant with a zone, e.g. 2026-05-12T14:30:00Z. Required "
        "(or publish_at).",
    )
    publish_at: str | None = Field(default=None, description="Alias of scheduled_at.")


class PatchBody(_In):
    message: str | None = _MESSAGE
    scheduled_at: str | None = Field(default=None, description="New ISO 8601 instant.")
    publish_at: str | None = Field(default=None, description="Alias of scheduled_at.")
    first_comment: str | None = Field(default=None, json_schema_extra={"maxLength": MAX_TEXT})


class BulkBody(_In):
    posts: list[dict[str, Any]] = Field(
        min_length=1,
        max_length=MAX_BULK,
        description="Up to 50 bodies of POST /posts/schedule; each is checked on its own and "
        "answered in `results` at the same index.",
    )


class WebhookBody(_In):
    url: str = Field(
        max_length=2048, description="https URL of a public host (the SSRF policy applies)."
    )
    events: list[EventName] = Field(
        description="Events to receive.", json_schema_extra={"minItems": 1}
    )


class WebhookPatchBody(_In):
    url: str | None = Field(default=None, max_length=2048)
    events: list[EventName] | None = Field(default=None, description="Events to receive.")
    enabled: bool | None = Field(
        default=None, description="false disables it; true enables it again (failure count reset)."
    )
