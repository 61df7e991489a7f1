"""Store-side transitions of the lifecycle: each writes the post's new state together with its
outbox event and attempt row in the caller's transaction (no event without its state change)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from adapters import base
from daemon import lifecycle
from daemon.dispatch import plan
from daemon.dispatch.outcomes import ClaimedPost, Outcome, TryRecord
from daemon.store.models import Brand, OutboxEvent, Page, Post, PublishAttempt

NEVER_RETRY = timedelta(hours=24)


def view(post: Post) -> lifecycle.PostView:
    return lifecycle.PostView(
        id=post.id,
        page_id=post.page_id,
        brand_id=post.brand_id,
        platform=post.platform,
        state=post.state,
        message=post.message,
        media=list(post.media or []),
        first_comment=post.first_comment,
        scheduled_at=post.scheduled_at,
        created_at=post.created_at,
        remote_id=post.remote_id,
        permalink=post.permalink,
        published_at=post.published_at,
        error_code=post.error_code,
        error_message=post.error_message,
        first_comment_status=post.first_comment_status,
    )


class Events:
    """The outbox events of one transaction, written together by :meth:`write` (one query for
    the brands' owners, one multi-row insert) before the transaction commits."""

    def __init__(self) -> None:
        self._pending: list[tuple[str, lifecycle.PostView, datetime]] = []

    def emit(self, post: Post, now: datetime) -> None:
        """Record the event of the post's (terminal) state, as it is now."""
        self._pending.append((lifecycle.EVENT_FOR_STATE[post.state], view(post), now))

    async def write(self, session: AsyncSession) -> int:
        if not self._pending:
            return 0
        brand_ids = sorted({v.brand_id for _, v, _ in self._pending})
        owners: dict[str, str | None] = {
            bid: owner
            for bid, owner in await session.execute(
                select(Brand.id, Brand.owner_id).where(Brand.id.in_(brand_ids))
            )
        }
        rows = [
            {
                "event": event,
                "post_id": v.id,
                "user_id": owners.get(v.brand_id),
                "brand_id": v.brand_id,
                "created_at": now,
                "payload": lifecycle.event_payload(event, v, owners.get(v.brand_id), now),
            }
            for event, v, now in self._pending
        ]
        await session.execute(insert(OutboxEvent), rows)
        written = len(rows)
        self._pending.clear()
        return written


def defer(post: Post, action: plan.Defer, now: datetime) -> None:
    lifecycle.check(post.state, lifecycle.SCHEDULED)
    not_before = action.not_before or now + NEVER_RETRY
    post.not_before = not_before
    post.due_at = max(post.scheduled_at, not_before)
    post.defer_reason = f"{action.code}: {action.reason}"
    post.updated_at = now


def miss(events: Events, post: Post, action: plan.Miss, now: datetime) -> None:
    lifecycle.check(post.state, lifecycle.FAILED)
    post.state = lifecycle.FAILED
    post.error_code = lifecycle.MISSED
    post.error_message = (
        f"overdue by {action.overdue_seconds} s, past the catch-up window: not published"
    )
    post.updated_at = now
    events.emit(post, now)


async def page_refs(session: AsyncSession, page_ids: set[str]) -> dict[str, Page]:
    if not page_ids:
        return {}
    rows = await session.scalars(select(Page).where(Page.id.in_(sorted(page_ids))))
    return {page.id: page for page in rows}


def payload(post: Post, page: Page | None) -> base.PostPayload:
    media = tuple(
        base.MediaItem(
            url=str(m.get("src") or m.get("url")),
            kind=str(m.get("type", "photo")),
            mime_type=m.get("mime_type"),
        )
        for m in (post.media or [])
    )
    return base.PostPayload(
        post_id=post.id,
        page_id=post.page_id,
        platform=post.platform,
        message=post.message,
        media=media,
        first_comment=post.first_comment,
        options=dict(post.options or {}),
        page_external_id=page.external_id if page is not None else None,
    )


def claimed(
    post: Post,
    attempt_id: int,
    started_at: datetime,
    page: Page | None,
    *,
    reconcile: bool = False,
) -> ClaimedPost:
    return ClaimedPost(
        post_id=post.id,
        page_id=post.page_id,
        brand_id=post.brand_id,
        platform=post.platform,
        scheduled_at=post.scheduled_at,
        due_at=post.due_at,
        attempts=post.attempts,
        attempt_id=attempt_id,
        attempt_started_at=started_at,
        first_attempt_at=post.first_attempt_at or started_at,
        payload=payload(post, page),
        reconcile=reconcile,
    )


def _fill(row: PublishAttempt, tried: TryRecord, outcome: str) -> None:
    row.finished_at = tried.finished_at
    row.outcome = outcome
    row.error_class = tried.error_class
    row.error_code = tried.error_code
    row.http_status = tried.http_status
    row.excerpt = (tried.excerpt or "")[:500] or None
    row.duration_ms = max(int((tried.finished_at - tried.started_at).total_seconds() * 1000), 0)


def _final_try(outcome: Outcome) -> TryRecord:
    return TryRecord(
        started_at=outcome.started_at or outcome.claimed.attempt_started_at,
        finished_at=outcome.finished_at,
        error_class=outcome.error_class,
        error_code=outcome.code if outcome.kind != "published" else None,
        http_status=outcome.http_status,
        excerpt=outcome.excerpt,
    )


def record_attempts(
    session: AsyncSession, post: Post, row: PublishAttempt | None, outcome: Outcome, owner: str
) -> None:
    """Write the attempt log: the claim's row takes the first try, later tries get new rows."""
    if row is None:
        return
    if outcome.claimed.reconcile:
        # The row is the in-doubt attempt: keep what is known of it, add how it was resolved.
        row.outcome = f"{row.outcome}>{outcome.attempt_outcome}"[:32]
        row.finished_at = row.finished_at or outcome.finished_at
        return
    tries = [*outcome.extra_tries, _final_try(outcome)]
    outcomes = ["retry"] * len(outcome.extra_tries) + [outcome.attempt_outcome]
    _fill(row, tries[0], outcomes[0])
    for number, (tried, label) in enumerate(zip(tries[1:], outcomes[1:], strict=True), 1):
        extra = PublishAttempt(
            post_id=post.id, number=row.number + number, instance=owner, started_at=tried.started_at
        )
        _fill(extra, tried, label)
        session.add(extra)
    post.attempts = row.number + len(tries) - 1


async def apply(
    session: AsyncSession, posts: dict[str, Post], outcomes: Sequence[Outcome], owner: str
) -> list[Outcome]:
    """Apply finished publishes. An outcome applies only to the claim it came from: the post is
    still publishing under this instance's lease *and* its latest attempt is the outcome's. Others
    (the post was reconciled and claimed again meanwhile) are skipped and returned."""
    attempt_ids = [o.claimed.attempt_id for o in outcomes]
    latest_stmt = (
        select(PublishAttempt.post_id, func.max(PublishAttempt.id))
        .where(PublishAttempt.post_id.in_(sorted(posts)))
        .group_by(PublishAttempt.post_id)
    )
    latest: dict[str, int] = {pid: aid for pid, aid in await session.execute(latest_stmt)}
    attempts = {
        a.id: a
        for a in await session.scalars(
            select(PublishAttempt).where(PublishAttempt.id.in_(attempt_ids))
        )
    }
    lost: list[Outcome] = []
    events = Events()
    for outcome in outcomes:
        post = posts.get(outcome.claimed.post_id)
        if (
            post is None
            or post.state != lifecycle.PUBLISHING
            or post.lease_owner != owner
            or latest.get(post.id) != outcome.claimed.attempt_id
        ):
            lost.append(outcome)
            continue
        record_attempts(session, post, attempts.get(outcome.claimed.attempt_id), outcome, owner)
        await _transition(session, post, outcome, events)
    await events.write(session)
    return lost


async def _transition(session: AsyncSession, post: Post, outcome: Outcome, events: Events) -> None:
    now = outcome.finished_at
    post.updated_at = now
    if outcome.kind == "in_doubt":
        # Stays publishing and counted; when the lease ends, reconciliation takes it over
        # (at once after an ambiguous publish, later when the platform could not be asked).
        post.lease_expires_at = outcome.not_before or now
        post.error_code, post.error_message = outcome.code, outcome.message
        return
    post.lease_owner = None
    post.lease_expires_at = None
    if outcome.kind == "published" and outcome.published is not None:
        post.state = lifecycle.PUBLISHED
        post.remote_id = outcome.published.remote_id
        post.permalink = outcome.published.permalink
        post.published_at = outcome.published.published_at
        post.counted_at = outcome.published.published_at
        post.error_code = post.error_message = post.defer_reason = None
        events.emit(post, now)
    elif outcome.kind in ("reschedule", "release"):
        post.state = lifecycle.SCHEDULED
        post.not_before = outcome.not_before or now
        post.due_at = max(post.scheduled_at, post.not_before)
        post.counted_at = None
        post.error_code, post.error_message = outcome.code, outcome.message
        post.defer_reason = outcome.message
        if outcome.kind == "release":
            post.attempts = max(post.attempts - 1, 0)
    else:
        post.state = lifecycle.FAILED
        post.error_code, post.error_message = outcome.code, outcome.message
        if not outcome.keep_counted:
            post.counted_at = None
        if outcome.page_needs_reauth:
            page = await session.get(Page, post.page_id)
            if page is not None:
                page.status, page.status_reason = "needs_reauth", outcome.message
        events.emit(post, now)
