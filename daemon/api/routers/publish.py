"""``POST /api/v1/posts/publish``: publish now, through the dispatcher like any other post.

The post is inserted due now and the dispatcher is woken; the request then waits for the post's
fate, reading its row (a primary-key read, a few milliseconds apart, only while this request is
open) rather than publishing on its own: the guardrails, the attempt log, in-doubt reconciliation
and the outbox event are the dispatcher's, exactly as for a scheduled post.

What the caller gets:

* published: 201 with the platform's id (``post_id``), short platform code and permalink;
* a guardrail binds now (checked before inserting, and again by the dispatcher's claim): 429;
* the page cannot publish (never connected, or its credentials refused): 409
  ``PAGE_NOT_CONNECTED``, before anything is written;
* the platform refused it, or it failed for good: 502 ``PUBLISH_FAILED`` with ``platform_code``;
* a transient platform error (nothing was published) or no dispatcher to pick it up within
  ``dispatch.publish_timeout_seconds``: the post is cancelled, so it never goes out later by
  surprise, and the answer is 502 ``PUBLISH_FAILED`` with ``retryable: true``;
* the outcome is unknown (the platform may have it): 502 ``PUBLISH_IN_DOUBT`` with the post's
  ``id``; postd reconciles it and never publishes it twice.

With an Idempotency-Key, the post's id is written on the key with the post: if the process dies
before answering, the retry that takes the key over waits for that post (the dispatcher
publishes it once, after the restart) instead of publishing the message a second time.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from sqlalchemy import select

from daemon import guardrails, lifecycle
from daemon.api import errors, idempotency, posting, queries, schemas
from daemon.api.routers import WritePosts, error_responses
from daemon.store.models import Post
from daemon.timefmt import iso

if TYPE_CHECKING:
    from daemon.app import App

router = APIRouter(tags=["posts"])
FIRST_POLL = 0.002
MAX_POLL = 0.1


@router.post(
    "/posts/publish",
    status_code=201,
    response_model=schemas.Published,
    responses=error_responses(409, 502),
    summary="Publish a post now (answers once the platform accepted it)",
)
async def publish(
    request: Request,
    body: schemas.PublishBody,
    principal: WritePosts,
) -> dict[str, Any]:
    app = queries.postd(request)
    key = idempotency.current()
    if key is not None and key.resumed is not None:
        post_id = key.resumed  # this key's post, inserted by a run whose process died
    else:
        post_id = (await posting.create(app, principal, body, None, remember=True)).id
    post = await settle(app, post_id)
    if post.state == lifecycle.CANCELLED:  # it never reached the platform
        await posting.refund_publish(app, principal, app.clock.now())
    if post.state != lifecycle.PUBLISHED:
        raise failure(app, post)
    return {
        "post_id": post.remote_id or post.id,
        "id": post.id,
        "platform": queries.short_code(post.platform),
        "published_at": iso(post.published_at or post.updated_at),
        "message": post.message,
        "permalink": post.permalink,
        "status": "published",
    }


def _settled(post: Post) -> bool:
    # A post back in `scheduled` with a reason was deferred (guardrail) or backed off (transient
    # error): this request will not wait for its next try.
    return post.state in lifecycle.TERMINAL or (
        post.state == lifecycle.SCHEDULED and post.defer_reason is not None
    )


async def _read(app: App, post_id: str) -> Post:
    async with queries.read_session(app) as session:
        post = await session.get(Post, post_id)
    assert post is not None  # inserted by this request; posts are never deleted
    return post


async def settle(app: App, post_id: str) -> Post:
    """The post once published, failed or sent back to `scheduled` (then cancelled here), or
    once the wait times out (then cancelled if it never started)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + app.settings.dispatch.publish_timeout_seconds
    delay = FIRST_POLL
    while True:
        post = await _read(app, post_id)
        timed_out = loop.time() >= deadline
        if _settled(post) or timed_out:
            if post.state != lifecycle.SCHEDULED:
                return post
            cancelled = await _cancel_if_scheduled(app, post_id)
            if cancelled is not None or timed_out:
                return cancelled or post
        await asyncio.sleep(delay)
        delay = min(delay * 2, MAX_POLL)


async def _cancel_if_scheduled(app: App, post_id: str) -> Post | None:
    async with app.sessions() as session, session.begin():
        stmt: Any = select(Post).where(Post.id == post_id)
        if session.get_bind().dialect.name == "postgresql":
            stmt = stmt.with_for_update()
        post: Post = (await session.scalars(stmt)).one()
        if post.state != lifecycle.SCHEDULED:
            return None  # claimed meanwhile: wait for that attempt
        lifecycle.check(post.state, lifecycle.CANCELLED)
        post.state = lifecycle.CANCELLED
        post.updated_at = app.clock.now()
        return post


def failure(app: App, post: Post) -> errors.ApiError:
    if post.state == lifecycle.FAILED and post.error_code == lifecycle.PUBLISH_IN_DOUBT:
        return _in_doubt(post)
    if post.state == lifecycle.PUBLISHING:
        return _in_doubt(post, "still publishing when the wait ended")
    if post.state == lifecycle.CANCELLED and post.attempts == 0 and post.defer_reason:
        code, _, rule = post.defer_reason.partition(":")
        if code in (guardrails.PAGE_CODE, guardrails.BRAND_CODE):
            wait = (post.not_before or post.due_at) - app.clock.now()
            return errors.ApiError(
                code,
                f"Publish guardrail {rule.strip()}: the earliest instant that fits is "
                f"{iso(post.not_before)}",
                rule=rule.strip(),
                retry_after_seconds=max(math.ceil(wait.total_seconds()), 0),
                earliest_allowed_at=iso(post.not_before),
            )
    retryable = post.state == lifecycle.CANCELLED
    return errors.ApiError(
        "PUBLISH_FAILED",
        post.error_message
        or ("the platform did not take the post" if post.attempts else "the publish never started"),
        platform_code=post.error_code,
        id=post.id,
        retryable=retryable,
    )


def _in_doubt(post: Post, why: str | None = None) -> errors.ApiError:
    return errors.ApiError(
        "PUBLISH_IN_DOUBT",
        f"The platform may or may not have post {post.id}"
        + (f" ({why})" if why else "")
        + "; postd reconciles it and never publishes it twice: see GET /posts/scheduled/{id}",
        id=post.id,
        platform_code=post.error_code,
    )
