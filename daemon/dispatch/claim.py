"""The claiming transaction: due posts become ``publishing`` under a lease, or are deferred/missed.

Guardrails are checked inside this transaction against every post that counts (published, in
flight, in doubt), so the counts hold across restarts and across instances:

- SQLite: the transaction is ``BEGIN IMMEDIATE`` (one writer at a time, see store.db).
- PostgreSQL: due posts are locked ``FOR UPDATE SKIP LOCKED``, then their pages and brands are
  locked the same way *before* the histories are read, so two instances never decide on the same
  page or brand at once; a post whose page or brand another instance holds is left for later.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from daemon import guardrails, lifecycle
from daemon.dispatch import plan, transitions
from daemon.dispatch.outcomes import ClaimedPost
from daemon.store.models import Brand, Page, Post, PublishAttempt

DAY = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class ClaimResult:
    claimed: list[ClaimedPost]
    deferred: list[plan.Defer]
    missed: int
    candidates: int


async def _lock_ids(
    session: AsyncSession, model: type[Page] | type[Brand], ids: set[str]
) -> set[str]:
    stmt = (
        select(model.id)
        .where(model.id.in_(sorted(ids)))
        .order_by(model.id)
        .with_for_update(skip_locked=True)
    )
    return set((await session.scalars(stmt)).all())


async def _histories(
    session: AsyncSession, column: str, ids: set[str], now: datetime
) -> dict[str, list[datetime]]:
    since = now - DAY
    col = getattr(Post, column)
    stmt = select(col, Post.counted_at).where(
        col.in_(sorted(ids)), Post.counted_at.is_not(None), Post.counted_at > since
    )
    out: dict[str, list[datetime]] = defaultdict(list)
    for key, instant in (await session.execute(stmt)).all():
        # Another instance's clock may run slightly ahead: count its claim as "now".
        out[key].append(min(instant, now))
    return out


async def _brand_histories(
    session: AsyncSession, posts: Sequence[Post], now: datetime, cap: int
) -> dict[str, list[datetime]]:
    """Brand histories, read only where they can matter.

    The brand rule binds only when a brand's count in the last 24 h plus what this batch could
    add reaches the cap. For every other brand an empty history gives the same decisions (no
    brand-rule deferral in this batch), so one grouped COUNT replaces reading up to ``cap``
    instants per brand on every pass.
    """
    batch = Counter(p.brand_id for p in posts)
    stmt = (
        select(Post.brand_id, func.count())
        .where(
            Post.brand_id.in_(sorted(batch)),
            Post.counted_at.is_not(None),
            Post.counted_at > now - DAY,
        )
        .group_by(Post.brand_id)
    )
    counts: dict[str, int] = {bid: n for bid, n in await session.execute(stmt)}
    near = {bid for bid, k in batch.items() if counts.get(bid, 0) + k >= cap}
    return await _histories(session, "brand_id", near, now) if near else {}


async def _busy_pages(session: AsyncSession, page_ids: set[str]) -> set[str]:
    stmt = select(Post.page_id).where(
        Post.state == lifecycle.PUBLISHING, Post.page_id.in_(sorted(page_ids))
    )
    return set((await session.scalars(stmt)).all())


async def _candidates(
    session: AsyncSession, now: datetime, batch: int, postgres: bool
) -> list[Post]:
    in_flight = select(Post.page_id).where(Post.state == lifecycle.PUBLISHING)
    stmt = (
        select(Post)
        .where(
            Post.state == lifecycle.SCHEDULED,
            Post.due_at <= now,
            Post.page_id.not_in(in_flight),
        )
        .order_by(Post.due_at, Post.id)
        .limit(batch)
    )
    if postgres:
        stmt = stmt.with_for_update(skip_locked=True, of=Post)
    return list((await session.scalars(stmt)).all())


async def claim(
    session: AsyncSession,
    *,
    now: datetime,
    owner: str,
    lease: timedelta,
    limit: int,
    batch: int,
    limits_for: Callable[[str], guardrails.Limits],
    catch_up: timedelta,
    postgres: bool,
) -> ClaimResult:
    """Run one claiming pass inside the caller's transaction (the caller commits)."""
    posts = await _candidates(session, now, batch, postgres)
    if not posts:
        return ClaimResult([], [], 0, 0)
    if postgres:
        pages = await _lock_ids(session, Page, {p.page_id for p in posts})
        brands = await _lock_ids(session, Brand, {p.brand_id for p in posts})
        posts = [p for p in posts if p.page_id in pages and p.brand_id in brands]
        if not posts:  # another instance holds every page or brand concerned
            return ClaimResult([], [], 0, 0)
    page_ids = {p.page_id for p in posts}
    page_hist = await _histories(session, "page_id", page_ids, now)
    cap = limits_for(posts[0].platform).brand_per_24h
    brand_hist = await _brand_histories(session, posts, now, cap)
    busy = await _busy_pages(session, page_ids) if postgres else set()
    actions = plan.plan_batch(
        [_candidate(p) for p in posts], page_hist, brand_hist, busy, limits_for, now, catch_up
    )
    return await _apply(session, posts, actions, now=now, owner=owner, lease=lease, limit=limit)


def _candidate(post: Post) -> plan.Candidate:
    return plan.Candidate(
        post_id=post.id,
        page_id=post.page_id,
        brand_id=post.brand_id,
        platform=post.platform,
        scheduled_at=post.scheduled_at,
        due_at=post.due_at,
    )


async def _apply(
    session: AsyncSession,
    posts: Sequence[Post],
    actions: Sequence[plan.Action],
    *,
    now: datetime,
    owner: str,
    lease: timedelta,
    limit: int,
) -> ClaimResult:
    by_id = {p.id: p for p in posts}
    to_claim: list[Post] = []
    deferred: list[plan.Defer] = []
    missed = 0
    events = transitions.Events()
    for action in actions:
        if isinstance(action, plan.Claim):
            if len(to_claim) >= limit:
                break  # later decisions assumed this claim: leave them for the next pass
            to_claim.append(by_id[action.post_id])
        elif isinstance(action, plan.Defer):
            transitions.defer(by_id[action.post_id], action, now)
            deferred.append(action)
        elif isinstance(action, plan.Miss):
            transitions.miss(events, by_id[action.post_id], action, now)
            missed += 1
    claimed = await _claim_posts(session, to_claim, now=now, owner=owner, lease=lease)
    await events.write(session)
    return ClaimResult(claimed, deferred, missed, len(posts))


async def _claim_posts(
    session: AsyncSession, posts: Sequence[Post], *, now: datetime, owner: str, lease: timedelta
) -> list[ClaimedPost]:
    if not posts:
        return []
    attempts: list[dict[str, object]] = []
    for post in posts:
        lifecycle.check(post.state, lifecycle.PUBLISHING)
        post.state = lifecycle.PUBLISHING
        post.lease_owner = owner
        post.lease_expires_at = now + lease
        post.attempts += 1
        post.counted_at = now
        post.first_attempt_at = post.first_attempt_at or now
        post.updated_at = now
        attempts.append(
            {
                "post_id": post.id,
                "number": post.attempts,
                "instance": owner,
                "started_at": now,
                "outcome": "started",
            }
        )
    await session.flush()  # the posts' new state, in one batch
    # One multi-row insert (ids are not returned by it on every backend), then the new rows'
    # ids: the newest attempt of each post claimed here is the one just written.
    await session.execute(insert(PublishAttempt), attempts)
    ids = [p.id for p in posts]
    newest = (
        select(PublishAttempt.post_id, func.max(PublishAttempt.id))
        .where(PublishAttempt.post_id.in_(ids))
        .group_by(PublishAttempt.post_id)
    )
    attempt_ids: dict[str, int] = {pid: aid for pid, aid in await session.execute(newest)}
    pages = await transitions.page_refs(session, {p.page_id for p in posts})
    return [
        transitions.claimed(post, attempt_ids[post.id], now, pages.get(post.page_id))
        for post in posts
    ]
