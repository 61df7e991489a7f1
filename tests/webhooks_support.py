"""Helpers for the webhook tests: settings that let a loopback receiver in, an owner with a brand
and a page, subscriptions, synthetic outbox events, and driving the deliverer through time."""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select

from daemon import config, ids, lifecycle, services, tokens
from daemon.events import service
from daemon.store.models import OutboxEvent, WebhookAttempt, WebhookDelivery, WebhookSubscription
from daemon.timefmt import iso
from tests.conftest import make_settings
from tests.live_server import ROOMY_TIER

ALL_EVENTS = ("post.published", "post.failed", "account.quota.warning")
LOOPBACK = {"allow_loopback": True, "allow_http": True}


def webhook_settings(tmp_path: Path, db_url: str, **sections: dict[str, Any]) -> config.Settings:
    """Test settings with the loopback receiver allowed and limits out of the way."""
    sections.setdefault("netguard", LOOPBACK)
    sections.setdefault("tiers", {tier: ROOMY_TIER for tier in ("free", "pro", "elite")})
    sections.setdefault(
        "guardrails",
        {"min_gap_seconds": 0, "sandbox": {"per_hour": 100_000, "per_24h": 1_000_000}},
    )
    return make_settings(tmp_path, db_url, **sections)


@dataclass
class Owner:
    user_id: str
    brand_id: str
    page_id: str


async def owner(app: Any, email: str = "hooks@example.com", tier: str = "pro") -> Owner:
    """A user owning one brand with one sandbox page."""
    now = app.clock.now()
    async with app.sessions() as session, session.begin():
        user, _ = await tokens.add_user(session, email, now, tier=tier)
        brand = await services.add_brand(session, f"brand of {email}", now, owner_id=user.id)
        await session.flush()
        page = await services.add_page(
            session, brand_id=brand.id, platform="sandbox", name="Main", now=now
        )
        await session.flush()
        return Owner(user.id, brand.id, page.id)


async def subscribe(
    app: Any,
    user_id: str,
    url: str,
    events: tuple[str, ...] = ALL_EVENTS,
    brand_ids: tuple[str, ...] = (),
) -> tuple[str, str]:
    """A subscription made through the service; (its id, its secret)."""
    async with app.sessions() as session, session.begin():
        sub, secret = await service.create(
            session,
            service.Caller(user_id, brand_ids),
            url=url,
            events=events,
            now=app.clock.now(),
            guard=_guard(app),
        )
        return sub.id, secret


def _guard(app: Any) -> Any:
    from daemon import netguard

    return netguard.Policy.from_settings(app.settings.netguard)


async def emit(
    app: Any,
    who: Owner,
    n: int = 1,
    *,
    event: str = "post.published",
    brand_id: str | None = None,
) -> list[str]:
    """``n`` outbox events as the dispatcher writes them (the post ids in their payloads)."""
    now = app.clock.now()
    brand = brand_id or who.brand_id
    rows, post_ids = [], []
    for _ in range(n):
        post_id = ids.new_id(now.timestamp())
        post_ids.append(post_id)
        view = lifecycle.PostView(
            id=post_id,
            page_id=who.page_id,
            brand_id=brand,
            platform="sandbox",
            state=lifecycle.PUBLISHED if event == "post.published" else lifecycle.FAILED,
            message=f"synthetic {post_id}",
            media=[],
            first_comment=None,
            scheduled_at=now,
            created_at=now,
            published_at=now,
            remote_id=f"remote-{post_id}",
        )
        rows.append(
            {
                "event": event,
                "post_id": post_id,
                "user_id": who.user_id,
                "brand_id": brand,
                "created_at": now,
                "payload": lifecycle.event_payload(event, view, who.user_id, now),
            }
        )
    async with app.engine.begin() as conn:
        await conn.execute(insert(OutboxEvent), rows)
    return post_ids


async def settle(app: Any, *, horizon: timedelta | None = None, rounds: int = 10_000) -> int:
    """Drive the deliverer with its FakeClock until nothing is pending (or the next wake lies
    beyond ``now + horizon``); returns the rounds it took."""
    limit = None if horizon is None else app.clock.now() + horizon
    for n in range(1, rounds + 1):
        when = await app.deliverer.drain()
        if when is None or (limit is not None and when > limit):
            return n
        app.clock.set(when)
    raise AssertionError("the deliverer did not settle")


async def subscription(app: Any, sub_id: str) -> WebhookSubscription:
    async with app.sessions() as session:
        sub = await session.get(WebhookSubscription, sub_id)
        assert sub is not None
        return sub


async def deliveries(app: Any, sub_id: str | None = None) -> list[WebhookDelivery]:
    async with app.sessions() as session:
        stmt = select(WebhookDelivery).order_by(WebhookDelivery.created_at, WebhookDelivery.id)
        if sub_id is not None:
            stmt = stmt.where(WebhookDelivery.subscription_id == sub_id)
        return list(await session.scalars(stmt))


async def attempts(app: Any, delivery_id: str) -> list[WebhookAttempt]:
    async with app.sessions() as session:
        rows = await session.scalars(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id == delivery_id)
            .order_by(WebhookAttempt.number)
        )
        return list(rows)


def standard_signature_ok(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Standard Webhooks' check, without its clock tolerance (for deliveries in fake time)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return f"v1,{expected}" in headers["webhook-signature"].split(" ")


def at(value: datetime) -> str:
    return str(iso(value))
