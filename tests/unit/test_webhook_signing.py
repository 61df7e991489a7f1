"""Webhook secrets and signatures: what the official SDK's verifier and Standard Webhooks
verifiers accept, during a rotation window and after it."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from hypothesis import given
from hypothesis import strategies as st
from outreply.webhooks import construct_event, verify_webhook_signature
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from daemon.events import signing

NOW = datetime(2026, 5, 12, 14, 30, 7, 250_000, tzinfo=UTC)
BODY = b'{"event":"post.published","created_at":"2026-05-12T14:30:07.250Z","data":{"x":"\xc3\xa9"}}'


def _headers(*secrets: str, body: bytes = BODY, now: datetime = NOW) -> dict[str, str]:
    return signing.headers(secrets, msg_id="msg_abc", now=now, body=body, user_agent="postd/t")


def _standard_ok(secret: str, headers: dict[str, str], body: bytes = BODY) -> bool:
    with time_machine.travel(NOW, tick=False):
        try:
            Webhook(secret).verify(body, headers)
        except WebhookVerificationError:
            return False
    return True


def test_secret_is_whsec_base64_of_32_random_bytes() -> None:
    """whsec_ + standard base64 of 32 bytes; every secret is new."""
    made = {signing.new_secret() for _ in range(50)}
    assert len(made) == 50
    for secret in made:
        assert re.fullmatch(r"whsec_[A-Za-z0-9+/]{43}=", secret)
        assert len(signing.key_bytes(secret)) == 32
        assert base64.b64decode(secret[6:]) == signing.key_bytes(secret)


def test_both_verifiers_accept_one_secret() -> None:
    """The SDK verifier (key = the string) and standardwebhooks (key = decoded bytes) accept."""
    secret = signing.new_secret()
    headers = _headers(secret)
    assert verify_webhook_signature(BODY, headers["X-OutReply-Signature"], secret)
    assert construct_event(BODY, headers["X-OutReply-Signature"], secret)["event"] == (
        "post.published"
    )
    assert _standard_ok(secret, headers)
    assert headers["webhook-timestamp"] == str(int(NOW.timestamp()))
    assert headers["webhook-id"] == "msg_abc"
    assert headers["User-Agent"] == "postd/t"
    assert headers["Content-Type"] == "application/json"


def test_a_wrong_secret_or_a_changed_body_fails_both() -> None:
    """Another secret, or one changed byte of the body, is refused by both verifiers."""
    secret, other = signing.new_secret(), signing.new_secret()
    headers = _headers(secret)
    assert not verify_webhook_signature(BODY, headers["X-OutReply-Signature"], other)
    assert not _standard_ok(other, headers)
    tampered = BODY.replace(b"published", b"failed!!!")
    assert not verify_webhook_signature(tampered, headers["X-OutReply-Signature"], secret)
    assert not _standard_ok(secret, headers, tampered)


def test_rotation_window_signs_with_both_in_each_scheme() -> None:
    """During rotation: sha256=... comma-separated, v1,... space-separated; both secrets pass."""
    old, new = signing.new_secret(), signing.new_secret()
    during = signing.signing_secrets(new, old, NOW + timedelta(hours=24), NOW)
    assert during == (new, old)
    headers = _headers(*during)
    sdk = headers["X-OutReply-Signature"].split(",")
    standard = headers["webhook-signature"].split(" ")
    assert len(sdk) == 2 and all(s.startswith("sha256=") for s in sdk)
    assert len(standard) == 2 and all(s.startswith("v1,") for s in standard)
    for secret in (old, new):
        assert verify_webhook_signature(BODY, headers["X-OutReply-Signature"], secret)
        assert _standard_ok(secret, headers)


@pytest.mark.parametrize("after", [timedelta(0), timedelta(seconds=1), timedelta(days=3)])
def test_after_the_window_only_the_new_secret_signs(after: timedelta) -> None:
    """From the expiry instant on, the previous secret no longer verifies anywhere."""
    old, new = signing.new_secret(), signing.new_secret()
    expires = NOW - after
    only = signing.signing_secrets(new, old, expires, NOW)
    assert only == (new,)
    headers = _headers(*only)
    assert verify_webhook_signature(BODY, headers["X-OutReply-Signature"], new)
    assert _standard_ok(new, headers)
    assert not verify_webhook_signature(BODY, headers["X-OutReply-Signature"], old)
    assert not _standard_ok(old, headers)


def test_no_previous_secret_means_one_signature() -> None:
    """Without a rotation, each header carries exactly one signature."""
    assert signing.signing_secrets("whsec_x", None, None, NOW) == ("whsec_x",)


@given(body=st.binary(max_size=300))
def test_any_body_verifies_with_the_sdk(body: bytes) -> None:
    """Whatever the bytes, the SDK scheme is HMAC-SHA256 over exactly them, keyed by the string."""
    secret = "whsec_" + base64.b64encode(bytes(range(32))).decode()
    header = signing.sdk_signature(secret, body)
    assert verify_webhook_signature(body, header, secret)
