"""Webhook secrets and signatures, pure: no I/O, no clock (callers pass ``now``).

A secret is ``whsec_`` + standard base64 of 32 random bytes. The one string a user stores works
with both verifiers a receiver may use:

- the OutReply SDK (``outreply.webhooks.verify_webhook_signature``) computes
  ``HMAC-SHA256(key=secret.encode("utf-8"), body)`` and compares hex digests with each entry of
  ``X-OutReply-Signature: sha256=<hex>[,sha256=<hex>]``;
- Standard Webhooks verifiers strip ``whsec_``, base64-decode the rest as the key, and check
  ``webhook-signature: v1,<base64>[ v1,<base64>]`` over ``"{id}.{timestamp}.{body}"`` (the
  ``webhook-id`` and ``webhook-timestamp`` headers).

During a rotation window both secrets sign: the new one first, then the previous one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Sequence
from datetime import datetime

PREFIX = "whsec_"
KEY_BYTES = 32


def new_secret() -> str:
    """A fresh signing secret (shown to the user once)."""
    return PREFIX + base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")


def key_bytes(secret: str) -> bytes:
    """The Standard Webhooks key of a secret: the decoded bytes after ``whsec_``."""
    encoded = secret.removeprefix(PREFIX)
    return base64.b64decode(encoded + "=" * (-len(encoded) % 4))


def sdk_signature(secret: str, body: bytes) -> str:
    """``sha256=<hex>``: the OutReply scheme, keyed with the secret string's UTF-8 bytes."""
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def standard_signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64>``: the Standard Webhooks scheme, keyed with the decoded secret."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signing_secrets(
    secret: str, previous: str | None, previous_expires_at: datetime | None, now: datetime
) -> tuple[str, ...]:
    """The secrets that sign a delivery at ``now``: the current one, plus the previous one while
    its rotation window lasts."""
    if previous and previous_expires_at is not None and now < previous_expires_at:
        return (secret, previous)
    return (secret,)


def headers(
    signing: Sequence[str],
    *,
    msg_id: str,
    now: datetime,
    body: bytes,
    user_agent: str,
) -> dict[str, str]:
    """Every header of one delivery attempt (``webhook-timestamp`` is ``now`` in whole
    seconds; the signatures cover exactly ``body``)."""
    timestamp = int(now.timestamp())
    return {
        "Content-Type": "application/json",
        "User-Agent": user_agent,
        "X-OutReply-Signature": ",".join(sdk_signature(s, body) for s in signing),
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(
            standard_signature(s, msg_id, timestamp, body) for s in signing
        ),
    }
