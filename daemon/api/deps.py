"""What a route knows about its caller, and the scope check.

The gate (``daemon.api.gate``) authenticates every ``/api/v1`` request once, before any route,
and leaves the :class:`Principal` in ``request.state.principal``. Routes declare the scope they
need with ``Depends(require("write:posts"))`` (or ``require(None)`` for any valid token).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from fastapi import Request

from daemon.api.errors import ApiError

SCOPES: tuple[str, ...] = (
    "read:account",
    "read:brands",
    "read:pages",
    "read:posts",
    "write:posts",
    "read:comments",
    "write:comments",
    "read:media",
    "write:media",
    "read:webhooks",
    "write:webhooks",
)
SANDBOX_SCOPES: tuple[str, ...] = tuple(s for s in SCOPES if s.startswith("read:"))


@dataclass(frozen=True, slots=True)
class Principal:
    token_id: str
    token_name: str
    token_prefix: str
    kind: str  # "live" | "sandbox"
    user_id: str
    email: str
    firstname: str | None
    lastname: str | None
    tier: str
    scopes: tuple[str, ...]
    # Brands this token may reach: the user's own and collaborated brands, narrowed by the
    # token's brand restriction (a collaborator-issued token: exactly one brand).
    brand_ids: frozenset[str]
    restricted_brand_ids: tuple[str, ...]  # as configured on the token ([] = unrestricted)
    expires_at: datetime | None
    last_used_at: datetime | None
    request_count: int
    collaborator_id: str | None = None

    @property
    def sandbox(self) -> bool:
        return self.kind == "sandbox"

    def has(self, scope: str) -> bool:
        return "*" in self.scopes or scope in self.scopes

    def check_brand(self, brand_id: str) -> None:
        """Raise BRAND_NOT_AUTHORIZED unless this token may reach ``brand_id``."""
        if brand_id not in self.brand_ids:
            raise ApiError("BRAND_NOT_AUTHORIZED", "This API token can't reach that brand")


def principal_of(request: Request) -> Principal:
    principal: Principal = request.state.principal
    return principal


def require(scope: str | None) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency: the caller's Principal, after checking ``scope`` (None: any valid token).

    A coroutine although it awaits nothing: FastAPI runs a plain function dependency on a worker
    thread, a round trip per request that cost more than the check."""

    async def dependency(request: Request) -> Principal:
        principal = principal_of(request)
        if scope is not None and not principal.has(scope):
            request.state.scope_denied = scope
            raise ApiError(
                "MISSING_SCOPE",
                f"This API token is missing the required scope: {scope}",
                required_scope=scope,
                your_scopes=list(principal.scopes),
            )
        return principal

    dependency.__name__ = f"require_{(scope or 'token').replace(':', '_')}"
    return dependency
