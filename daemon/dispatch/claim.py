"""The claiming transaction: due posts become ``publishing`` under a lease, or are deferred/missed.

Guardrails are checked inside this transaction against every post that counts (published, in
flight, in doubt), so the counts hold across restarts and across instances:

- SQLite: the transaction is ``BEGIN IMMEDIATE`` (one writer at a time, see store.db).
- PostgreSQL: due posts are locked ``FOR UPDATE SKIP LOCKED``, then their pages and brands are
  locked the same way *before* the histories are read, so two instances never decide on the same
  page or brand at once; a post whose page or brand another instance holds is left for later.
"""

from __future__ import annotations

import functools
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import Table, case, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from daemon import guardrails, lifecycle
from daemon.dispatch import plan, transitions
from daemon.dispatch.outcomes import ClaimedPost
from daemon.dispatch.transitions import POSTS, Row
from daemon.store.models import Brand, Page

DAY = timedelta(hours=24)
HOUR = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class ClaimResult:
    claimed: list[ClaimedPost]
    deferred: list[plan.Defer]
    missed: int
    candidates: int


async def _lock_ids(conn: AsyncConnection, table: Table, ids: set[str]) -> set[str]:
    stmt = (
        select(table.c.id)
        .where(table.c.id.in_(sorted(ids)))
        .order_by(table.c.id)
        .with_for_update(skip_locked=True)
    )
    return set((await conn.scalars(stmt)).all())


async def _histories(
    conn: AsyncConnection, column: str, ids: set[str], now: datetime
) -> dict[str, list[datetime]]:
    since = now - DAY
    col = POSTS.c[column]
    stmt = select(col, POSTS.c.counted_at).where(
        col.in_(sorted(ids)), POSTS.c.counted_at.is_not(None), POSTS.c.counted_at > since
    )
    out: dict[str, list[datetime]] = defaultdict(list)
    for key, instant in await conn.execute(stmt):
        # Another instance's clock may run slightly ahead: count its claim as "now".
        out[key].append(min(instant, now))
    return out


async def _brand_histories(
    conn: AsyncConnection, rows: Sequence[Row], now: datetime, cap: int
) -> dict[str, list[datetime]]:
    """Brand histories, read only where they can matter.

    The brand rule binds only when a brand's count in the last 24 h plus what this batch could
    add reaches the cap. For every other brand an empty history gives the same decisions (no
    brand-rule deferral in this batch), so one grouped COUNT replaces reading up to ``cap``
    instants per brand on every pass.
    """
    batch = Counter(row["brand_id"] for row in rows)
    stmt = (
        select(POSTS.c.brand_id, func.count())
        .where(
            POSTS.c.brand_id.in_(sorted(batch)),
            POSTS.c.counted_at.is_not(None),
            POSTS.c.counted_at > now - DAY,
        )
        .group_by(POSTS.c.brand_id)
    )
    counts: dict[str, int] = {bid: n for bid, n in await conn.execute(stmt)}
    near = {bid for bid, k in batch.items() if counts.get(bid, 0) + k >= cap}
    return await _histories(conn, "brand_id", near, now) if near else {}


async def _page_histories(
    conn: AsyncConnection,
    rows: Sequence[Row],
    now: datetime,
    limits_for: Callable[[str], guardrails.Limits],
) -> dict[str, list[datetime]]:
    """Page histories, in full only where a window can bind.

    For a page whose publishes in the last hour and 24 h, plus what this batch could add, stay
    under both page limits, the window rules allow whatever the instants are and the gap rule
    looks only at the latest: its latest instant alone gives the same decisions. One grouped
    query finds those pages, instead of reading every instant of every page on each pass.
    """
    batch = Counter(row["page_id"] for row in rows)
    platforms = {row["page_id"]: row["platform"] for row in rows}
    counted = POSTS.c.counted_at
    stmt = (
        select(
            POSTS.c.page_id,
            func.count(),
            func.sum(case((counted > now - HOUR, 1), else_=0)),
            func.max(counted),
        )
        .where(POSTS.c.page_id.in_(sorted(batch)), counted.is_not(None), counted > now - DAY)
        .group_by(POSTS.c.page_id)
    )
    out: dict[str, list[datetime]] = {}
    binding: set[str] = set()
    for page_id, day, hour, latest in await conn.execute(stmt):
        limits = limits_for(platforms[page_id]).page
        k = batch[page_id]
        if day + k >= limits.per_24h or int(hour or 0) + k >= limits.per_hour:
            binding.add(page_id)
        else:
            out[page_id] = [min(latest, now)]
    if binding:
        out.update(await _histories(conn, "page_id", binding, now))
    return out


async def _busy_pages(conn: AsyncConnection, page_ids: set[str]) -> set[str]:
    stmt = select(POSTS.c.page_id).where(
        POSTS.c.state == lifecycle.PUBLISHING, POSTS.c.page_id.in_(sorted(page_ids))
    )
    return set((await conn.scalars(stmt)).all())


async def _candidates(
    conn: AsyncConnection, now: datetime, batch: int, postgres: bool
) -> list[Row]:
    in_flight = select(POSTS.c.page_id).where(POSTS.c.state == lifecycle.PUBLISHING)
    stmt = (
        select(*transitions.POST_COLUMNS)
        .where(
            POSTS.c.state == lifecycle.SCHEDULED,
            POSTS.c.due_at <= now,
            POSTS.c.page_id.not_in(in_flight),
        )
        # due_at alone: the (state, due_at) index delivers that order and the scan stops at the
        # limit; a tie-break column would sort every post due at the same instant first.
        .order_by(POSTS.c.due_at)
        .limit(batch)
    )
    if postgres:
        stmt = stmt.with_for_update(skip_locked=True, of=POSTS)
    result = await conn.execute(stmt)
    keys = tuple(result.keys())
    return [dict(zip(keys, row, strict=True)) for row in result]


async def claim(
    conn: AsyncConnection,
    *,
    now: datetime,
    owner: str,
    lease: timedelta,
    limit: int,
    batch: int,
    limits_for: Callable[[str], guardrails.Limits],
    catch_up: timedelta,
    postgres: bool,
    skip: AbstractSet[str] = frozenset(),
    meanwhile: Callable[[], Awaitable[None]] | None = None,
) -> ClaimResult:
    """Run one claiming pass inside the caller's transaction (the caller commits); the posts
    in ``skip`` are left for a later pass. ``meanwhile``: see :func:`transitions.claim_rows`
    (run only if some post is claimed)."""
    limits_for = functools.cache(limits_for)  # the same for the whole pass; asked per post
    rows = await _candidates(conn, now, batch, postgres)
    if skip:
        rows = [row for row in rows if row["id"] not in skip]
    if not rows:
        return ClaimResult([], [], 0, 0)
    if postgres:
        pages = await _lock_ids(conn, cast(Table, Page.__table__), {r["page_id"] for r in rows})
        brands = await _lock_ids(conn, cast(Table, Brand.__table__), {r["brand_id"] for r in rows})
        rows = [r for r in rows if r["page_id"] in pages and r["brand_id"] in brands]
        if not rows:  # another instance holds every page or brand concerned
            return ClaimResult([], [], 0, 0)
    page_ids = {r["page_id"] for r in rows}
    page_hist = await _page_histories(conn, rows, now, limits_for)
    cap = limits_for(rows[0]["platform"]).brand_per_24h
    brand_hist = await _brand_histories(conn, rows, now, cap)
    busy = await _busy_pages(conn, page_ids) if postgres else set()
    actions = plan.plan_batch(
        [_candidate(r) for r in rows], page_hist, brand_hist, busy, limits_for, now, catch_up
    )
    return await _apply(
        conn, rows, actions, now=now, owner=owner, lease=lease, limit=limit, meanwhile=meanwhile
    )


def _candidate(row: Row) -> plan.Candidate:
    return plan.Candidate(
        post_id=row["id"],
        page_id=row["page_id"],
        brand_id=row["brand_id"],
        platform=row["platform"],
        scheduled_at=row["scheduled_at"],
        due_at=row["due_at"],
    )


async def _apply(
    conn: AsyncConnection,
    rows: Sequence[Row],
    actions: Sequence[plan.Action],
    *,
    now: datetime,
    owner: str,
    lease: timedelta,
    limit: int,
    meanwhile: Callable[[], Awaitable[None]] | None = None,
) -> ClaimResult:
    by_id = {row["id"]: row for row in rows}
    to_claim: list[Row] = []
    deferred: list[plan.Defer] = []
    changes: list[tuple[str, Row]] = []
    missed = 0
    events = transitions.Events()
    for action in actions:
        if isinstance(action, plan.Claim):
            if len(to_claim) >= limit:
                break  # later decisions assumed this claim: leave them for the next pass
            to_claim.append(by_id[action.post_id])
        elif isinstance(action, plan.Defer):
            changes.append(
                (action.post_id, transitions.deferred(by_id[action.post_id], action, now))
            )
            deferred.append(action)
        elif isinstance(action, plan.Miss):
            row = by_id[action.post_id]
            values = transitions.missed(row, action, now)
            row.update(values)
            changes.append((action.post_id, values))
            events.emit(row, now)
            missed += 1
    await transitions.update_rows(conn, POSTS, changes)
    claimed = await transitions.claim_rows(
        conn, to_claim, now=now, owner=owner, until=now + lease, meanwhile=meanwhile
    )
    await events.write(conn)
    return ClaimResult(claimed, deferred, missed, len(rows))
