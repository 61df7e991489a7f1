"""Recording attempt results: the attempt log, each delivery's next state (policy.decide), and the
subscriptions' consecutive-failure counts, disabling at the limit or on a 410.

A result applies only while its delivery is still ``delivering`` under this instance's lease at
the attempt number it was claimed with (a fencing check): a late result of a lease another
instance took over changes nothing. Subscriptions are locked before deliveries (the order
:mod:`daemon.events.service` uses too), so PostgreSQL never deadlocks on them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from daemon.events import policy
from daemon.events.store import Claimed
from daemon.store.models import UTCDateTime, WebhookAttempt, WebhookDelivery, WebhookSubscription

SUBS = cast(Table, WebhookSubscription.__table__)
DELIVERIES = cast(Table, WebhookDelivery.__table__)
ATTEMPTS = cast(Table, WebhookAttempt.__table__)
DISABLED = "WEBHOOK_DISABLED: the subscription was disabled"


def _postgres(conn: AsyncConnection) -> bool:
    return conn.dialect.name == "postgresql"


@dataclass(frozen=True, slots=True)
class Result:
    claimed: Claimed
    attempted: policy.Attempted
    started_at: datetime
    finished_at: datetime
    duration_ms: int


@dataclass(slots=True)
class Applied:
    applied: int = 0
    disabled: list[tuple[str, str]] = field(default_factory=list)  # (subscription, reason)
    retry_at: datetime | None = None  # the earliest retry scheduled


# -- results ------------------------------------------------------------------------------------

_UPDATE_DELIVERY = (
    update(DELIVERIES)
    .where(DELIVERIES.c.id == bindparam("d_id"))
    .values(
        status=bindparam("d_status"),
        next_attempt_at=bindparam("d_next", type_=UTCDateTime()),
        lease_owner=None,
        lease_expires_at=None,
        last_status_code=bindparam("d_code"),
        last_error=bindparam("d_error"),
        last_attempt_at=bindparam("d_at", type_=UTCDateTime()),
        updated_at=bindparam("d_at", type_=UTCDateTime()),
    )
)
_UPDATE_SUB = (
    update(SUBS)
    .where(SUBS.c.id == bindparam("s_id"))
    .values(
        consecutive_failures=bindparam("s_failures"),
        enabled=bindparam("s_enabled"),
        disabled_reason=bindparam("s_reason"),
        disabled_at=bindparam("s_at", type_=UTCDateTime()),
        updated_at=bindparam("s_updated", type_=UTCDateTime()),
    )
)


@dataclass(slots=True)
class _Sub:
    id: str
    enabled: bool
    failures: int
    reason: str | None
    disabled_at: datetime | None
    updated_at: datetime
    changed: bool = False


async def _lock_subs(conn: AsyncConnection, sub_ids: list[str]) -> dict[str, _Sub]:
    stmt: Any = (
        select(
            SUBS.c.id,
            SUBS.c.enabled,
            SUBS.c.consecutive_failures,
            SUBS.c.disabled_reason,
            SUBS.c.disabled_at,
            SUBS.c.updated_at,
        )
        .where(SUBS.c.id.in_(sub_ids))
        .order_by(SUBS.c.id)
    )
    if _postgres(conn):
        stmt = stmt.with_for_update()
    return {r.id: _Sub(*r) for r in await conn.execute(stmt)}


async def _lock_deliveries(conn: AsyncConnection, ids: list[str]) -> dict[str, Any]:
    stmt: Any = (
        select(
            DELIVERIES.c.id,
            DELIVERIES.c.status,
            DELIVERIES.c.lease_owner,
            DELIVERIES.c.attempts,
        )
        .where(DELIVERIES.c.id.in_(ids))
        .order_by(DELIVERIES.c.id)
    )
    if _postgres(conn):
        stmt = stmt.with_for_update()
    return {r.id: r for r in await conn.execute(stmt)}


def _error_of(result: Result) -> str | None:
    return None if result.attempted.ok else result.attempted.error


async def apply(
    conn: AsyncConnection,
    results: Sequence[Result],
    *,
    owner: str,
    schedule: Sequence[float],
    auto_disable_after: int,
) -> Applied:
    """Record attempt results in the caller's transaction: the attempt log, each delivery's next
    state, and the subscriptions' failure counts (disabling at the limit or on 410)."""
    subs = await _lock_subs(conn, sorted({r.claimed.subscription_id for r in results}))
    rows = await _lock_deliveries(conn, sorted({r.claimed.id for r in results}))
    out = Applied()
    deliveries: list[dict[str, Any]] = []
    attempts: list[dict[str, Any]] = []
    for result in sorted(results, key=lambda r: r.finished_at):
        claimed, row = result.claimed, rows.get(result.claimed.id)
        sub = subs.get(claimed.subscription_id)
        if (
            row is None
            or sub is None
            or row.status != policy.DELIVERING
            or row.lease_owner != owner
            or row.attempts != claimed.attempt
        ):
            continue  # deleted, or taken over by another instance meanwhile
        decision = policy.decide(
            result.attempted,
            attempt_in_cycle=claimed.attempt_in_cycle,
            schedule=schedule,
            finished_at=result.finished_at,
            test=claimed.event == policy.TEST_EVENT,
        )
        error = _error_of(result)
        status, next_at = decision.status, decision.next_attempt_at
        if status == policy.PENDING and not sub.enabled:
            status, next_at, error = policy.FAILED, None, f"{error}; {DISABLED}"
        _count(sub, decision, auto_disable_after, result.finished_at, out)
        if status == policy.PENDING and next_at is not None:
            out.retry_at = next_at if out.retry_at is None else min(out.retry_at, next_at)
        deliveries.append(
            {
                "d_id": claimed.id,
                "d_status": status,
                "d_next": next_at,
                "d_code": result.attempted.status_code,
                "d_error": error,
                "d_at": result.finished_at,
            }
        )
        attempts.append(
            {
                "delivery_id": claimed.id,
                "number": claimed.attempt,
                "started_at": result.started_at,
                "status_code": result.attempted.status_code,
                "duration_ms": result.duration_ms,
                "error": result.attempted.error,
                "instance": owner,
            }
        )
    await _write(conn, deliveries, attempts, subs, out)
    return out


def _count(sub: _Sub, decision: policy.Decision, limit: int, now: datetime, out: Applied) -> None:
    """Move a subscription's consecutive-failure count for one finished delivery."""
    if decision.reset_failures and sub.failures:
        sub.failures, sub.changed = 0, True
    if decision.counts_as_failure:
        sub.failures, sub.changed = sub.failures + 1, True
    reason = decision.disable
    if (
        reason is None
        and decision.counts_as_failure
        and policy.disable_after_failure(sub.failures, limit)
    ):
        reason = policy.CONSECUTIVE_FAILURES
    if reason is not None and sub.enabled:
        sub.enabled, sub.reason, sub.disabled_at, sub.changed = False, reason, now, True
        out.disabled.append((sub.id, reason))
    if sub.changed:
        sub.updated_at = max(sub.updated_at, now)


async def _write(
    conn: AsyncConnection,
    deliveries: list[dict[str, Any]],
    attempts: list[dict[str, Any]],
    subs: Mapping[str, _Sub],
    out: Applied,
) -> None:
    if deliveries:
        await conn.execute(_UPDATE_DELIVERY, deliveries)
        await conn.execute(insert(ATTEMPTS), attempts)
    changed = [
        {
            "s_id": s.id,
            "s_failures": s.failures,
            "s_enabled": s.enabled,
            "s_reason": s.reason,
            "s_at": s.disabled_at,
            "s_updated": s.updated_at,
        }
        for s in subs.values()
        if s.changed
    ]
    if changed:
        await conn.execute(_UPDATE_SUB, changed)
    for sub_id, _reason in out.disabled:
        await fail_pending(conn, sub_id, DISABLED, subs[sub_id].updated_at)
    out.applied = len(deliveries)


async def fail_pending(
    conn: AsyncConnection, subscription_id: str, error: str, now: datetime
) -> int:
    """Fail a subscription's pending deliveries (it was disabled): they stay listed and can be
    redelivered once it is enabled again."""
    result = await conn.execute(
        update(DELIVERIES)
        .where(
            DELIVERIES.c.subscription_id == subscription_id,
            DELIVERIES.c.status == policy.PENDING,
        )
        .values(status=policy.FAILED, next_attempt_at=None, last_error=error, updated_at=now)
    )
    return int(getattr(result, "rowcount", 0) or 0)
