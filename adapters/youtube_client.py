"""The authenticated side of the YouTube adapter: one HTTP client, each page's Google tokens
(refreshed :data:`REFRESH_EARLY` before expiry under a per-page lock, saved at once; a 401
refreshes once more), the project's daily quota, and Google's errors mapped onto the typed ones
(platforms.md §6 "Errors" and "Quota").

The quota (10,000 units a day per Google Cloud project, reset at midnight Pacific time) is the
client's, shared by every page: after ``quotaExceeded`` no request is made before the reset.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx

from adapters import _http, _tokens, base
from adapters import youtube_oauth as oauth

REFRESH_EARLY = timedelta(minutes=5)
RATE_LIMIT_WAIT = 60.0
UPLOAD_LIMIT_WAIT = timedelta(hours=24)
QUOTA_REASONS = frozenset({"quotaExceeded", "dailyLimitExceeded"})
RATE_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded"})
_PST = timezone(timedelta(hours=-8), "PST")


def _pacific() -> tzinfo:
    try:
        return ZoneInfo("America/Los_Angeles")
    except ZoneInfoNotFoundError:  # no tz database: PST all year, an hour late in summer
        return _PST


def quota_day(now: datetime) -> date:
    """The Pacific calendar day YouTube's quota counts in."""
    return now.astimezone(_pacific()).date()


def quota_reset(now: datetime) -> datetime:
    """The next midnight Pacific time after ``now``, in UTC."""
    midnight = datetime.combine(quota_day(now) + timedelta(days=1), time(0), tzinfo=_pacific())
    return midnight.astimezone(UTC)


Page = _tokens.Tokens  # a page's current Google tokens and channel (``channel_id``)


class GoogleClient:
    """Requests as a page's channel; see the module docstring."""

    def __init__(
        self,
        credentials: _http.CredentialStore,
        *,
        now: _http.Now,
        app: oauth.OAuthApp,
        api_base: str,
        timeouts: _http.Timeouts,
        transport: httpx.AsyncBaseTransport | None,
    ) -> None:
        self._store = credentials
        self._now = now
        self._app = app
        self.api_base = api_base.rstrip("/")
        self._timeouts = timeouts
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._tokens = _tokens.PageTokens(
            credentials,
            now,
            self.refresh_credentials,
            Page,
            platform="youtube",
            early=REFRESH_EARLY,
            required=("access_token", "channel_id"),
        )
        self._quota_until: datetime | None = None  # the project's quota is used up until then
        self._uploads_by_day: dict[date, int] = {}
        self.day_capacity: int | None = None  # uploads a quota day held when it ran out

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = _http.make_client(self._timeouts, self._transport)
        return self._client

    async def page(self, page_id: str) -> Page:
        """The page's tokens, refreshed first when they expire within :data:`REFRESH_EARLY`."""
        return await self._tokens.get(page_id)

    async def refresh(self, page_id: str, stale_token: str) -> Page:
        """Refresh once per stale token (after a 401)."""
        return await self._tokens.refresh(page_id, stale_token)

    def check_quota(self) -> None:
        """RetryableError ``quotaExceeded`` (until the reset) while the quota is used up."""
        if self._quota_until is not None and self._now() < self._quota_until:
            wait = (self._quota_until - self._now()).total_seconds()
            raise base.RetryableError(
                f"youtube: the daily quota is used up until {self._quota_until.isoformat()}",
                code="quotaExceeded",
                retry_after=wait,
            )

    async def request(
        self,
        page_id: str,
        method: str,
        url: str,
        *,
        final: bool,
        what: str,
        headers: Mapping[str, str] | None = None,
        **request: Any,
    ) -> httpx.Response:
        """One authenticated request, any status back; a 401 refreshes once and sends again."""
        self.check_quota()

        async def send(page: Page) -> httpx.Response:
            return await _http.send(
                self.client,
                method,
                url,
                final=final,
                what=what,
                headers={**(headers or {}), "Authorization": f"Bearer {page.token}"},
                **request,
            )

        return await self._tokens.send(page_id, send)

    async def json(self, page_id: str, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """A Data API call (``path`` under ``api_base``) answering a JSON object, else the error."""
        response = await self.request(page_id, method, self.api_base + path, **kwargs)
        if not response.is_success:
            raise self.error(response, final=kwargs["final"], what=kwargs["what"])
        return _http.json_object(response, final=kwargs["final"], what=kwargs["what"])

    def error(self, response: httpx.Response, *, final: bool, what: str) -> base.AdapterError:
        """platforms.md §6 "Errors": quota waits for the Pacific midnight, the channel's upload
        cap 24 h, throttles a minute (or Retry-After); the rest as :func:`_http.status_error`."""
        now = self._now()
        reason, message = oauth.error_body(_http.body_json(response))
        text = " ".join(
            str(part)
            for part in (f"youtube {what}: HTTP", response.status_code, reason, message)
            if part
        )
        extra: dict[str, Any] = {"http_status": response.status_code}
        extra["excerpt"] = _http.excerpt(response)
        if reason in QUOTA_REASONS:
            self._quota_until = quota_reset(now)
            uploads = self._uploads_by_day.get(quota_day(now), 0)
            if uploads:  # what a day of this project's quota held
                self.day_capacity = max(self.day_capacity or uploads, uploads)
            until = (self._quota_until - now).total_seconds()
            return base.RetryableError(text, code=reason, retry_after=until, **extra)
        if reason == "uploadLimitExceeded":
            return base.RetryableError(text, code=reason, retry_after=UPLOAD_LIMIT_WAIT, **extra)
        if reason in RATE_REASONS or response.status_code == 429:
            wait = _http.retry_after(response.headers, now)
            return base.RetryableError(
                text,
                code=reason or "RATE_LIMITED",
                retry_after=RATE_LIMIT_WAIT if wait is None else wait,
                **extra,
            )
        if reason == "processingFailure":  # comments: "temporary" (platforms.md §6)
            return base.RetryableError(text, code=reason, **extra)
        return _http.status_error(
            response, final=final, now=now, what=f"youtube {what}", parse=oauth.error_body
        )

    def note_upload(self) -> None:
        """One more video uploaded in the current quota day."""
        day = quota_day(self._now())
        self._uploads_by_day = {day: self._uploads_by_day.get(day, 0) + 1}

    async def refresh_credentials(self, credentials: Mapping[str, str]) -> Mapping[str, str]:
        """A new access token from ``refresh_token`` (Google keeps the refresh token)."""
        refresh = credentials.get("refresh_token")
        if not refresh:
            raise base.AuthError("youtube: no refresh token stored", code="NOT_CONNECTED")
        form = {"grant_type": "refresh_token", "refresh_token": refresh}
        data = await oauth.token_request(self.client, self.api_base, self._app, form, self._now())
        return {**credentials, **oauth.token_credentials(data, self._now())}

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
