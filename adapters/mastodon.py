"""Mastodon (per-instance REST API; platforms.md §7).

Publishing: every media item through ``POST /api/v2/media`` (200 = processed; 202 = poll
``GET /api/v1/media/:id`` until 200, 206 meaning "still processing"), then one
``POST /api/v1/statuses`` with an ``Idempotency-Key`` derived from the post id and content, so a
retry after an ambiguous failure returns the first status instead of a second one (the instance
keeps keys about an hour). Media polls wait through the injected ``sleep`` and never count as
tries; an upload is remembered per post, so a later try polls it again instead of re-uploading.

Credentials (from ``page connect mastodon``): ``instance``, ``access_token``, ``account_id``,
``acct``. Tokens do not expire; on a 401 the adapter re-reads the stored credentials once (a
re-connect may have replaced them), then raises AuthError. ``[platforms.mastodon] api_base``,
when set, replaces every page's instance (tests, single-instance deployments).

Instance limits come from ``GET /api/v2/instance`` (``configuration``), read once per instance
and then used by :meth:`MastodonAdapter.validate` and reported by
:meth:`MastodonAdapter.instance_limits`.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import ipaddress
import re
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from adapters import _http, _text, base

PAGE_SIZE = 40
MAX_PAGES = 5  # find_published looks at most this many pages of the account's statuses
IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp", "image/heic", "image/heif")
VIDEO_TYPES = ("video/mp4", "video/quicktime", "video/webm")


@dataclass(frozen=True, slots=True)
class InstanceLimits:
    """``configuration`` of ``GET /api/v2/instance``; defaults are Mastodon's own."""

    max_characters: int = 500
    max_media_attachments: int = 4
    characters_reserved_per_url: int = 23
    supported_mime_types: tuple[str, ...] = IMAGE_TYPES + VIDEO_TYPES
    image_size_limit: int = 16_777_216
    video_size_limit: int = 103_809_024

    @classmethod
    def parse(cls, instance: Any) -> InstanceLimits:
        conf = instance.get("configuration", {}) if isinstance(instance, dict) else {}
        statuses = conf.get("statuses") or {}
        media = conf.get("media_attachments") or {}
        default = cls()
        mimes = media.get("supported_mime_types")
        return cls(
            max_characters=int(statuses.get("max_characters", default.max_characters)),
            max_media_attachments=int(
                statuses.get("max_media_attachments", default.max_media_attachments)
            ),
            characters_reserved_per_url=int(
                statuses.get("characters_reserved_per_url", default.characters_reserved_per_url)
            ),
            supported_mime_types=tuple(mimes) if mimes else default.supported_mime_types,
            image_size_limit=int(media.get("image_size_limit", default.image_size_limit)),
            video_size_limit=int(media.get("video_size_limit", default.video_size_limit)),
        )


@dataclass(frozen=True, slots=True)
class _Page:
    base: str
    token: str = field(repr=False)
    account_id: str


def normalize_instance(url: str) -> str:
    """``https://host[:port]`` of an instance given as a URL or a bare host name. Plain http is
    accepted for loopback hosts only (local instances and tests)."""
    text = url.strip()
    if "://" not in text:
        text = "https://" + text
    parts = urlsplit(text)
    host = parts.hostname or ""
    if not host or parts.username or parts.password:
        raise ValueError(f"not an instance URL: {url!r}")
    if parts.scheme == "http" and not _loopback(host):
        raise ValueError("an instance URL must be https (http only for 127.0.0.1/localhost)")
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"not an instance URL: {url!r}")
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _error(body: Any) -> tuple[str | None, str | None]:
    """Mastodon's envelope has no code ("the HTTP status code is the important part")."""
    if isinstance(body, dict):
        message = body.get("error_description") or body.get("error")
        return None, str(message) if message else None
    return None, None


def plain_text(content: str) -> str:
    """A status's HTML ``content`` as the text that was posted (links and mentions keep their
    visible text; remote mentions lose their domain, as in :func:`comparable`)."""
    text = re.sub(r"<br\s*/?>", "\n", content)
    text = re.sub(r"</p>\s*<p[^>]*>", "\n\n", text)
    return html.unescape(re.sub(r"<[^>]+>", "", text))


_REMOTE = re.compile(r"(?<![\w@/])(@\w+(?:[.-]\w+)*)@[\w-]+(?:\.[\w-]+)+")


def comparable(text: str | None) -> str:
    """Text normalized the way both sides can agree on: whitespace collapsed, mentions local."""
    return " ".join(_REMOTE.sub(r"\1", text or "").split())


class MastodonAdapter:
    """The platform ``"mastodon"``; implements :class:`adapters.base.Adapter`."""

    platform: str = "mastodon"

    def __init__(
        self,
        credentials: _http.CredentialStore,
        *,
        now: _http.Now,
        fetch_media: _http.MediaFetcher = _http.no_media,
        api_base: str = "",
        timeouts: _http.Timeouts | None = None,
        sleep: _http.Sleep = asyncio.sleep,
        transport: httpx.AsyncBaseTransport | None = None,
        media_poll_seconds: float = 2.0,
        media_poll_max_seconds: float = 300.0,
    ) -> None:
        self._store = credentials
        self._now = now
        self._fetch = fetch_media
        self._api_base = api_base.rstrip("/")
        self._timeouts = timeouts or _http.Timeouts()
        self._sleep = sleep
        self._transport = transport
        self._poll = media_poll_seconds
        self._poll_max = media_poll_max_seconds
        self._client: httpx.AsyncClient | None = None
        self._pages: dict[str, _Page] = {}
        self._instances: dict[str, InstanceLimits] = {}
        self._uploads = _http.BoundedCache(1024)  # (post, index, url) -> [media id, ready]

    # --- plumbing -----------------------------------------------------------------------------

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = _http.make_client(self._timeouts, self._transport)
        return self._client

    async def _page(self, page_id: str, *, reload: bool = False) -> _Page:
        if reload or page_id not in self._pages:
            creds = await self._store.load(page_id)
            try:
                base_url = self._api_base or normalize_instance(creds["instance"])
                page = _Page(base_url, creds["access_token"], creds["account_id"])
            except (KeyError, ValueError) as exc:
                raise base.AuthError(
                    "mastodon: the page's credentials are incomplete", code="NOT_CONNECTED"
                ) from exc
            self._pages[page_id] = page
        return self._pages[page_id]

    async def _call(
        self, page_id: str, method: str, path: str, *, final: bool, what: str, **request: Any
    ) -> httpx.Response:
        """One authenticated request; on a 401 the stored credentials are read again once."""
        page = await self._page(page_id)
        headers = dict(request.pop("headers", {}))
        for attempt in (1, 2):
            headers["Authorization"] = f"Bearer {page.token}"
            response = await _http.send(
                self.client,
                method,
                page.base + path,
                final=final,
                what=what,
                headers=headers,
                **request,
            )
            if response.is_success:
                return response
            if response.status_code == 401 and attempt == 1:
                fresh = await self._page(page_id, reload=True)
                if fresh.token != page.token:
                    page = fresh
                    continue
            break
        raise _http.status_error(response, final=final, now=self._now(), what=what, parse=_error)

    async def _json(self, page_id: str, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._call(page_id, method, path, **kwargs)
        data = _http.body_json(response)
        if data is None:
            raise _http.unreadable(response, final=kwargs["final"], what=kwargs["what"])
        return data

    async def _limits(self, page_id: str) -> InstanceLimits:
        page = await self._page(page_id)
        if page.base not in self._instances:
            data = await self._json(
                page_id, "GET", "/api/v2/instance", final=False, what="instance"
            )
            self._instances[page.base] = InstanceLimits.parse(data)
        return self._instances[page.base]

    def instance_limits(self, page_id: str) -> InstanceLimits | None:
        """The limits the page's instance reported (None until the adapter has asked it)."""
        page = self._pages.get(page_id)
        return self._instances.get(page.base) if page is not None else None

    # --- publishing ---------------------------------------------------------------------------

    async def publish(self, post: base.PostPayload) -> base.Published:
        limits = await self._limits(post.page_id)
        problems = self._problems(post, limits)
        if problems:
            raise base.PermanentError("; ".join(problems), code="INVALID_POST")
        media_ids = [
            await self._upload(post, index, item, limits) for index, item in enumerate(post.media)
        ]
        body: dict[str, Any] = {"status": post.message or "", **_status_options(post.options)}
        if media_ids:
            body["media_ids"] = media_ids
        status = await self._json(
            post.page_id,
            "POST",
            "/api/v1/statuses",
            final=True,
            what="publish",
            json=body,
            headers={"Idempotency-Key": idempotency_key(post)},
        )
        return self._published(status, final=True)

    def _published(self, status: Any, *, final: bool) -> base.Published:
        if not isinstance(status, dict) or not status.get("id"):
            raise (base.AmbiguousError if final else base.RetryableError)(
                "mastodon: a status without an id", code="BAD_RESPONSE"
            )
        when = _http.parse_time(status.get("created_at"), self._now())
        return base.Published(str(status["id"]), status.get("url") or status.get("uri"), when)

    async def _upload(
        self, post: base.PostPayload, index: int, item: base.MediaItem, limits: InstanceLimits
    ) -> str:
        key = f"{post.post_id}\0{index}\0{item.url}"
        if key not in self._uploads:
            video = item.kind == "video"
            cap = limits.video_size_limit if video else limits.image_size_limit
            blob = await self._fetch(item, cap)
            if blob.mime_type not in limits.supported_mime_types:
                raise base.PermanentError(
                    f"mastodon: {blob.mime_type} is not a supported media type",
                    code="UNSUPPORTED_MEDIA",
                )
            name = f"media{index}.{blob.mime_type.rsplit('/', 1)[-1]}"
            response = await self._call(
                post.page_id,
                "POST",
                "/api/v2/media",
                final=False,
                what="media upload",
                files={"file": (name, blob.data, blob.mime_type)},
            )
            media = _http.json_object(response, final=False, what="media upload")
            ready = response.status_code == 200 and media.get("url") is not None
            self._uploads[key] = [str(media["id"]), ready]
        media_id, ready = self._uploads[key]
        if not ready:
            await self._processed(post.page_id, media_id, key)
        return str(media_id)

    async def _processed(self, page_id: str, media_id: str, key: str) -> None:
        """Poll until the media is processed; the waits are not tries."""
        waited = 0.0
        while True:
            response = await self._call(
                page_id, "GET", f"/api/v1/media/{media_id}", final=False, what="media status"
            )
            if response.status_code == 200:
                self._uploads[key][1] = True
                return
            if waited >= self._poll_max:
                raise base.RetryableError(
                    f"mastodon: media {media_id} still processing after {waited:.0f} s",
                    code="MEDIA_NOT_READY",
                    retry_after=self._poll * 10,
                    http_status=response.status_code,
                )
            await self._sleep(self._poll)
            waited += self._poll

    # --- reconciliation -----------------------------------------------------------------------

    async def find_published(
        self,
        post: base.PostPayload,
        since: datetime,
        exclude_remote_ids: AbstractSet[str] = frozenset(),
    ) -> base.Published | None:
        page = await self._page(post.page_id)
        wanted = comparable(post.message)
        params: dict[str, Any] = {"limit": PAGE_SIZE, "exclude_reblogs": "true"}
        for _ in range(MAX_PAGES):
            statuses = await self._json(
                post.page_id,
                "GET",
                f"/api/v1/accounts/{page.account_id}/statuses",
                final=False,
                what="list statuses",
                params=params,
            )
            if not isinstance(statuses, list):
                raise base.RetryableError("mastodon: statuses are not a list", code="BAD_RESPONSE")
            reached_older = False
            for status in statuses:
                created = _http.parse_time(status.get("created_at"), self._now())
                if created < since:
                    reached_older = True
                    continue
                if (
                    str(status.get("id")) not in exclude_remote_ids
                    and not status.get("in_reply_to_id")
                    and comparable(plain_text(status.get("content") or "")) == wanted
                    and len(status.get("media_attachments") or ()) == len(post.media)
                ):
                    return self._published(status, final=False)
            if reached_older or len(statuses) < PAGE_SIZE:
                return None
            params["max_id"] = statuses[-1]["id"]
        raise base.UnsupportedAction(
            f"mastodon: more than {PAGE_SIZE * MAX_PAGES} statuses since the attempt"
        )

    # --- comments -----------------------------------------------------------------------------

    async def _reply(
        self, post: base.PostPayload, to_id: str, message: str, root_id: str
    ) -> base.Comment:
        key = hashlib.sha256(f"{post.post_id}\0{to_id}\0{message}".encode()).hexdigest()[:32]
        status = await self._json(
            post.page_id,
            "POST",
            "/api/v1/statuses",
            final=True,
            what="reply",
            json={"status": message, "in_reply_to_id": to_id},
            headers={"Idempotency-Key": f"postd-reply-{key}"},
        )
        return self._comment(status, root_id)

    async def post_comment(
        self, post: base.PostPayload, remote_id: str, message: str
    ) -> base.Comment:
        return await self._reply(post, remote_id, message, remote_id)

    async def reply_to_comment(
        self, post: base.PostPayload, comment_id: str, message: str
    ) -> base.Comment:
        context = await self._json(
            post.page_id,
            "GET",
            f"/api/v1/statuses/{comment_id}/context",
            final=False,
            what="comment context",
        )
        ancestors = context.get("ancestors") if isinstance(context, dict) else None
        root = str(ancestors[0]["id"]) if ancestors else comment_id
        return await self._reply(post, comment_id, message, root)

    async def list_comments(
        self, post: base.PostPayload, remote_id: str, since: datetime | None = None
    ) -> list[base.Comment]:
        context = await self._json(
            post.page_id,
            "GET",
            f"/api/v1/statuses/{remote_id}/context",
            final=False,
            what="list comments",
        )
        descendants = context.get("descendants", []) if isinstance(context, dict) else []
        comments = [self._comment(status, remote_id) for status in descendants]
        if since is not None:
            comments = [c for c in comments if c.created_at >= since]
        return sorted(comments, key=lambda c: c.created_at)

    def _comment(self, status: Any, root_id: str) -> base.Comment:
        if not isinstance(status, dict) or not status.get("id"):
            raise base.RetryableError("mastodon: a status without an id", code="BAD_RESPONSE")
        account = status.get("account") or {}
        parent = status.get("in_reply_to_id")
        return base.Comment(
            id=str(status["id"]),
            post_remote_id=root_id,
            message=plain_text(status.get("content") or ""),
            author_name=account.get("display_name") or None,
            author_username=account.get("acct"),
            created_at=_http.parse_time(status.get("created_at"), self._now()),
            parent_id=None if parent in (None, root_id) else str(parent),
        )

    # --- the rest of the contract -------------------------------------------------------------

    async def refresh_credentials(self, credentials: Mapping[str, str]) -> Mapping[str, str]:
        """Mastodon tokens do not expire: this checks the token and returns it unchanged."""
        instance = self._api_base or credentials.get("instance", "")
        connected = await connect(
            instance, credentials.get("access_token", ""), client=self.client, now=self._now
        )
        return {**credentials, "acct": connected.username}

    def limits(self) -> base.PlatformLimits:
        return base.PlatformLimits()  # Mastodon reports no publish caps

    def validate(self, post: base.PostPayload) -> list[str]:
        page = self._pages.get(post.page_id)
        known = self._instances.get(page.base) if page is not None else None
        return self._problems(post, known or InstanceLimits())

    def _problems(self, post: base.PostPayload, limits: InstanceLimits) -> list[str]:
        problems = []
        text = post.message or ""
        if not text.strip() and not post.media:
            problems.append("a Mastodon status needs text or media")
        spoiler = str(_status_options(post.options).get("spoiler_text", ""))
        length = _text.mastodon_length(text, spoiler, limits.characters_reserved_per_url)
        if length > limits.max_characters:
            problems.append(
                f"text is {length} characters as Mastodon counts them (a URL as "
                f"{limits.characters_reserved_per_url}); the instance allows "
                f"{limits.max_characters}"
            )
        if len(post.media) > limits.max_media_attachments:
            problems.append(
                f"{len(post.media)} media; the instance allows {limits.max_media_attachments}"
            )
        kinds = [item.kind for item in post.media]
        if any(kind not in ("photo", "video") for kind in kinds):
            problems.append("media must be photos or videos")
        if "video" in kinds and len(kinds) > 1:
            problems.append("a video cannot be combined with other media")
        return problems

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _utcnow() -> datetime:
    return datetime.now(UTC)


def idempotency_key(post: base.PostPayload) -> str:
    """Stable for one post and content: a retry of the same post reuses it; an edited post
    gets another."""
    return f"postd-{post.post_id}-{post.fingerprint()[:16]}"


def _status_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The documented status fields a post may set through ``options["mastodon"]``."""
    chosen = options.get("mastodon") if isinstance(options, Mapping) else None
    if not isinstance(chosen, Mapping):
        return {}
    allowed = ("visibility", "spoiler_text", "sensitive", "language")
    return {k: chosen[k] for k in allowed if k in chosen}


async def connect(
    instance: str,
    token: str,
    *,
    timeouts: _http.Timeouts | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    client: httpx.AsyncClient | None = None,
    now: _http.Now | None = None,
) -> _http.Connected:
    """Verify ``token`` on ``instance`` (``GET /api/v1/accounts/verify_credentials``)."""
    try:
        base_url = normalize_instance(instance)
    except ValueError as exc:
        raise base.PermanentError(str(exc), code="INVALID_INSTANCE") from exc
    own = client is None
    client = client or _http.make_client(timeouts or _http.Timeouts(), transport)
    try:
        response = await _http.send(
            client,
            "GET",
            base_url + "/api/v1/accounts/verify_credentials",
            final=False,
            what="verify credentials",
            headers={"Authorization": f"Bearer {token}"},
        )
    finally:
        if own:
            await client.aclose()
    if not response.is_success:
        at = (now or _utcnow)()
        raise _http.status_error(response, final=False, now=at, what="verify", parse=_error)
    account = _http.json_object(response, final=False, what="verify credentials")
    if not account.get("id"):
        raise base.PermanentError("mastodon: no account in the answer", code="BAD_RESPONSE")
    acct = str(account.get("acct") or account.get("username") or account["id"])
    return _http.Connected(
        credentials={
            "instance": base_url,
            "access_token": token,
            "account_id": str(account["id"]),
            "acct": acct,
        },
        external_id=str(account["id"]),
        username=acct,
        name=str(account.get("display_name") or acct),
    )
