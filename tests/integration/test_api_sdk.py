"""The official ``outreply`` SDK from PyPI against a real postd, only ``base_url`` changed."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.live_server import Live, needs_stack, serve

outreply = pytest.importorskip("outreply")
errors = pytest.importorskip("outreply.errors")

pytestmark = needs_stack


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    yield from serve(tmp_path_factory.mktemp("sdk"))


def client(live: Live, token: str | None = None) -> object:
    return outreply.OutReply(token or live.token, base_url=live.base_url, max_retries=0)


def at(minutes: float) -> str:
    return (datetime.now(UTC) + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_account_and_pages(live: Live) -> None:
    """account.retrieve() and pages.list() return the document's shapes."""
    with client(live) as sdk:
        account = sdk.account.retrieve()
        pages = sdk.pages.list()
        brands = sdk.brands.list()
    assert account["user"]["email"] == "you@example.com" and account["tier"] == "elite"
    assert account["quota"]["publish_guardrails"]["perPage"]["IG"] == {"perHour": 8, "per24h": 30}
    assert {p["id"] for p in pages["pages"]} == set(live.pages)
    assert [b["id"] for b in brands["brands"]] == [live.brand_id]


def test_schedule_list_retrieve_cancel(live: Live) -> None:
    """schedule -> list_scheduled (paged) -> retrieve_scheduled -> cancel_scheduled -> 404."""
    page = live.pages[1]
    with client(live) as sdk:
        made = [
            sdk.posts.schedule(
                page_id=page,
                message=f"Hello from the Python SDK {n}",
                scheduled_at=at(30 + 2 * n),
                link="https://acme.example" if n == 0 else None,
                first_comment="first!",
            )["scheduled_post"]
            for n in range(3)
        ]
        first = sdk.posts.list_scheduled(page_id=page, limit=2)
        rest = sdk.posts.list_scheduled(page_id=page, limit=2, cursor=first["next_cursor"])
        one = sdk.posts.retrieve_scheduled(made[0]["id"])
        assert sdk.posts.cancel_scheduled(made[0]["id"]) is None
        with pytest.raises(errors.OutReplyError) as gone:
            sdk.posts.retrieve_scheduled("000000000000000000000000")
        with pytest.raises(errors.OutReplyError) as again:
            sdk.posts.cancel_scheduled(made[0]["id"])
    assert made[0]["message"] == "Hello from the Python SDK 0\n\nhttps://acme.example"
    assert first["has_more"] is True and rest["has_more"] is False
    listed = [p["id"] for p in first["scheduled_posts"] + rest["scheduled_posts"]]
    assert listed == [p["id"] for p in made]
    assert one["scheduled_post"]["first_comment"] == "first!"
    assert gone.value.status == 404 and gone.value.code == "NOT_FOUND"
    assert again.value.status == 404 and again.value.code == "NOT_FOUND"


def test_publish_now(live: Live) -> None:
    """posts.publish() returns once published; list_published shows it."""
    token = live.new_token(email="publisher@example.com")
    with client(live, token) as sdk:
        page = sdk.pages.list()["pages"][0]["id"]
        made = sdk.posts.publish(
            page_id=page, message="Live from the API 🚀", tiktok_settings={"privacy": "public"}
        )
        published = sdk.posts.list_published(page_id=page)
    assert made["status"] == "published" and made["platform"] == "SANDBOX"
    assert made["permalink"].startswith("https://")
    assert [p["remote_id"] for p in published["published_posts"]] == [made["post_id"]]


def test_typed_errors_auth_scope_idempotency_server(live: Live) -> None:
    """401 AuthError, 403 ScopeError, 409 key reuse IdempotencyError, 502 ServerError."""
    with (
        client(live, "outreply_live_" + "x" * 48) as sdk,
        pytest.raises(errors.OutReplyAuthError) as auth,
    ):
        sdk.account.retrieve()
    read_only = live.new_token(("read:pages", "read:posts"))
    with client(live, read_only) as sdk, pytest.raises(errors.OutReplyScopeError) as scope:
        sdk.posts.schedule(page_id=live.page_id, message="x", scheduled_at=at(60))
    with client(live) as sdk:
        body = {"page_id": live.page_id, "scheduled_at": at(300), "idempotency_key": "sdk-key-1"}
        first = sdk.posts.schedule(message="once", **body)
        replay = sdk.posts.schedule(message="once", **body)
        with pytest.raises(errors.OutReplyIdempotencyError) as reuse:
            sdk.posts.schedule(message="another body", **body)
        with pytest.raises(errors.OutReplyServerError) as server:
            sdk.posts.publish(page_id=live.pages[1], message="[sandbox:reject] no")
    assert auth.value.status == 401 and auth.value.code == "INVALID_TOKEN"
    assert scope.value.status == 403 and scope.value.code == "MISSING_SCOPE"
    assert replay == first
    assert reuse.value.code == "IDEMPOTENCY_KEY_MISMATCH"
    assert server.value.status == 502 and server.value.code == "PUBLISH_FAILED"


def test_rate_limit_and_guardrail_are_rate_limit_errors(tmp_path: Path) -> None:
    """Per-minute burst and the monthly bucket and guardrails all surface as RateLimitError."""
    tight = {
        **{k: 10_000 for k in ("replies", "reads", "webhooks", "per_day")},
        "publishes": 1,
        "per_minute": 6,
        "storage_bytes": 0,
        "max_file_bytes": 0,
        "active_keys": 10,
    }
    for live in serve(tmp_path, tiers={"free": tight}):
        token = live.new_token(email="free@example.com", tier="free")
        with client(live, token) as sdk:
            page = sdk.pages.list()["pages"][0]["id"]
            sdk.posts.schedule(page_id=page, message="one", scheduled_at=at(60))
            with pytest.raises(errors.OutReplyRateLimitError) as monthly:
                sdk.posts.schedule(page_id=page, message="two", scheduled_at=at(90))
            with pytest.raises(errors.OutReplyRateLimitError) as burst:
                for _ in range(10):
                    sdk.pages.list()
        with client(live) as sdk:
            sdk.posts.schedule(page_id=live.page_id, message="a", scheduled_at=at(60))
            with pytest.raises(errors.OutReplyRateLimitError) as guardrail:
                sdk.posts.schedule(page_id=live.page_id, message="b", scheduled_at=at(60.5))
    assert monthly.value.code == "MONTHLY_LIMIT_EXCEEDED"
    assert burst.value.code == "RATE_LIMITED" and burst.value.retry_after_sec is not None
    assert guardrail.value.code == "PAGE_PUBLISH_GUARDRAIL"
    assert guardrail.value.retry_after_sec is None  # no Retry-After: the SDK must not sleep


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"scheduled_at": "next tuesday"}, "INVALID_DATE"),
        ({"scheduled_at": "2026-05-01T10:00:00"}, "INVALID_DATE"),
        ({"message": "x" * 5001}, "MESSAGE_TOO_LONG"),
        ({"message": ""}, "MISSING_FIELD"),
        ({"media_ids": ["nope"]}, "NOT_FOUND"),
    ],
)
def test_malformed_bodies_are_base_errors_with_document_codes(
    live: Live, kwargs: dict[str, object], code: str
) -> None:
    """Bad input raises the SDK's base OutReplyError (not a subclass) with the 4xx code."""
    body: dict[str, object] = {"page_id": live.page_id, "message": "x", "scheduled_at": at(45)}
    with client(live) as sdk, pytest.raises(errors.OutReplyError) as bad:
        sdk.posts.schedule(**{**body, **kwargs})
    assert type(bad.value) is errors.OutReplyError
    assert bad.value.code == code and 400 <= bad.value.status < 500


def test_twenty_concurrent_identical_schedules_create_one_post(live: Live) -> None:
    """20 concurrent POST /posts/schedule with one Idempotency-Key create exactly one post; every
    answer is that post (a replay or the original) or 409 IDEMPOTENCY_KEY_IN_USE."""
    token = live.token
    page = live.page_id
    body = {"page_id": page, "message": "exactly once", "scheduled_at": at(90)}
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": "same-key-20"}

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=live.base_url, timeout=30) as http:
            calls = [http.post("/posts/schedule", json=body, headers=headers) for _ in range(20)]
            return list(await asyncio.gather(*calls))

    responses = asyncio.run(burst())
    created = {r.json()["scheduled_post"]["id"] for r in responses if r.status_code == 201}
    others = [r.json()["code"] for r in responses if r.status_code != 201]
    assert len(created) == 1, [r.status_code for r in responses]
    assert set(others) <= {"IDEMPOTENCY_KEY_IN_USE"}
    with client(live, token) as sdk:
        listed = sdk.posts.list_scheduled(page_id=page)["scheduled_posts"]
    assert [p["id"] for p in listed if p["message"] == "exactly once"] == list(created)
