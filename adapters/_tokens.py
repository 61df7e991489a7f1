"""OAuth 2 access tokens per page, shared by the adapters of X, LinkedIn, TikTok and YouTube.

A page's credentials (``access_token``, ``expires_at`` in epoch seconds, ``refresh_token`` where
the platform gives one, plus the adapter's own keys) are loaded once from the injected store and
kept. Before a call, :meth:`PageTokens.get` refreshes them ``early`` before they expire; refreshes
of one page are serialized by a lock, and a caller that waited finds the new token instead of
refreshing again (refresh tokens rotate on some platforms: a second refresh with the old one
would be refused). A refreshed set is saved at once.

A refresh that fails *transiently* (RetryableError) never ends a page's connection: while the
current token is still valid it keeps being used, and the token endpoint is asked again after
``backoff`` (or its Retry-After). A page without a refresh token (not every app gets one) uses
its token until it expires, then AuthError ``AUTH_EXPIRED``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

import httpx
import structlog

from adapters import _http, base

log = structlog.get_logger("postd.adapters")


@dataclass
class Tokens:
    """A page's current credentials."""

    creds: dict[str, str] = field(repr=False)

    @property
    def token(self) -> str:
        return self.creds.get("access_token", "")

    def expires_at(self, key: str = "expires_at") -> float:
        try:
            return float(self.creds.get(key, "0"))
        except ValueError:
            return 0.0


P = TypeVar("P", bound=Tokens)
Refresh = Callable[[Mapping[str, str]], Awaitable[Mapping[str, str]]]


def credentials_of(
    data: Mapping[str, Any],
    now: datetime,
    *,
    what: str,
    default_seconds: float,
    refresh_lifetime: str = "",
    keep: tuple[str, ...] = (),
) -> dict[str, str]:
    """The stored form of a token endpoint's answer: ``access_token``, ``expires_at`` (epoch
    seconds, from ``expires_in`` or ``default_seconds``), ``refresh_token`` when given (and its
    ``refresh_expires_at`` from the answer's ``refresh_lifetime`` field), and the ``keep`` keys.
    An answer without an access token is RetryableError ``BAD_RESPONSE``."""
    if not data.get("access_token"):
        raise base.RetryableError(f"{what}: no access_token in the answer", code="BAD_RESPONSE")
    at = now.timestamp()
    creds = {
        "access_token": str(data["access_token"]),
        "expires_at": str(int(at + float(data.get("expires_in") or default_seconds))),
    }
    if data.get("refresh_token"):
        creds["refresh_token"] = str(data["refresh_token"])
    if refresh_lifetime and data.get(refresh_lifetime):
        creds["refresh_expires_at"] = str(int(at + float(data[refresh_lifetime])))
    creds.update({key: str(data[key]) for key in keep if data.get(key)})
    return creds


def code_form(code: str, verifier: str, redirect_uri: str) -> dict[str, str]:
    """The authorization-code grant's form (``code_verifier`` only when PKCE was used)."""
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
    if verifier:
        form["code_verifier"] = verifier
    return form


class PageTokens(Generic[P]):
    """See the module docstring. ``wrap`` makes the adapter's own view of a page's credentials;
    ``required`` are the keys without which a page is not connected."""

    def __init__(
        self,
        store: _http.CredentialStore,
        now: _http.Now,
        refresh: Refresh,
        wrap: Callable[[dict[str, str]], P],
        *,
        platform: str,
        early: timedelta,
        required: tuple[str, ...] = ("access_token",),
        backoff: timedelta = timedelta(minutes=5),
    ) -> None:
        self._store, self._now, self._refresh_with, self._wrap = store, now, refresh, wrap
        self._platform, self._early, self._required = platform, early, required
        self._backoff = backoff.total_seconds()
        self._pages: dict[str, P] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._not_before: dict[str, float] = {}

    async def get(self, page_id: str) -> P:
        """The page's credentials, refreshed first when they expire within ``early``."""
        if page_id not in self._pages:
            creds = dict(await self._store.load(page_id))
            if not all(creds.get(key) for key in self._required):
                raise base.AuthError(
                    f"{self._platform}: the page's credentials are incomplete",
                    code="NOT_CONNECTED",
                )
            self._pages[page_id] = self._wrap(creds)
        page = self._pages[page_id]
        now = self._now().timestamp()
        valid = page.expires_at() > now
        if page.expires_at() - self._early.total_seconds() > now:
            return page
        if valid and now < self._not_before.get(page_id, 0.0):
            return page
        if not page.creds.get("refresh_token"):
            if valid:
                return page
            raise base.AuthError(f"{self._platform}: the access token expired", code="AUTH_EXPIRED")
        try:
            return await self.refresh(page_id, page.token)
        except base.RetryableError as exc:
            if not valid:
                raise
            # The token still works: use it, and ask the token endpoint again a little later.
            self._not_before[page_id] = now + (exc.retry_after or self._backoff)
            log.warning(
                "token_refresh_deferred", platform=self._platform, page_id=page_id, code=exc.code
            )
            return page

    async def refresh(self, page_id: str, stale_token: str) -> P:
        """Refresh once per stale token: a caller that waited on the lock finds the new one
        (also after a 401: pass the token that was refused)."""
        async with self._locks.setdefault(page_id, asyncio.Lock()):
            current = self._pages.get(page_id)
            if current is not None and current.token != stale_token:
                return current
            stored = dict(await self._store.load(page_id))
            if stored.get("access_token") not in (stale_token, None, ""):
                fresh = stored  # refreshed elsewhere (another process, a re-connect)
            else:
                fresh = dict(await self._refresh_with(stored))
                await self._store.save(page_id, fresh)
            self._pages[page_id] = self._wrap(fresh)
            self._not_before.pop(page_id, None)
            return self._pages[page_id]

    async def send(
        self,
        page_id: str,
        request: Callable[[P], Awaitable[httpx.Response]],
        *,
        refused: Callable[[httpx.Response], bool] = lambda response: response.status_code == 401,
        needs_refresh_token: bool = False,
    ) -> httpx.Response:
        """``request`` with the page's credentials; when the platform ``refused`` the token,
        refresh once and send again (``needs_refresh_token``: only if the page has one, else
        the refusal stands). The last answer, whatever its status."""
        page = await self.get(page_id)
        response = await request(page)
        if refused(response) and (page.creds.get("refresh_token") or not needs_refresh_token):
            page = await self.refresh(page_id, page.token)
            response = await request(page)
        return response

    def cached(self, page_id: str) -> P | None:
        """The credentials held for ``page_id`` without loading or refreshing (None: none)."""
        return self._pages.get(page_id)
