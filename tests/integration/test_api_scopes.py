"""Scope matrix: every endpoint, every token that lacks its scope -> 403 MISSING_SCOPE naming it;
``*`` passes everywhere (the document's scope table, plus read/write:webhooks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from daemon.api import deps, v1
from tests.api_shim import World, build_world
from tests.conftest import make_settings

# The document's scope table, per operation (None: any valid token).
REQUIRED: dict[tuple[str, str], str | None] = {
    ("GET", "/account"): "read:account",
    ("GET", "/me"): None,
    ("GET", "/brands"): "read:brands",
    ("GET", "/brands/{brand_id}"): "read:brands",
    ("GET", "/brands/{brand_id}/pages"): "read:pages",
    ("GET", "/pages"): "read:pages",
    ("GET", "/pages/{page_id}"): "read:pages",
    ("POST", "/posts/schedule"): "write:posts",
    ("POST", "/posts/schedule/bulk"): "write:posts",
    ("POST", "/posts/publish"): "write:posts",
    ("GET", "/posts/scheduled"): "read:posts",
    ("GET", "/posts/scheduled/{post_id}"): "read:posts",
    ("PATCH", "/posts/scheduled/{post_id}"): "write:posts",
    ("DELETE", "/posts/scheduled/{post_id}"): "write:posts",
    ("GET", "/posts/published"): "read:posts",
    ("GET", "/webhooks"): "read:webhooks",
    ("POST", "/webhooks"): "write:webhooks",
    ("GET", "/webhooks/{webhook_id}"): "read:webhooks",
    ("PATCH", "/webhooks/{webhook_id}"): "write:webhooks",
    ("DELETE", "/webhooks/{webhook_id}"): "write:webhooks",
    ("POST", "/webhooks/{webhook_id}/rotate-secret"): "write:webhooks",
    ("POST", "/webhooks/{webhook_id}/test"): "write:webhooks",
    ("GET", "/webhooks/{webhook_id}/deliveries"): "read:webhooks",
    ("POST", "/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver"): "write:webhooks",
}
PUBLIC = {("GET", "/"), ("GET", "/errors")}


def _operations() -> set[tuple[str, str]]:
    paths = v1.build_api(None).openapi()["paths"]  # type: ignore[arg-type]
    return {(m.upper(), p) for p, item in paths.items() for m in item}


def _concrete(path: str, world: World) -> str:
    return (
        path.replace("{brand_id}", world.brand_a)
        .replace("{page_id}", world.sandbox_page)
        .replace("{post_id}", "6b0000000000000000000000")
        .replace("{webhook_id}", "6c0000000000000000000000")
        .replace("{delivery_id}", "msg_6d0000000000000000000000")
    )


@pytest.fixture
async def world(tmp_path: Path, db_url: str, app_factory: Any) -> World:
    return await build_world(await app_factory(make_settings(tmp_path, db_url)))


def test_the_table_covers_every_operation() -> None:
    """Every operation of the OpenAPI document is in the matrix (a new route must be added)."""
    assert _operations() - PUBLIC == set(REQUIRED)


async def test_every_endpoint_refuses_every_token_without_its_scope(world: World) -> None:
    """For each endpoint and each scope it needs: a token with all *other* scopes gets 403
    MISSING_SCOPE with required_scope and your_scopes; `*` is never refused for scope."""
    star = world.token("star", scopes=("*",))
    async with world.client() as http:
        for (method, path), scope in sorted(REQUIRED.items()):
            url = _concrete(path, world)
            if scope is not None:
                others = tuple(s for s in deps.SCOPES if s != scope)
                headers = world.token(f"no-{scope}", scopes=others)
                response = await http.request(method, url, headers=headers, json={})
                assert response.status_code == 403, (method, path, response.text)
                body = response.json()
                assert body["code"] == "MISSING_SCOPE", (method, path)
                assert body["required_scope"] == scope
                assert sorted(body["your_scopes"]) == sorted(others)
            response = await http.request(method, url, headers=star, json={})
            assert response.json().get("code") != "MISSING_SCOPE", (method, path)
