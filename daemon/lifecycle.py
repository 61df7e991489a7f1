"""The post lifecycle (SPEC §3), pure: the states, the legal transitions, and the event payloads.

    scheduled ──claim──▶ publishing ──accepted──▶ published      (post.published)
        │  ▲                 │  ├──permanent / exhausted──▶ failed (post.failed)
        │  └──defer/backoff──┘  └──ambiguous / lease expired──▶ in doubt ─▶ find_published
        ├──overdue past catch-up──▶ failed MISSED              (post.failed)
        └──cancel──▶ cancelled

Every transition is written by the store in one transaction together with its outbox event.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from daemon.timefmt import iso

SCHEDULED = "scheduled"
PUBLISHING = "publishing"
PUBLISHED = "published"
FAILED = "failed"
CANCELLED = "cancelled"

STATES = (SCHEDULED, PUBLISHING, PUBLISHED, FAILED, CANCELLED)
TERMINAL = frozenset({PUBLISHED, FAILED, CANCELLED})

TRANSITIONS: frozenset[tuple[str, str]] = frozenset(
    {
        (SCHEDULED, PUBLISHING),
        (SCHEDULED, SCHEDULED),  # deferred by a guardrail
        (SCHEDULED, FAILED),  # missed
        (SCHEDULED, CANCELLED),
        (PUBLISHING, PUBLISHED),
        (PUBLISHING, SCHEDULED),  # transient error that provably did not take effect
        (PUBLISHING, FAILED),
        (PUBLISHING, PUBLISHING),  # lease taken over for reconciliation
    }
)

EVENT_FOR_STATE = {PUBLISHED: "post.published", FAILED: "post.failed"}

# Stable failure codes postd itself assigns (platform codes pass through unchanged).
MISSED = "MISSED"
PUBLISH_IN_DOUBT = "PUBLISH_IN_DOUBT"
RETRIES_EXHAUSTED = "RETRIES_EXHAUSTED"
AUTH_EXPIRED = "AUTH_EXPIRED"
ADAPTER_ERROR = "ADAPTER_ERROR"


class IllegalTransition(ValueError):
    pass


def check(from_state: str, to_state: str) -> None:
    if (from_state, to_state) not in TRANSITIONS:
        raise IllegalTransition(f"{from_state} -> {to_state}")


@dataclass(frozen=True, slots=True)
class PostView:
    """The plain values of a post that its wire representation is made of."""

    id: str
    page_id: str
    brand_id: str
    platform: str
    state: str
    message: str | None
    media: list[dict[str, Any]]
    first_comment: str | None
    scheduled_at: datetime
    created_at: datetime
    remote_id: str | None = None
    permalink: str | None = None
    published_at: datetime | None = None
    error_code: str | None = None
    error_message: str | None = None
    first_comment_status: str | None = None


def post_object(post: PostView) -> dict[str, Any]:
    """The "scheduled post object" of the API document, plus outcome fields once known."""
    body: dict[str, Any] = {
        "id": post.id,
        "page_id": post.page_id,
        "platform": post.platform,
        "scheduled_at": iso(post.scheduled_at),
        "status": post.state,
        "message": post.message,
        "media": [{"src": m.get("src") or m.get("url"), "type": m.get("type")} for m in post.media],
        "first_comment": post.first_comment,
        "created_at": iso(post.created_at),
    }
    if post.state == PUBLISHED:
        body.update(
            remote_id=post.remote_id,
            permalink=post.permalink,
            published_at=iso(post.published_at),
        )
        if post.first_comment is not None:
            body["first_comment_status"] = post.first_comment_status
    if post.state == FAILED:
        body["error"] = {"code": post.error_code, "message": post.error_message}
    return body


def event_payload(
    event: str, post: PostView, user_id: str | None, created_at: datetime
) -> dict[str, Any]:
    """The webhook body of a post event, exactly the seed's shape."""
    return {
        "event": event,
        "created_at": iso(created_at),
        "data": {"userId": user_id, "brandId": post.brand_id, "post": post_object(post)},
    }
