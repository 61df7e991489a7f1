"""Fan-out: outbox events become delivery rows, one per matching subscription, exactly once.

An event is fanned out in the transaction that marks it (``outbox_events.fanned_out_at``), so a
crash before the commit leaves it unmarked and undelivered, and a crash after leaves both. On
PostgreSQL the events are locked ``FOR UPDATE SKIP LOCKED``: instances fan out disjoint events.
The unique (subscription, event) index makes a second fan-out of one event impossible anyway.

Who receives what: a subscription belongs to a user and receives the events whose outbox row
names that user (the owner of the post's brand; account-level events name the user directly),
narrowed to its brands when the token that created it was brand-restricted
(:func:`daemon.events.policy.matches`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from daemon import ids
from daemon.events import policy
from daemon.store.models import OutboxEvent, WebhookDelivery, WebhookSubscription

OUTBOX = cast(Table, OutboxEvent.__table__)
SUBS = cast(Table, WebhookSubscription.__table__)
DELIVERIES = cast(Table, WebhookDelivery.__table__)
MSG_PREFIX = "msg_"


@dataclass(frozen=True, slots=True)
class FanOut:
    events: int  # outbox events marked
    deliveries: int  # delivery rows written


def new_delivery_id(now: datetime) -> str:
    """A ``webhook-id``: ``msg_`` + a time-ordered id (Standard Webhooks' message id style)."""
    return MSG_PREFIX + ids.new_id(now.timestamp())


def body_text(payload: dict[str, Any]) -> str:
    """The exact JSON text of a delivery (signed once, sent unchanged on every attempt)."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def delivery_row(
    *,
    subscription_id: str,
    user_id: str,
    event_id: int | None,
    event: str,
    body: str,
    now: datetime,
) -> dict[str, Any]:
    return {
        "id": new_delivery_id(now),
        "subscription_id": subscription_id,
        "user_id": user_id,
        "event_id": event_id,
        "event": event,
        "body": body,
        "status": policy.PENDING,
        "attempts": 0,
        "cycle_start": 0,
        "next_attempt_at": now,
        "created_at": now,
        "updated_at": now,
    }


def insert_deliveries(dialect: str) -> Any:
    """INSERT of delivery rows that skips a (subscription, event) pair already present."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(DELIVERIES).on_conflict_do_nothing(
        index_elements=[DELIVERIES.c.subscription_id, DELIVERIES.c.event_id]
    )


async def _subscriptions(conn: AsyncConnection, user_ids: set[str]) -> dict[str, list[Any]]:
    if not user_ids:
        return {}
    rows = await conn.execute(
        select(SUBS.c.id, SUBS.c.user_id, SUBS.c.events, SUBS.c.brand_ids, SUBS.c.created_at)
        .where(SUBS.c.user_id.in_(sorted(user_ids)), SUBS.c.enabled.is_(True))
        .order_by(SUBS.c.id)
    )
    by_user: dict[str, list[Any]] = defaultdict(list)
    for row in rows:
        by_user[row.user_id].append(row)
    return by_user


async def fan_out(conn: AsyncConnection, *, now: datetime, batch: int) -> FanOut:
    """Fan out up to ``batch`` unmarked outbox events, oldest first, in the caller's
    transaction (the caller commits)."""
    postgres = conn.dialect.name == "postgresql"
    stmt = (
        select(
            OUTBOX.c.id,
            OUTBOX.c.event,
            OUTBOX.c.user_id,
            OUTBOX.c.brand_id,
            OUTBOX.c.created_at,
            OUTBOX.c.payload,
        )
        .where(OUTBOX.c.fanned_out_at.is_(None))
        .order_by(OUTBOX.c.id)
        .limit(batch)
    )
    if postgres:
        stmt = stmt.with_for_update(skip_locked=True)
    events = (await conn.execute(stmt)).all()
    if not events:
        return FanOut(0, 0)
    subs = await _subscriptions(conn, {e.user_id for e in events if e.user_id})
    rows = []
    for event in events:
        body: str | None = None
        for sub in subs.get(event.user_id, ()):
            if not policy.matches(
                event=event.event,
                event_brand_id=event.brand_id,
                event_created_at=event.created_at,
                events=sub.events or (),
                brand_ids=sub.brand_ids or (),
                created_at=sub.created_at,
            ):
                continue
            body = body if body is not None else body_text(event.payload)
            rows.append(
                delivery_row(
                    subscription_id=sub.id,
                    user_id=event.user_id,
                    event_id=event.id,
                    event=event.event,
                    body=body,
                    now=now,
                )
            )
    if rows:
        await conn.execute(insert_deliveries(conn.dialect.name), rows)
    await conn.execute(
        update(OUTBOX).where(OUTBOX.c.id.in_([e.id for e in events])).values(fanned_out_at=now)
    )
    return FanOut(len(events), len(rows))
