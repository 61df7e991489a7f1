"""Webhook subscriptions: the use cases shared by the API and the CLI.

Every function validates before it writes (bad input raises InputError with a stable code and
changes nothing) and runs in the caller's transaction.

Reach: a subscription belongs to a user. A token restricted to brands sees (and creates) only
subscriptions restricted to a subset of those brands; an unrestricted token sees all of its
user's. Others' subscriptions are answered as absent (NOT_FOUND).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from daemon import ids, netguard, timefmt
from daemon.errors import InputError, NotFoundError
from daemon.events import fanout, policy, results, signing
from daemon.store.models import Brand, WebhookAttempt, WebhookDelivery, WebhookSubscription

MAX_URL = 2048


@dataclass(frozen=True, slots=True)
class Caller:
    """Who acts: the user, and the brands the token is restricted to (empty: unrestricted)."""

    user_id: str
    brand_ids: tuple[str, ...] = ()

    def sees(self, sub: WebhookSubscription) -> bool:
        if sub.user_id != self.user_id:
            return False
        return not self.brand_ids or (
            bool(sub.brand_ids) and set(sub.brand_ids) <= set(self.brand_ids)
        )


# -- validation ---------------------------------------------------------------------------------


def check_events(events: Sequence[str] | None) -> list[str]:
    """The subscribed event names, deduplicated in the given order; INVALID_EVENTS otherwise."""
    names = list(dict.fromkeys(e.strip() for e in events or ()))
    unknown = [e for e in names if e not in policy.EVENTS]
    if not names or unknown:
        problem = f"unknown event(s): {', '.join(unknown)}" if unknown else "no event named"
        raise InputError(
            "INVALID_EVENTS",
            f"{problem}; subscribe to one or more of {', '.join(policy.EVENTS)}",
            field="events",
            allowed=list(policy.EVENTS),
        )
    return names


async def check_url(
    url: str, guard: netguard.Policy, resolver: netguard.Resolver | None = None
) -> str:
    """The URL, stripped, once the SSRF policy accepts it and its host resolves to allowed
    addresses; UNSAFE_URL (with ``reason``) otherwise."""
    url = url.strip()
    if not url:
        raise InputError("MISSING_FIELD", "Missing required field: url", field="url")
    if len(url) > MAX_URL:
        raise InputError("INVALID_REQUEST", f"url is longer than {MAX_URL} characters", field="url")
    try:
        await netguard.resolve(netguard.check_url(url, guard), guard, resolver)
    except netguard.UnsafeURL as exc:
        raise _unsafe(exc.reason) from None
    except netguard.UnresolvableHost as exc:
        raise _unsafe(f"{exc.host} cannot be resolved: {exc.problem}") from None
    return url


def _unsafe(reason: str) -> InputError:
    return InputError(
        "UNSAFE_URL", f"This webhook URL is refused: {reason}", field="url", reason=reason
    )


async def check_owned_brands(session: AsyncSession, caller: Caller) -> None:
    """BRAND_NOT_AUTHORIZED when a brand-restricted caller reaches a brand it does not own: the
    events of a brand go to its owner's subscriptions (a collaborator's would stay silent)."""
    if not caller.brand_ids:
        return
    owned = set(
        await session.scalars(
            select(Brand.id).where(
                Brand.id.in_(list(caller.brand_ids)), Brand.owner_id == caller.user_id
            )
        )
    )
    foreign = sorted(set(caller.brand_ids) - owned)
    if foreign:
        raise InputError(
            "BRAND_NOT_AUTHORIZED",
            "Webhooks deliver the events of brands you own; this token reaches brand(s) "
            f"{', '.join(foreign)} of another owner: ask the owner to subscribe",
            brand_ids=foreign,
        )


# -- subscriptions ------------------------------------------------------------------------------


async def create(
    session: AsyncSession,
    caller: Caller,
    *,
    url: str,
    events: Sequence[str],
    now: datetime,
    guard: netguard.Policy,
    resolver: netguard.Resolver | None = None,
) -> tuple[WebhookSubscription, str]:
    """A new enabled subscription and its secret (the only time it is returned in full)."""
    names = check_events(events)
    url = await check_url(url, guard, resolver)
    secret = signing.new_secret()
    sub = WebhookSubscription(
        id=ids.new_id(now.timestamp()),
        user_id=caller.user_id,
        url=url,
        events=names,
        brand_ids=list(caller.brand_ids),
        secret=secret,
        enabled=True,
        consecutive_failures=0,
        created_at=now,
        updated_at=now,
    )
    session.add(sub)
    await session.flush()
    return sub, secret


async def get(
    session: AsyncSession, caller: Caller, webhook_id: str, *, lock: bool = False
) -> WebhookSubscription:
    stmt: Any = select(WebhookSubscription).where(WebhookSubscription.id == webhook_id)
    if lock and session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    sub: WebhookSubscription | None = (await session.scalars(stmt)).one_or_none()
    if sub is None or not caller.sees(sub):
        raise NotFoundError(f"No webhook {webhook_id!r}")
    return sub


async def get_by_id(
    session: AsyncSession, webhook_id: str, *, lock: bool = False
) -> WebhookSubscription:
    """Any user's subscription (the operator's CLI); NOT_FOUND when there is none."""
    stmt: Any = select(WebhookSubscription).where(WebhookSubscription.id == webhook_id)
    if lock and session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    sub: WebhookSubscription | None = (await session.scalars(stmt)).one_or_none()
    if sub is None:
        raise NotFoundError(f"No webhook {webhook_id!r}")
    return sub


async def all_subscriptions(
    session: AsyncSession, user_id: str | None = None
) -> list[WebhookSubscription]:
    """Every subscription (of one user), in id order (the operator's CLI)."""
    stmt: Any = select(WebhookSubscription).order_by(WebhookSubscription.id)
    if user_id is not None:
        stmt = stmt.where(WebhookSubscription.user_id == user_id)
    return list(await session.scalars(stmt))


async def list_subscriptions(
    session: AsyncSession, caller: Caller, *, after: str | None = None, limit: int = 100
) -> list[WebhookSubscription]:
    """The caller's subscriptions in id (creation) order, ``limit`` at most after ``after``."""
    stmt: Any = (
        select(WebhookSubscription)
        .where(WebhookSubscription.user_id == caller.user_id)
        .order_by(WebhookSubscription.id)
    )
    if after is not None:
        stmt = stmt.where(WebhookSubscription.id > after)
    found: list[WebhookSubscription] = []
    for sub in await session.scalars(stmt):
        if caller.sees(sub):
            found.append(sub)
            if len(found) >= limit:
                break
    return found


async def update(
    session: AsyncSession,
    sub: WebhookSubscription,
    *,
    now: datetime,
    guard: netguard.Policy,
    url: str | None = None,
    events: Sequence[str] | None = None,
    enabled: bool | None = None,
    resolver: netguard.Resolver | None = None,
) -> WebhookSubscription:
    """Change the URL, the events, or enable / disable. Enabling clears the failure count;
    disabling fails the pending deliveries (they can be redelivered later)."""
    names = check_events(events) if events is not None else None
    checked = await check_url(url, guard, resolver) if url is not None else None
    if checked is not None:
        sub.url = checked
    if names is not None:
        sub.events = names
    if enabled is True and not sub.enabled:
        sub.enabled, sub.disabled_reason, sub.disabled_at = True, None, None
        sub.consecutive_failures = 0
    elif enabled is False and sub.enabled:
        sub.enabled, sub.disabled_reason, sub.disabled_at = False, policy.MANUAL, now
        await session.flush()
        await results.fail_pending(await session.connection(), sub.id, results.DISABLED, now)
    sub.updated_at = now
    await session.flush()
    return sub


async def remove(session: AsyncSession, sub: WebhookSubscription) -> None:
    """Delete a subscription with its delivery log."""
    deliveries = select(WebhookDelivery.id).where(WebhookDelivery.subscription_id == sub.id)
    await session.execute(delete(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(deliveries)))
    await session.execute(delete(WebhookDelivery).where(WebhookDelivery.subscription_id == sub.id))
    await session.delete(sub)
    await session.flush()


def rotate(sub: WebhookSubscription, now: datetime, grace: timedelta) -> str:
    """A new secret; the current one keeps signing for ``grace`` (an older previous one, from a
    rotation still in its window, stops at once)."""
    secret = signing.new_secret()
    sub.previous_secret, sub.previous_secret_expires_at = sub.secret, now + grace
    sub.secret, sub.updated_at = secret, now
    return secret


# -- deliveries ---------------------------------------------------------------------------------


def _require_enabled(sub: WebhookSubscription) -> None:
    if not sub.enabled:
        raise InputError(
            "WEBHOOK_DISABLED",
            f"Webhook {sub.id} is disabled ({sub.disabled_reason}); enable it first "
            "(PATCH /webhooks/{id} with enabled=true)",
        )


async def ping(session: AsyncSession, sub: WebhookSubscription, now: datetime) -> WebhookDelivery:
    """Queue a ``webhook.test`` delivery to this subscription only (tried once, due now)."""
    _require_enabled(sub)
    body = fanout.body_text(
        {
            "event": policy.TEST_EVENT,
            "created_at": timefmt.iso(now),
            "data": {
                "userId": sub.user_id,
                "brandId": None,
                "webhook": {"id": sub.id, "url": sub.url},
                "message": "A test delivery from postd: your endpoint is reachable.",
            },
        }
    )
    row = fanout.delivery_row(
        subscription_id=sub.id,
        user_id=sub.user_id,
        event_id=None,
        event=policy.TEST_EVENT,
        body=body,
        now=now,
    )
    delivery = WebhookDelivery(**row)
    session.add(delivery)
    await session.flush()
    return delivery


async def redeliver(
    session: AsyncSession, sub: WebhookSubscription, delivery_id: str, now: datetime
) -> WebhookDelivery:
    """Send a delivery again, due now, same ``webhook-id`` and body: a finished one starts a
    new retry cycle; a pending one is only brought forward."""
    _require_enabled(sub)
    stmt: Any = select(WebhookDelivery).where(
        WebhookDelivery.id == delivery_id, WebhookDelivery.subscription_id == sub.id
    )
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    delivery: WebhookDelivery | None = (await session.scalars(stmt)).one_or_none()
    if delivery is None:
        raise NotFoundError(f"No delivery {delivery_id!r} of webhook {sub.id}")
    if delivery.status == policy.DELIVERING:
        raise InputError(
            "DELIVERY_IN_PROGRESS", f"Delivery {delivery_id} is being attempted right now"
        )
    if delivery.status != policy.PENDING:
        delivery.cycle_start = delivery.attempts
    delivery.status, delivery.next_attempt_at, delivery.updated_at = policy.PENDING, now, now
    await session.flush()
    return delivery


async def list_deliveries(
    session: AsyncSession,
    sub: WebhookSubscription,
    *,
    after: tuple[datetime, str] | None = None,
    limit: int = 50,
    status: str | None = None,
    event: str | None = None,
) -> tuple[list[WebhookDelivery], dict[str, list[WebhookAttempt]]]:
    """A subscription's deliveries, newest first, with their attempt logs."""
    stmt: Any = (
        select(WebhookDelivery)
        .where(WebhookDelivery.subscription_id == sub.id)
        .order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())
        .limit(limit)
    )
    if status is not None:
        stmt = stmt.where(WebhookDelivery.status == status)
    if event is not None:
        stmt = stmt.where(WebhookDelivery.event == event)
    if after is not None:
        at, last = after
        stmt = stmt.where(
            or_(
                WebhookDelivery.created_at < at,
                and_(WebhookDelivery.created_at == at, WebhookDelivery.id < last),
            )
        )
    rows = list(await session.scalars(stmt))
    logs: dict[str, list[WebhookAttempt]] = {d.id: [] for d in rows}
    if rows:
        attempts = await session.scalars(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id.in_(list(logs)))
            .order_by(WebhookAttempt.delivery_id, WebhookAttempt.number, WebhookAttempt.id)
        )
        for attempt in attempts:
            logs[attempt.delivery_id].append(attempt)
    return rows, logs


async def attempts_of(session: AsyncSession, delivery_id: str) -> list[WebhookAttempt]:
    return list(
        await session.scalars(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id == delivery_id)
            .order_by(WebhookAttempt.number, WebhookAttempt.id)
        )
    )
