"""``/api/v1/webhooks``: subscriptions, secret rotation, the delivery log, redelivery, test pings.

Scopes: ``read:webhooks`` to list and read (subscriptions and deliveries), ``write:webhooks`` for
everything that changes or sends. The secret is in the answer of create and rotate-secret only.
A subscription receives the events of the brands its user owns (narrowed to the token's brands
when the token is brand-restricted); see :mod:`daemon.events.service`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response

from daemon import netguard
from daemon.api import idempotency, queries, schemas
from daemon.api.deps import Principal, require
from daemon.api.errors import ApiError
from daemon.api.routers import error_responses
from daemon.api.routers.brands import CURSOR
from daemon.events import service, views

router = APIRouter(tags=["webhooks"])
ReadWebhooks = Annotated[Principal, Depends(require("read:webhooks"))]
WriteWebhooks = Annotated[Principal, Depends(require("write:webhooks"))]
LIMIT = Query(default=50, ge=1, le=100, description="At most this many items (1-100)")
DeliveryStatus = Literal["pending", "delivering", "succeeded", "failed"]
STATUS = Query(default=None, description="Only deliveries in this status")
EVENT = Query(default=None, description="Only deliveries of this event")


def caller(principal: Principal) -> service.Caller:
    return service.Caller(principal.user_id, tuple(principal.restricted_brand_ids))


def guard(request: Request) -> netguard.Policy:
    return netguard.Policy.from_settings(queries.postd(request).settings.netguard)


@router.post(
    "/webhooks",
    status_code=201,
    response_model=schemas.WebhookOne,
    response_model_exclude_unset=True,
    responses=error_responses(),
    summary="Subscribe a URL to events (the answer holds the secret, once)",
)
async def create(request: Request, body: schemas.WebhookBody, principal: WriteWebhooks) -> Response:
    """The 201 is stored under the Idempotency-Key in the subscription's own transaction: a
    retry after a crash replays it (with the secret) instead of subscribing the URL twice."""
    app = queries.postd(request)
    who = caller(principal)
    async with app.sessions() as session, session.begin():
        await service.check_owned_brands(session, who)
        sub, secret = await service.create(
            session,
            who,
            url=body.url,
            events=body.events,
            now=app.clock.now(),
            guard=guard(request),
        )
        one = schemas.WebhookOne.model_validate({"webhook": views.webhook_dict(sub, secret)})
        json = one.model_dump_json(exclude_unset=True)
        response = Response(json, 201, media_type="application/json")
        slot = idempotency.current()
        await idempotency.keep_in(await session.connection(), slot, response)
    idempotency.kept(slot)
    return response


@router.get(
    "/webhooks",
    response_model=schemas.WebhookList,
    response_model_exclude_unset=True,
    responses=error_responses(),
    summary="The token's webhook subscriptions",
)
async def list_webhooks(
    request: Request, principal: ReadWebhooks, cursor: str | None = CURSOR, limit: int = LIMIT
) -> dict[str, Any]:
    after = queries.decode_cursor(cursor, 1)
    async with queries.read_session(queries.postd(request)) as session:
        subs = await service.list_subscriptions(
            session, caller(principal), after=after[0] if after else None, limit=limit + 1
        )
    subs, has_more = queries.split_page(subs, limit)
    return {
        "webhooks": [views.webhook_dict(s) for s in subs],
        "next_cursor": queries.encode_cursor(subs[-1].id) if has_more else None,
        "has_more": has_more,
    }


@router.get(
    "/webhooks/{webhook_id}",
    response_model=schemas.WebhookOne,
    response_model_exclude_unset=True,
    responses=error_responses(),
    summary="One subscription (disabled ones say why)",
)
async def get_webhook(request: Request, webhook_id: str, principal: ReadWebhooks) -> dict[str, Any]:
    async with queries.read_session(queries.postd(request)) as session:
        sub = await service.get(session, caller(principal), webhook_id)
    return {"webhook": views.webhook_dict(sub)}


@router.patch(
    "/webhooks/{webhook_id}",
    response_model=schemas.WebhookOne,
    response_model_exclude_unset=True,
    responses=error_responses(),
    summary="Change the URL or events; enable or disable",
)
async def patch_webhook(
    request: Request, webhook_id: str, body: schemas.WebhookPatchBody, principal: WriteWebhooks
) -> dict[str, Any]:
    if body.url is None and body.events is None and body.enabled is None:
        raise ApiError(
            "MISSING_FIELD", "Send at least one of url, events, enabled", field="enabled"
        )
    app = queries.postd(request)
    async with app.sessions() as session, session.begin():
        sub = await service.get(session, caller(principal), webhook_id, lock=True)
        await service.update(
            session,
            sub,
            now=app.clock.now(),
            guard=guard(request),
            url=body.url,
            events=body.events,
            enabled=body.enabled,
        )
    return {"webhook": views.webhook_dict(sub)}


@router.delete(
    "/webhooks/{webhook_id}",
    response_model=schemas.WebhookDeleted,
    responses=error_responses(),
    summary="Delete a subscription and its delivery log",
)
async def delete_webhook(
    request: Request, webhook_id: str, principal: WriteWebhooks
) -> dict[str, Any]:
    app = queries.postd(request)
    async with app.sessions() as session, session.begin():
        sub = await service.get(session, caller(principal), webhook_id, lock=True)
        await service.remove(session, sub)
    return {"success": True, "id": webhook_id}


@router.post(
    "/webhooks/{webhook_id}/rotate-secret",
    response_model=schemas.WebhookOne,
    response_model_exclude_unset=True,
    responses=error_responses(),
    summary="New secret; the previous one keeps signing for 24 h",
)
async def rotate_secret(
    request: Request, webhook_id: str, principal: WriteWebhooks
) -> dict[str, Any]:
    app = queries.postd(request)
    grace = timedelta(hours=app.settings.webhooks.rotation_grace_hours)
    async with app.sessions() as session, session.begin():
        sub = await service.get(session, caller(principal), webhook_id, lock=True)
        secret = service.rotate(sub, app.clock.now(), grace)
    return {"webhook": views.webhook_dict(sub, secret)}


@router.post(
    "/webhooks/{webhook_id}/test",
    status_code=202,
    response_model=schemas.DeliveryOne,
    responses=error_responses(409),
    summary="Send a webhook.test event to this subscription only",
)
async def test_ping(request: Request, webhook_id: str, principal: WriteWebhooks) -> dict[str, Any]:
    app = queries.postd(request)
    now = app.clock.now()
    async with app.sessions() as session, session.begin():
        sub = await service.get(session, caller(principal), webhook_id)
        delivery = await service.ping(session, sub, now)
    app.deliverer.notify_due(now)
    return {"delivery": views.delivery_dict(delivery, [])}


@router.get(
    "/webhooks/{webhook_id}/deliveries",
    response_model=schemas.DeliveryList,
    responses=error_responses(),
    summary="The delivery log (30 days), newest first, with every attempt",
)
async def list_deliveries(
    request: Request,
    webhook_id: str,
    principal: ReadWebhooks,
    status: DeliveryStatus | None = STATUS,
    event: str | None = EVENT,
    cursor: str | None = CURSOR,
    limit: int = LIMIT,
) -> dict[str, Any]:
    after = queries.decode_cursor(cursor, 2)
    position = (queries.cursor_instant(after[0]), after[1]) if after else None
    async with queries.read_session(queries.postd(request)) as session:
        sub = await service.get(session, caller(principal), webhook_id)
        rows, logs = await service.list_deliveries(
            session, sub, after=position, limit=limit + 1, status=status, event=event
        )
    rows, has_more = queries.split_page(rows, limit)
    last = rows[-1] if has_more else None
    return {
        "deliveries": [views.delivery_dict(d, logs[d.id]) for d in rows],
        "next_cursor": queries.encode_cursor(last.created_at.isoformat(), last.id)
        if last
        else None,
        "has_more": has_more,
    }


@router.post(
    "/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver",
    status_code=202,
    response_model=schemas.DeliveryOne,
    responses=error_responses(409),
    summary="Send a delivery again now (same webhook-id and body)",
)
async def redeliver(
    request: Request, webhook_id: str, delivery_id: str, principal: WriteWebhooks
) -> dict[str, Any]:
    app = queries.postd(request)
    now = app.clock.now()
    async with app.sessions() as session, session.begin():
        sub = await service.get(session, caller(principal), webhook_id)
        delivery = await service.redeliver(session, sub, delivery_id, now)
        attempts = await service.attempts_of(session, delivery.id)
    app.deliverer.notify_due(now)
    return {"delivery": views.delivery_dict(delivery, attempts)}
