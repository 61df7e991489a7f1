"""The small HTTP layer the platform adapters share: one client per adapter with explicit
timeouts, rate-limit header parsing, and the translation of transport errors and HTTP statuses
into the contract's typed errors (``adapters.base``), following platforms.md §0.1:

    transport error before the request was sent (connect, pool)   -> RetryableError
    transport error after it was sent (read/write timeout, reset) -> AmbiguousError on the final
                                                                     call, RetryableError before
    429 (and 503)                                                  -> RetryableError, retry_after
                                                                     from the platform's headers
    other 5xx, or an unreadable 2xx                                -> AmbiguousError on the final
                                                                     call, RetryableError before
    401                                                            -> AuthError (the adapter
                                                                     refreshes once first)
    any other status                                               -> PermanentError (the
                                                                     platform's code)

"Final" is the one irreversible publish call; everything before it (uploads, lookups, polls) is
safe to repeat. Adapters get their page credentials through a :class:`CredentialStore` and media
bytes through a :class:`MediaFetcher`, both injected by the composition root, so that nothing in
``adapters`` touches the database or fetches user-supplied URLs itself.
"""

from __future__ import annotations

import email.utils
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx

from adapters import base

USER_AGENT = "postd (+https://postd.invalid)"
# Values of a reset header above this are epoch seconds; below, seconds from now.
_EPOCH_THRESHOLD = 1_000_000_000

Sleep = Callable[[float], Awaitable[None]]
Now = Callable[[], datetime]
# The platform's (code, message) from an error body; both may be None.
ErrorParser = Callable[[Any], tuple[str | None, str | None]]


# --- injected collaborators -------------------------------------------------------------------


class CredentialStore(Protocol):
    """Where an adapter finds a page's credentials and puts refreshed ones (the daemon encrypts
    them at rest). ``load`` raises :class:`base.AuthError` when the page was never connected."""

    async def load(self, page_id: str) -> Mapping[str, str]: ...

    async def save(self, page_id: str, credentials: Mapping[str, str]) -> None: ...


@dataclass(frozen=True, slots=True)
class MediaBlob:
    data: bytes
    mime_type: str


class MediaFetcher(Protocol):
    """Fetches a post's media item (through the daemon's SSRF policy); at most ``max_bytes``
    bytes, else :class:`base.PermanentError` ``MEDIA_TOO_LARGE``."""

    async def __call__(self, item: base.MediaItem, max_bytes: int) -> MediaBlob: ...


class NoCredentials:
    """A store for adapters built only to validate posts (the CLI): every page is unconnected."""

    async def load(self, page_id: str) -> Mapping[str, str]:
        raise base.PermanentError(
            "no credential store in this process", code="CREDENTIALS_UNAVAILABLE"
        )

    async def save(self, page_id: str, credentials: Mapping[str, str]) -> None:
        raise base.PermanentError(
            "no credential store in this process", code="CREDENTIALS_UNAVAILABLE"
        )


async def no_media(item: base.MediaItem, max_bytes: int) -> MediaBlob:
    """The fetcher of adapters built without one: media cannot be published."""
    raise base.PermanentError("media fetching is not configured", code="MEDIA_UNAVAILABLE")


# --- clients ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 10.0
    read: float = 30.0
    write: float = 60.0
    pool: float = 10.0

    def httpx(self) -> httpx.Timeout:
        return httpx.Timeout(connect=self.connect, read=self.read, write=self.write, pool=self.pool)


def make_client(
    timeouts: Timeouts, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    """One client per adapter: explicit timeouts, no redirects followed, no proxy from the
    environment, no automatic retries (the dispatcher decides what is retried)."""
    return httpx.AsyncClient(
        timeout=timeouts.httpx(),
        follow_redirects=False,
        trust_env=False,
        transport=transport or httpx.AsyncHTTPTransport(retries=0),
        headers={"User-Agent": USER_AGENT},
    )


# --- rate-limit headers -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RateLimit:
    """The most pressing limit a response reports; ``reset_at`` is when it refills."""

    limit: int | None
    remaining: int | None
    reset_at: datetime | None


def _int(value: str | None) -> int | None:
    try:
        return None if value is None else int(float(value.strip()))
    except ValueError:
        return None


def parse_instant(value: str | None, now: datetime) -> datetime | None:
    """A reset header's instant: epoch seconds, seconds from ``now``, ISO 8601 (Mastodon) or
    an HTTP date (Retry-After). ``None`` when absent or unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        if number >= _EPOCH_THRESHOLD:
            return datetime.fromtimestamp(number, UTC)
        return datetime.fromtimestamp(now.timestamp() + max(number, 0.0), UTC)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def rate_limit(headers: httpx.Headers, now: datetime) -> RateLimit | None:
    """``x-rate-limit-*`` (X), ``X-RateLimit-*`` (Mastodon) or ``RateLimit-*`` (IETF draft,
    Bluesky); ``None`` when the response carries none of them."""
    for prefix in ("x-rate-limit-", "x-ratelimit-", "ratelimit-"):
        limit = headers.get(prefix + "limit")
        remaining = headers.get(prefix + "remaining")
        reset = headers.get(prefix + "reset")
        if limit is not None or remaining is not None or reset is not None:
            return RateLimit(_int(limit), _int(remaining), parse_instant(reset, now))
    return None


def retry_after(headers: httpx.Headers, now: datetime) -> float | None:
    """Seconds to wait: ``Retry-After`` first, else the rate-limit reset; ``None`` if neither."""
    at = parse_instant(headers.get("retry-after"), now)
    if at is None:
        limits = rate_limit(headers, now)
        at = limits.reset_at if limits is not None else None
    if at is None:
        return None
    return max((at - now).total_seconds(), 0.0)


# --- error mapping ----------------------------------------------------------------------------


def excerpt(response: httpx.Response) -> str:
    """The start of an error body, for the attempt log (never called on success bodies, which
    may carry tokens)."""
    try:
        return response.text[: base.EXCERPT_MAX_CHARS]
    except (UnicodeDecodeError, httpx.ResponseNotRead):
        return f"<{len(response.content)} bytes>"


def body_json(response: httpx.Response) -> Any:
    """The decoded JSON body, or ``None`` when it is not JSON."""
    try:
        return json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        return None


def transport_error(exc: httpx.TransportError, *, final: bool, what: str) -> base.AdapterError:
    """A transport failure: provably unsent (connect, pool) or maybe sent (everything else)."""
    name = type(exc).__name__
    if isinstance(exc, httpx.UnsupportedProtocol):  # a bad api_base: nothing was sent
        return base.PermanentError(f"{what}: {exc}", code="BAD_API_BASE")
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return base.RetryableError(f"{what}: {name}", code="CONNECT_FAILED")
    code = "READ_TIMEOUT" if isinstance(exc, httpx.TimeoutException) else "CONNECTION_LOST"
    if final:
        return base.AmbiguousError(f"{what}: {name} after the request was sent", code=code)
    return base.RetryableError(f"{what}: {name}", code=code)


def status_error(
    response: httpx.Response,
    *,
    final: bool,
    now: datetime,
    what: str,
    parse: ErrorParser,
) -> base.AdapterError:
    """The typed error for a non-2xx response (see the module docstring)."""
    status = response.status_code
    code, message = parse(body_json(response))
    text = f"{what}: HTTP {status}" + (f" {message}" if message else "")
    kwargs: dict[str, Any] = {"http_status": status, "excerpt": excerpt(response)}
    if status == 429:
        return base.RetryableError(
            text,
            code=code or "RATE_LIMITED",
            retry_after=retry_after(response.headers, now),
            **kwargs,
        )
    if status == 503:
        return base.RetryableError(
            text,
            code=code or "UNAVAILABLE",
            retry_after=retry_after(response.headers, now),
            **kwargs,
        )
    if status >= 500:
        if final:
            return base.AmbiguousError(text, code=code or f"HTTP_{status}", **kwargs)
        return base.RetryableError(text, code=code or f"HTTP_{status}", **kwargs)
    if status == 401:
        return base.AuthError(text, code=code or "AUTH_EXPIRED", **kwargs)
    return base.PermanentError(text, code=code or f"HTTP_{status}", **kwargs)


def unreadable(response: httpx.Response, *, final: bool, what: str) -> base.AdapterError:
    """A 2xx whose body is not what the platform documents."""
    kwargs: dict[str, Any] = {"http_status": response.status_code, "excerpt": excerpt(response)}
    if final:  # it said yes, but we cannot tell what it created
        return base.AmbiguousError(
            f"{what}: unreadable success body", code="BAD_RESPONSE", **kwargs
        )
    return base.RetryableError(f"{what}: unreadable response", code="BAD_RESPONSE", **kwargs)


async def send(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    final: bool,
    what: str,
    **request: Any,
) -> httpx.Response:
    """One request; transport errors come back typed. The status is the caller's to check."""
    try:
        return await client.request(method, url, **request)
    except httpx.TransportError as exc:
        raise transport_error(exc, final=final, what=what) from exc


def json_object(response: httpx.Response, *, final: bool, what: str) -> dict[str, Any]:
    """The JSON object of a 2xx response, or the error for an unreadable one."""
    data = body_json(response)
    if not isinstance(data, dict):
        raise unreadable(response, final=final, what=what)
    return data


def parse_time(value: Any, fallback: datetime) -> datetime:
    """An ISO 8601 timestamp from a platform, UTC; ``fallback`` when absent or unreadable."""
    if not isinstance(value, str):
        return fallback
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return fallback
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"GIF87a", 0, "image/gif"),
    (b"GIF89a", 0, "image/gif"),
    (b"WEBP", 8, "image/webp"),
    (b"ftyp", 4, "video/mp4"),
)


def sniff_mime(data: bytes, declared: str | None = None) -> str:
    """The media type by magic bytes (JPEG, PNG, GIF, WebP, MP4/MOV); else ``declared``; else
    ``application/octet-stream``."""
    for magic, offset, mime in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            if mime == "video/mp4" and data[8:10] == b"qt":
                return "video/quicktime"
            return mime
    return declared or "application/octet-stream"


@dataclass(frozen=True, slots=True)
class Connected:
    """What connecting a page verified: credentials to store (encrypted) and who they are."""

    credentials: Mapping[str, str]
    external_id: str
    username: str
    name: str

    def __repr__(self) -> str:  # never the credentials
        return f"Connected(external_id={self.external_id!r}, username={self.username!r})"


@dataclass(frozen=True, slots=True)
class OAuthApp:
    """The operator's own app on an OAuth platform (``[platforms.<name>] client_id`` and
    ``client_secret``; TikTok calls the id ``client_key``)."""

    client_id: str
    client_secret: str = field(default="", repr=False)


class BoundedCache(dict[str, Any]):
    """A dict that forgets its oldest entries beyond ``size`` (insertion order)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self._size = size

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        while len(self) > self._size:
            del self[next(iter(self))]
