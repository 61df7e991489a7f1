"""Webhooks on the real stack (gate, idempotency, uvicorn, the deliverer's own pump): the official
SDK's webhook resource, a test ping and a publish reaching a loopback receiver in real time."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
from outreply.webhooks import verify_webhook_signature
from standardwebhooks import Webhook

from tests.live_server import Live, needs_stack, serve
from tests.webhook_receiver import Receiver, running
from tests.webhooks_support import LOOPBACK

outreply = pytest.importorskip("outreply")
errors = pytest.importorskip("outreply.errors")

pytestmark = needs_stack
EVENTS = ["post.published", "post.failed"]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    yield from serve(tmp_path_factory.mktemp("hooks"), netguard=LOOPBACK)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from running()


def client(live: Live, token: str | None = None) -> object:
    return outreply.OutReply(token or live.token, base_url=live.base_url, max_retries=0)


def test_sdk_create_list_retrieve_delete(live: Live, receiver: Receiver) -> None:
    """webhooks.create returns the secret once; list/retrieve show the subscription without it;
    delete removes it (retrieve is then a 404)."""
    with client(live) as sdk:
        made = sdk.webhooks.create(url=receiver.url, events=EVENTS)["webhook"]
        listed = sdk.webhooks.list()["webhooks"]
        one = sdk.webhooks.retrieve(made["id"])["webhook"]
        assert sdk.webhooks.delete(made["id"]) is None
        with pytest.raises(errors.OutReplyError) as gone:
            sdk.webhooks.retrieve(made["id"])
    assert made["secret"].startswith("whsec_") and made["events"] == EVENTS
    assert made["id"] in [h["id"] for h in listed]
    assert "secret" not in one and one["url"] == receiver.url
    assert gone.value.status == 404 and gone.value.code == "NOT_FOUND"


def test_ping_and_publish_arrive_verified_in_real_time(live: Live, receiver: Receiver) -> None:
    """The daemon, running on its own: a test ping and a published post reach the receiver,
    verified by the SDK's verifier and by standardwebhooks (real clock, 5-minute tolerance)."""
    token = live.new_token(email="realtime@example.com")
    with client(live, token) as sdk:
        secret = sdk.webhooks.create(url=receiver.url, events=EVENTS)["webhook"]["secret"]
        hook_id = sdk.webhooks.list()["webhooks"][0]["id"]
        ping = httpx.post(
            f"{live.base_url}/webhooks/{hook_id}/test",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert ping.status_code == 202, ping.text
        assert receiver.wait_until(1, 15), "the ping did not arrive"
        page = sdk.pages.list()["pages"][0]["id"]
        made = sdk.posts.publish(page_id=page, message="webhooks, live")
        assert receiver.wait_until(2, 15), "post.published did not arrive"
    ping_item, published = receiver.received[:2]
    assert ping_item.event == "webhook.test"
    assert published.event == "post.published"
    assert published.payload["data"]["post"]["id"] == made["id"]
    for item in (ping_item, published):
        assert verify_webhook_signature(item.body, item.headers["x-outreply-signature"], secret)
        assert Webhook(secret).verify(item.body, item.headers)["event"] == item.event
        sent = int(item.headers["webhook-timestamp"])
        assert abs(sent - datetime.now(UTC).timestamp()) < 60


def test_create_is_idempotent_and_sandbox_tokens_cannot_subscribe(
    live: Live, receiver: Receiver
) -> None:
    """One Idempotency-Key, two POSTs: one subscription, the same answer replayed (secret
    included). A sandbox token has no write:webhooks: 403 MISSING_SCOPE."""
    token = live.new_token(email="idem@example.com")
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": "hook-key-1"}
    body = {"url": receiver.url, "events": EVENTS}
    first = httpx.post(f"{live.base_url}/webhooks", json=body, headers=headers, timeout=10)
    again = httpx.post(f"{live.base_url}/webhooks", json=body, headers=headers, timeout=10)
    assert first.status_code == again.status_code == 201
    assert again.headers.get("idempotency-replayed") == "true"
    assert again.json() == first.json()
    with client(live, token) as sdk:
        assert len(sdk.webhooks.list()["webhooks"]) == 1

    async def sandbox_token() -> str:
        from daemon import tokens

        async with live.app.sessions() as session, session.begin():
            _, raw = await tokens.add_user(
                session, "sandbox-hooks@example.com", live.app.clock.now()
            )
        return str(raw)

    sandbox = live.run(sandbox_token)
    with client(live, sandbox) as sdk, pytest.raises(errors.OutReplyScopeError) as refused:
        sdk.webhooks.create(url=receiver.url, events=EVENTS)
    assert refused.value.code == "MISSING_SCOPE"
