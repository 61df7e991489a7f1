"""Test-only stand-in for the request gate: the ``/api/v1`` sub-app mounted as in production, with
a :class:`Principal` put on ``scope["state"]["principal"]`` for known bearer tokens.

The real gate (authentication, limits, idempotency, audit) is tested with the real stack in
``test_api_sdk.py`` / ``test_api_curl.py``; these helpers test the routes themselves.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.types import ASGIApp, Receive, Scope, Send

from daemon import ids, services
from daemon.api import v1
from daemon.api.deps import Principal
from daemon.store.models import User


class PrincipalShim:
    """Puts the Principal of ``Authorization: Bearer <name>`` on the request state."""

    def __init__(self, app: ASGIApp, principals: dict[str, Principal]) -> None:
        self.app = app
        self.principals = principals

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = dict(scope.get("headers") or [])
            auth = headers.get(b"authorization", b"").decode()
            principal = self.principals.get(auth.removeprefix("Bearer ").strip())
            if principal is not None:
                scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


@dataclass
class World:
    """Two users: ``user`` owns brands A and B (pages on A), ``other`` owns brand C."""

    app: Any
    user: str
    other: str
    brand_a: str
    brand_b: str
    brand_c: str
    sandbox_page: str
    instagram_page: str
    page_b: str
    foreign_page: str
    principals: dict[str, Principal] = field(default_factory=dict)

    def token(
        self,
        name: str,
        scopes: Iterable[str] = ("*",),
        *,
        brands: Iterable[str] | None = None,
        tier: str = "pro",
    ) -> dict[str, str]:
        """Register a token (restricted to ``brands`` when given); its request headers."""
        restricted = tuple(brands) if brands is not None else ()
        self.principals[name] = Principal(
            token_id=ids.new_id(),
            token_name=name,
            token_prefix="outreply_live_ab12c",
            kind="live",
            user_id=self.user,
            email="you@example.com",
            firstname="Alex",
            lastname="Doe",
            tier=tier,
            scopes=tuple(scopes),
            brand_ids=frozenset(restricted or (self.brand_a, self.brand_b)),
            restricted_brand_ids=restricted,
            expires_at=None,
            last_used_at=None,
            request_count=0,
        )
        return {"Authorization": f"Bearer {name}"}

    def client(self) -> httpx.AsyncClient:
        api = PrincipalShim(v1.build_api(self.app), self.principals)
        root = Starlette(routes=[Mount("/api/v1", app=api)])
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=root), base_url="http://postd.test/api/v1"
        )

    def at(self, minutes: float) -> str:
        """An instant ``minutes`` from the app's (fake) now, as the document writes them."""
        when = self.app.clock.now() + timedelta(minutes=minutes)
        return when.strftime("%Y-%m-%dT%H:%M:%S") + f".{when.microsecond // 1000:03d}Z"


async def build_world(app: Any) -> World:
    now: datetime = app.clock.now()
    async with app.sessions() as session, session.begin():
        users = []
        for email in ("you@example.com", "other@example.com"):
            user = User(
                id=ids.new_id(), email=email, firstname="Alex", lastname="Doe", created_at=now
            )
            session.add(user)
            users.append(user.id)
        await session.flush()
        brand_a = await services.add_brand(session, "Acme Co.", now, owner_id=users[0])
        brand_b = await services.add_brand(session, "Beta", now, owner_id=users[0])
        brand_c = await services.add_brand(session, "Foreign", now, owner_id=users[1])
        await session.flush()
        pages = []
        for brand, platform, name in (
            (brand_a, "sandbox", "Acme Sandbox"),
            (brand_a, "instagram", "Acme Official"),
            (brand_b, "sandbox", "Beta Sandbox"),
            (brand_c, "sandbox", "Foreign Sandbox"),
        ):
            page = await services.add_page(
                session, brand_id=brand.id, platform=platform, name=name, now=now, username="acme"
            )
            await session.flush()
            pages.append(page.id)
    return World(app, *users, brand_a.id, brand_b.id, brand_c.id, *pages)
