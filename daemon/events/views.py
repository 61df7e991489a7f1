"""Webhook subscriptions and deliveries as the API and the CLI show them (never a secret, except
the one just made)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from daemon import timefmt
from daemon.events import policy
from daemon.store.models import WebhookAttempt, WebhookDelivery, WebhookSubscription


def webhook_dict(sub: WebhookSubscription, secret: str | None = None) -> dict[str, Any]:
    """A subscription as the API and the CLI show it; ``secret`` only when just made."""
    body: dict[str, Any] = {
        "id": sub.id,
        "url": sub.url,
        "events": list(sub.events or ()),
        "enabled": sub.enabled,
        "status": "enabled" if sub.enabled else "disabled",
        "disabled_reason": sub.disabled_reason,
        "disabled_at": timefmt.iso(sub.disabled_at),
        "consecutive_failures": sub.consecutive_failures,
        "brand_ids": list(sub.brand_ids or ()),
        "previous_secret_expires_at": timefmt.iso(sub.previous_secret_expires_at),
        "created_at": timefmt.iso(sub.created_at),
        "updated_at": timefmt.iso(sub.updated_at),
    }
    if secret is not None:
        body["secret"] = secret
    return body


def delivery_dict(d: WebhookDelivery, attempts: Sequence[WebhookAttempt]) -> dict[str, Any]:
    return {
        "id": d.id,
        "webhook_id": d.subscription_id,
        "event": d.event,
        "event_id": d.event_id,
        "status": d.status,
        "attempts": d.attempts,
        "last_status_code": d.last_status_code,
        "last_error": d.last_error,
        "last_attempt_at": timefmt.iso(d.last_attempt_at),
        "next_attempt_at": timefmt.iso(d.next_attempt_at) if d.status == policy.PENDING else None,
        "created_at": timefmt.iso(d.created_at),
        "attempt_log": [
            {
                "attempt": a.number,
                "started_at": timefmt.iso(a.started_at),
                "status_code": a.status_code,
                "duration_ms": a.duration_ms,
                "error": a.error,
            }
            for a in attempts
        ],
    }
