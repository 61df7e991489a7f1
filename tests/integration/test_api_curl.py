"""The document's curl examples and Make / Zapier / n8n / cron bodies, replayed byte for byte
against a real postd with only the host changed (and placeholders filled: ids, future times)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.live_server import Live, needs_stack, serve

pytestmark = needs_stack

DOC_HOST = "https://api.outreply.com"
SCHEDULED_POST = {
    "id",
    "page_id",
    "platform",
    "scheduled_at",
    "status",
    "message",
    "media",
    "first_comment",
    "created_at",
}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    yield from serve(tmp_path_factory.mktemp("curl"))


def future(days: float, fmt: str = "%Y-%m-%dT%H:%M:%SZ") -> str:
    when = (datetime.now(UTC) + timedelta(days=days)).replace(microsecond=0)
    return when.strftime(fmt)


def curl(
    live: Live, method: str, url: str, *, headers: dict[str, str], data: str | None = None
) -> httpx.Response:
    """What curl sends for ``curl URL -X METHOD -H ... -d DATA``, with the host swapped."""
    assert url.startswith(DOC_HOST)
    with httpx.Client(base_url=live.root_url) as http:
        return http.request(
            method, url.removeprefix(DOC_HOST), headers=headers, content=data, timeout=30
        )


def auth(live: Live) -> dict[str, str]:
    return {"Authorization": f"Bearer {live.token}"}


def test_quickstart_me_and_root_probe(live: Live) -> None:
    """GET /me with a Bearer token (and with X-API-Key); the root probe needs no token."""
    me = curl(live, "GET", f"{DOC_HOST}/api/v1/me", headers=auth(live))
    by_key = curl(live, "GET", f"{DOC_HOST}/api/v1/me", headers={"X-API-Key": live.token})
    root = curl(live, "GET", f"{DOC_HOST}/api/v1/", headers={})
    errors = curl(live, "GET", f"{DOC_HOST}/api/v1/errors", headers={})
    assert me.status_code == 200 and by_key.json() == me.json()
    assert set(me.json()) == {"authenticated_as", "api_key"}
    assert me.headers["X-API-Tier"] == "elite" and "X-RateLimit-Remaining" in me.headers
    assert me.headers["X-API-Scopes"] == "*"
    assert root.status_code == 200 and errors.status_code == 200
    assert {e["code"] for e in errors.json()["errors"]} >= {"MISSING_FIELD", "SERVER_ERROR"}


def test_schedule_example(live: Live) -> None:
    """The document's /posts/schedule example: 201 with exactly the scheduled post object."""
    when = future(1)
    data = """{
    "page_id": "PAGE",
    "message": "Launching tomorrow 🚀",
    "scheduled_at": "WHEN",
    "media_urls": ["https://cdn.example.com/hero.jpg"],
    "first_comment": "More details at acme.com"
  }""".replace("PAGE", live.page_id).replace("WHEN", when)
    response = curl(
        live,
        "POST",
        f"{DOC_HOST}/api/v1/posts/schedule",
        headers={**auth(live), "Content-Type": "application/json"},
        data=data,
    )
    assert response.status_code == 201, response.text
    post = response.json()["scheduled_post"]
    assert set(post) == SCHEDULED_POST
    assert post["media"] == [{"src": "https://cdn.example.com/hero.jpg", "type": "photo"}]
    assert post["scheduled_at"] == when.replace("Z", ".000Z")
    assert post["platform"] == "sandbox" and post["status"] == "scheduled"


def test_idempotency_example(live: Live) -> None:
    """Same key + body replays (Idempotency-Replayed: true); same key + other body is 409."""
    headers = {
        **auth(live),
        "Idempotency-Key": "8f1c1d7a-2a99-4c12-9fcc-6b5d22e52a7b",
        "Content-Type": "application/json",
    }
    body = {"page_id": live.pages[1], "message": "Launch!", "publish_at": future(2)}
    url = f"{DOC_HOST}/api/v1/posts/schedule"
    first = curl(live, "POST", url, headers=headers, data=json.dumps(body))
    again = curl(live, "POST", url, headers=headers, data=json.dumps(body))
    other = curl(live, "POST", url, headers=headers, data=json.dumps({**body, "message": "B"}))
    assert first.status_code == 201 and again.status_code == 201
    assert again.json() == first.json() and again.headers["Idempotency-Replayed"] == "true"
    assert other.status_code == 409 and other.json()["code"] == "IDEMPOTENCY_KEY_MISMATCH"


def test_publish_example(live: Live) -> None:
    """The document's /posts/publish example: 201 once the platform accepted it."""
    token = live.new_token(email="curl-publish@example.com")
    pages = curl(
        live, "GET", f"{DOC_HOST}/api/v1/pages", headers={"Authorization": f"Bearer {token}"}
    )
    data = """{
    "page_id": "PAGE",
    "message": "Live from the API 🚀",
    "media_urls": ["https://cdn.example.com/hero.jpg"],
    "first_comment": "More details at acme.com"
  }""".replace("PAGE", pages.json()["pages"][0]["id"])
    response = curl(
        live,
        "POST",
        f"{DOC_HOST}/api/v1/posts/publish",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        data=data,
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert {"post_id", "platform", "published_at", "message", "permalink", "status"} <= set(body)
    assert body["status"] == "published" and body["message"] == "Live from the API 🚀"


NO_CODE_BODIES = {
    # Make: formatDate(...; YYYY-MM-DDTHH:mm:ssZ) renders the zone as +00:00.
    "make": (
        '{"page_id": "PAGE", "message": "CAPTION", "scheduled_at": "%s", '
        '"media_urls": ["https://cdn.example.com/make.jpg"]}',
        "%Y-%m-%dT%H:%M:%S+00:00",
    ),
    # Zapier: an ISO time step output.
    "zapier": (
        '{\n  "page_id": "PAGE",\n  "message": "CAPTION",\n  "scheduled_at": "%s",\n'
        '  "media_urls": ["https://cdn.example.com/zap.png"]\n}',
        "%Y-%m-%dT%H:%M:%S.000Z",
    ),
    # n8n: a Luxon toISO() in a Set node.
    "n8n": (
        '{"page_id":"PAGE","message":"CAPTION","scheduled_at":"%s"}',
        "%Y-%m-%dT%H:%M:%S.000+00:00",
    ),
    # cron: date -u -d 'tomorrow 09:00' +%Y-%m-%dT%H:%M:%SZ, message from shuf.
    "cron": (
        '{\n    "page_id": "PAGE",\n    "message": "CAPTION",\n    "scheduled_at": "%s"\n  }',
        "%Y-%m-%dT%H:%M:%SZ",
    ),
}


@pytest.mark.parametrize("tool", sorted(NO_CODE_BODIES))
def test_no_code_tool_bodies(live: Live, tool: str) -> None:
    """Make, Zapier, n8n and cron bodies as the document writes them schedule a post (201)."""
    template, fmt = NO_CODE_BODIES[tool]
    offset = {"make": 3, "zapier": 4, "n8n": 5, "cron": 6}[tool]
    data = (template % future(offset, fmt)).replace("PAGE", live.page_id)
    data = data.replace("CAPTION", f"Tip of the day via {tool}")
    response = curl(
        live,
        "POST",
        f"{DOC_HOST}/api/v1/posts/schedule",
        headers={**auth(live), "Content-Type": "application/json"},
        data=data,
    )
    assert response.status_code == 201, response.text
    assert response.json()["scheduled_post"]["message"] == f"Tip of the day via {tool}"


def test_document_error_examples(live: Live) -> None:
    """MISSING_SCOPE body as the document shows it; no token is 401 MISSING_TOKEN; bad JSON 400."""
    read_only = live.new_token(("read:posts",))
    url = f"{DOC_HOST}/api/v1/posts/schedule"
    denied = curl(
        live,
        "POST",
        url,
        headers={"Authorization": f"Bearer {read_only}", "Content-Type": "application/json"},
        data="{}",
    )
    anonymous = curl(live, "GET", f"{DOC_HOST}/api/v1/account", headers={})
    broken = curl(
        live, "POST", url, headers={**auth(live), "Content-Type": "application/json"}, data="{"
    )
    body: dict[str, Any] = denied.json()
    assert denied.status_code == 403
    assert body["error"] == "This API token is missing the required scope: write:posts"
    assert body["code"] == "MISSING_SCOPE" and body["required_scope"] == "write:posts"
    assert body["your_scopes"] == ["read:posts"]
    assert anonymous.status_code == 401 and anonymous.json()["code"] == "MISSING_TOKEN"
    assert broken.status_code == 400 and broken.json()["code"] == "INVALID_REQUEST"
