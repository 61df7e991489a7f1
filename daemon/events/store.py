"""The delivery rows' store side: claim under a lease, wake times, release, retention (results
are recorded by :mod:`daemon.events.results`).

Claiming works like the posts' (SPEC §2): on PostgreSQL the due rows are locked
``FOR UPDATE SKIP LOCKED``, so instances claim disjoint deliveries; on SQLite every transaction is
``BEGIN IMMEDIATE`` (one writer). A claim adds one to ``attempts``, so an attempt number is sent
by one instance only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    Table,
    Text,
    and_,
    delete,
    exists,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from daemon import timefmt
from daemon.events import policy, signing
from daemon.store.models import (
    OutboxEvent,
    User,
    WebhookAttempt,
    WebhookDelivery,
    WebhookSubscription,
)

SUBS = cast(Table, WebhookSubscription.__table__)
DELIVERIES = cast(Table, WebhookDelivery.__table__)
ATTEMPTS = cast(Table, WebhookAttempt.__table__)
OUTBOX = cast(Table, OutboxEvent.__table__)
USERS = cast(Table, User.__table__)
LEASE_LOST = "LEASE_EXPIRED: the instance sending this attempt stopped; its outcome is unknown"


@dataclass(frozen=True, slots=True)
class Claimed:
    """One delivery attempt this instance holds the lease for, with what sending it needs."""

    id: str
    subscription_id: str
    user_id: str
    tier: str
    event: str
    body: str
    url: str
    secrets: tuple[str, ...]
    attempt: int  # the attempt number being made (1-based, over the delivery's whole life)
    attempt_in_cycle: int  # the same, counted from the start of the current retry cycle


def _postgres(conn: AsyncConnection) -> bool:
    return conn.dialect.name == "postgresql"


# -- claiming -----------------------------------------------------------------------------------


async def _candidates(
    conn: AsyncConnection, *, now: datetime, batch: int, exclude: Sequence[str]
) -> list[Any]:
    cols = (DELIVERIES.c.id, DELIVERIES.c.subscription_id, DELIVERIES.c.status)
    expired = (
        select(*cols)
        .where(DELIVERIES.c.status == policy.DELIVERING, DELIVERIES.c.lease_expires_at <= now)
        .order_by(DELIVERIES.c.lease_expires_at)
        .limit(batch)
    )
    due = (
        select(*cols)
        .where(DELIVERIES.c.status == policy.PENDING, DELIVERIES.c.next_attempt_at <= now)
        .order_by(DELIVERIES.c.next_attempt_at)
        .limit(batch)
    )
    if exclude:  # never take over what this process is still sending
        expired = expired.where(DELIVERIES.c.id.not_in(list(exclude)))
    if _postgres(conn):
        expired = expired.with_for_update(skip_locked=True)
        due = due.with_for_update(skip_locked=True)
    rows = list((await conn.execute(expired)).all())
    if len(rows) < batch:
        rows += (await conn.execute(due.limit(batch - len(rows)))).all()
    return rows


async def _targets(conn: AsyncConnection, sub_ids: set[str]) -> dict[str, Any]:
    stmt = (
        select(
            SUBS.c.id,
            SUBS.c.url,
            SUBS.c.secret,
            SUBS.c.previous_secret,
            SUBS.c.previous_secret_expires_at,
            USERS.c.tier,
        )
        .join(USERS, USERS.c.id == SUBS.c.user_id)
        .where(SUBS.c.id.in_(sorted(sub_ids)), SUBS.c.enabled.is_(True))
    )
    return {row.id: row for row in await conn.execute(stmt)}


def pick(
    candidates: Sequence[Any], limit: int, per_subscription: int, busy: Mapping[str, int]
) -> list[Any]:
    """Up to ``limit`` candidates, oldest first: at most ``per_subscription`` in flight per
    subscription (``busy``: what this instance already sends) while others wait, so one slow
    receiver cannot hold every slot; slots nobody else wants go to whoever has work."""
    taken: dict[str, int] = dict(busy)
    chosen: list[Any] = []
    rest: list[Any] = []
    for row in candidates:
        if len(chosen) >= limit:
            break
        if taken.get(row.subscription_id, 0) >= per_subscription:
            rest.append(row)
            continue
        taken[row.subscription_id] = taken.get(row.subscription_id, 0) + 1
        chosen.append(row)
    return chosen + rest[: max(limit - len(chosen), 0)]


async def claim(
    conn: AsyncConnection,
    *,
    now: datetime,
    owner: str,
    lease: timedelta,
    limit: int,
    batch: int,
    per_subscription: int,
    busy: Mapping[str, int],
    in_flight: Sequence[str] = (),
) -> list[Claimed]:
    """Claim up to ``limit`` due deliveries (and expired leases) in the caller's transaction.

    ``busy``: deliveries this instance is sending now, per subscription; ``in_flight``: their ids
    (never taken over from ourselves)."""
    candidates = await _candidates(conn, now=now, batch=max(batch, limit), exclude=in_flight)
    if not candidates:
        return []
    targets = await _targets(conn, {c.subscription_id for c in candidates})
    chosen = pick(
        [c for c in candidates if c.subscription_id in targets], limit, per_subscription, busy
    )
    if not chosen:
        return []
    ids = [c.id for c in chosen]
    lost = [c.id for c in chosen if c.status == policy.DELIVERING]
    if lost:  # the attempt under the dead lease gets its row: outcome unknown
        await conn.execute(
            insert(ATTEMPTS).from_select(
                ["delivery_id", "number", "started_at", "error", "instance"],
                select(
                    DELIVERIES.c.id,
                    DELIVERIES.c.attempts,
                    DELIVERIES.c.last_attempt_at,
                    literal(LEASE_LOST, Text()),
                    DELIVERIES.c.lease_owner,
                ).where(DELIVERIES.c.id.in_(lost)),
            )
        )
    rows = await conn.execute(
        update(DELIVERIES)
        .where(DELIVERIES.c.id.in_(ids))
        .values(
            status=policy.DELIVERING,
            lease_owner=owner,
            lease_expires_at=now + lease,
            attempts=DELIVERIES.c.attempts + 1,
            last_attempt_at=now,
            updated_at=now,
        )
        .returning(
            DELIVERIES.c.id,
            DELIVERIES.c.subscription_id,
            DELIVERIES.c.user_id,
            DELIVERIES.c.event,
            DELIVERIES.c.body,
            DELIVERIES.c.attempts,
            DELIVERIES.c.cycle_start,
        )
    )
    by_id = {row.id: row for row in rows}
    return [_claimed(by_id[i], targets[by_id[i].subscription_id], now) for i in ids]


def _claimed(row: Any, target: Any, now: datetime) -> Claimed:
    return Claimed(
        id=row.id,
        subscription_id=row.subscription_id,
        user_id=row.user_id,
        tier=target.tier,
        event=row.event,
        body=row.body,
        url=target.url,
        secrets=signing.signing_secrets(
            target.secret, target.previous_secret, target.previous_secret_expires_at, now
        ),
        attempt=row.attempts,
        attempt_in_cycle=row.attempts - row.cycle_start,
    )


# -- waking, releasing, purging -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Wake:
    next_attempt: datetime | None
    next_lease_expiry: datetime | None
    unfanned: bool

    def earliest(self, now: datetime) -> datetime | None:
        if self.unfanned:
            return now
        times = [t for t in (self.next_attempt, self.next_lease_expiry) if t is not None]
        return min(times) if times else None

    @property
    def idle(self) -> bool:
        return not self.unfanned and self.next_attempt is None and self.next_lease_expiry is None


async def next_wake(conn: AsyncConnection) -> Wake:
    """One statement: the next due attempt, the next lease expiry, any event not fanned out."""
    due = (
        select(func.min(DELIVERIES.c.next_attempt_at))
        .where(DELIVERIES.c.status == policy.PENDING)
        .scalar_subquery()
    )
    lease = (
        select(func.min(DELIVERIES.c.lease_expires_at))
        .where(DELIVERIES.c.status == policy.DELIVERING)
        .scalar_subquery()
    )
    unfanned = exists().where(OUTBOX.c.fanned_out_at.is_(None))
    row = (await conn.execute(select(due, lease, unfanned))).one()
    return Wake(timefmt.aware(row[0]), timefmt.aware(row[1]), bool(row[2]))


async def release(
    conn: AsyncConnection, now: datetime, *, owner: str | None, ids: Sequence[str] | None
) -> int:
    """Give leased deliveries back as pending, due now, the unfinished attempt not counted.

    ``owner``/``ids`` None: every delivering row (SQLite start: the instance lock proves their
    holder dead)."""
    conds = [DELIVERIES.c.status == policy.DELIVERING]
    if owner is not None:
        conds.append(DELIVERIES.c.lease_owner == owner)
    if ids is not None:
        conds.append(DELIVERIES.c.id.in_(list(ids)))
    result = await conn.execute(
        update(DELIVERIES)
        .where(and_(*conds))
        .values(
            status=policy.PENDING,
            attempts=DELIVERIES.c.attempts - 1,  # a claim made it >= 1
            next_attempt_at=now,
            lease_owner=None,
            lease_expires_at=None,
            updated_at=now,
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def purge(conn: AsyncConnection, now: datetime, days: int) -> int:
    """Delete finished deliveries created more than ``days`` ago, with their attempts."""
    old = select(DELIVERIES.c.id).where(
        DELIVERIES.c.created_at < now - timedelta(days=days),
        DELIVERIES.c.status.in_((policy.SUCCEEDED, policy.FAILED)),
    )
    await conn.execute(delete(ATTEMPTS).where(ATTEMPTS.c.delivery_id.in_(old)))
    result = await conn.execute(delete(DELIVERIES).where(DELIVERIES.c.id.in_(old)))
    return int(getattr(result, "rowcount", 0) or 0)
