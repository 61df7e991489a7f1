"""The contract every platform adapter implements, and the errors it may raise.

An adapter sees a post as a :class:`PostPayload` of plain values and answers with plain values
(:class:`Published`, :class:`Comment`); it never touches the store or the dispatcher. Foreign errors
(httpx, JSON decoding...) are translated at the adapter boundary with ``raise ... from exc`` into
exactly one of these:

    AdapterError            root; attributes ``code``, ``http_status``, ``excerpt``
     ├── RetryableError     the request provably did NOT take effect; ``retry_after`` (seconds)
     ├── AmbiguousError     the request MAY have taken effect: never blind-retry,
     │                      reconcile with ``Adapter.find_published``
     ├── PermanentError     validation, duplicate, policy...: fail with ``code`` (the platform's)
     │    └── AuthError     credentials expired or revoked: the page needs a re-connect
     └── UnsupportedAction  the platform cannot do this (``find_published`` included)

An exception is permanent until classified otherwise: a bare :class:`AdapterError` is reported as
``"unknown"`` by :func:`error_class` and must not be retried.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

EXCERPT_MAX_CHARS = 500

ErrorClass = Literal["retryable", "ambiguous", "permanent", "auth", "unsupported", "unknown"]


# --- values -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MediaItem:
    url: str
    kind: str  # "photo" | "video"
    mime_type: str | None = None


def content_fingerprint(message: str | None, media_urls: Iterable[str] = ()) -> str:
    """SHA-256 hex of a post's normalized text plus its media URLs, in order.

    Text is NFC-normalized, stripped and its whitespace runs collapsed to one space, so a platform
    that trims or re-wraps the text still matches. ``None`` and ``""`` are the same text. Stable
    across processes and versions: changing it breaks in-doubt reconciliation of stored posts.
    """
    text = " ".join(unicodedata.normalize("NFC", message or "").split())
    canonical = json.dumps([text, list(media_urls)], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class PostPayload:
    """What an adapter sees of a post: plain values, no database objects."""

    post_id: str
    page_id: str
    platform: str
    message: str | None
    media: tuple[MediaItem, ...] = ()
    first_comment: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)  # e.g. tiktok_settings
    page_external_id: str | None = None
    credentials: Mapping[str, str] = field(default_factory=dict, repr=False)

    def fingerprint(self) -> str:
        """:func:`content_fingerprint` of this post's message and media URLs."""
        return content_fingerprint(self.message, (item.url for item in self.media))


def _as_utc(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {value!r}")
    return value.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Published:
    """The platform accepted the post; ``published_at`` is the platform's time, in UTC."""

    remote_id: str
    permalink: str | None
    published_at: datetime

    def __post_init__(self) -> None:
        object.__setattr__(self, "published_at", _as_utc(self.published_at, "published_at"))


@dataclass(frozen=True, slots=True)
class Comment:
    """A comment on a published post; ``parent_id`` is set on replies. ``created_at`` is UTC."""

    id: str
    post_remote_id: str
    message: str
    author_name: str | None
    author_username: str | None
    created_at: datetime
    parent_id: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "created_at", _as_utc(self.created_at, "created_at"))


@dataclass(frozen=True, slots=True)
class PlatformLimits:
    """What the platform itself reports at runtime; ``None`` means unknown."""

    per_hour: int | None = None
    per_24h: int | None = None


# --- errors -----------------------------------------------------------------------------------


class AdapterError(Exception):
    """Root of adapter errors. ``str(exc)`` is for humans; callers branch on the attributes."""

    default_code: ClassVar[str] = "ADAPTER_ERROR"

    def __init__(
        self,
        message: str = "",
        *,
        code: str | None = None,
        http_status: int | None = None,
        excerpt: str | None = None,
    ) -> None:
        self.code: str = code or self.default_code
        self.message: str = message or self.code
        super().__init__(self.message)
        self.http_status: int | None = http_status
        self.excerpt: str | None = None if excerpt is None else excerpt[:EXCERPT_MAX_CHARS]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, code={self.code!r}, "
            f"http_status={self.http_status!r})"
        )


class RetryableError(AdapterError):
    """The request provably did not take effect; try again, no sooner than ``retry_after`` s."""

    default_code = "TRANSIENT"

    def __init__(
        self,
        message: str = "",
        *,
        code: str | None = None,
        retry_after: float | timedelta | None = None,
        http_status: int | None = None,
        excerpt: str | None = None,
    ) -> None:
        super().__init__(message, code=code, http_status=http_status, excerpt=excerpt)
        if isinstance(retry_after, timedelta):
            retry_after = retry_after.total_seconds()
        self.retry_after: float | None = (
            None if retry_after is None else max(0.0, float(retry_after))
        )


class AmbiguousError(AdapterError):
    """The request may have taken effect: reconcile with ``find_published``, never blind-retry."""

    default_code = "AMBIGUOUS"


class PermanentError(AdapterError):
    """Retrying cannot help; ``code`` is the platform's code where it gave one."""

    default_code = "PERMANENT"


class AuthError(PermanentError):
    """The page's credentials are expired or revoked: it needs a re-connect."""

    default_code = "AUTH_EXPIRED"


class UnsupportedAction(AdapterError):
    """The platform cannot do this (including telling whether a post went out)."""

    default_code = "UNSUPPORTED"


def error_class(exc: BaseException) -> ErrorClass:
    """The attempt log's name for ``exc``'s class; anything unclassified is ``"unknown"``."""
    if isinstance(exc, AuthError):
        return "auth"
    if isinstance(exc, PermanentError):
        return "permanent"
    if isinstance(exc, RetryableError):
        return "retryable"
    if isinstance(exc, AmbiguousError):
        return "ambiguous"
    if isinstance(exc, UnsupportedAction):
        return "unsupported"
    return "unknown"


# --- the contract -----------------------------------------------------------------------------


@runtime_checkable
class Adapter(Protocol):
    """One platform. Methods raise only :class:`AdapterError` subclasses (and cancellation)."""

    platform: str

    async def publish(self, post: PostPayload) -> Published:
        """Publish ``post``; the one irreversible call. Ambiguous outcomes raise AmbiguousError."""
        ...

    async def find_published(
        self,
        post: PostPayload,
        since: datetime,
        exclude_remote_ids: AbstractSet[str] = frozenset(),
    ) -> Published | None:
        """Find ``post`` by fingerprint among the page's posts published at/after ``since``.

        Remote ids in ``exclude_remote_ids`` (already attributed to other posts) are ignored.
        Returns ``None`` when the platform can tell it is not there; raises
        :class:`UnsupportedAction` when the platform cannot tell.
        """
        ...

    async def post_comment(self, post: PostPayload, remote_id: str, message: str) -> Comment:
        """Comment as the page on its published post ``remote_id``."""
        ...

    async def list_comments(
        self, post: PostPayload, remote_id: str, since: datetime | None = None
    ) -> list[Comment]:
        """Comments (replies included) on ``remote_id`` created at/after ``since``, oldest first."""
        ...

    async def reply_to_comment(self, post: PostPayload, comment_id: str, message: str) -> Comment:
        """Reply as the page to ``comment_id``."""
        ...

    async def refresh_credentials(self, credentials: Mapping[str, str]) -> Mapping[str, str]:
        """Credentials to store in place of ``credentials``; AuthError if a re-connect is needed."""
        ...

    def limits(self) -> PlatformLimits:
        """What the platform last reported about its own limits; no I/O."""
        ...

    def validate(self, post: PostPayload) -> list[str]:
        """Human-readable reasons the platform would refuse ``post``; empty = publishable.

        Pure: no I/O, no clock.
        """
        ...

    async def aclose(self) -> None:
        """Release the adapter's resources (HTTP client, files). Safe to call twice."""
        ...
