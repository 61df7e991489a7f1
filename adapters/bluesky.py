"""Bluesky (AT Protocol; platforms.md §8), against one PDS only: ``[platforms.bluesky] api_base``
(default the entryway https://bsky.social). Nothing is resolved through any other host: mentions
through the PDS's ``com.atproto.identity.resolveHandle``, replies through its proxied
``app.bsky.feed.getPostThread``.

Publishing: ``com.atproto.repo.uploadBlob`` per media item, then one
``com.atproto.repo.createRecord`` of an ``app.bsky.feed.post`` with rich-text facets (links,
mentions, hashtags) in UTF-8 byte offsets (:mod:`adapters._text`). Text is checked against 300
graphemes and 3000 bytes before anything is sent.

Sessions: ``page connect bluesky`` calls ``createSession`` once and stores ``did``, ``handle``,
``accessJwt`` and ``refreshJwt`` (never the app password). The adapter keeps each page's session
in memory, refreshes it (``refreshSession``) when the access token is about to expire or is
refused, and saves the rotated tokens at once. A page's calls are serialized around a refresh,
and a refresh token that was refused is not tried again until the stored credentials change
(a re-connect), so a dead session costs one request, never a login per post.

Reconciliation reads the repo itself (``com.atproto.repo.listRecords``, read-after-write on the
PDS) and matches the post's text and media count.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import structlog

from adapters import _http, _text, base

DEFAULT_API_BASE = "https://bsky.social"
POST = "app.bsky.feed.post"
MAX_GRAPHEMES = 300
MAX_BYTES = 3000
MAX_IMAGES = 4
IMAGE_MAX_BYTES = 1_000_000
VIDEO_MAX_BYTES = 50_000_000  # the PDS's blob limit
REFRESH_MARGIN_SECONDS = 60
PAGE_SIZE = 100
MAX_PAGES = 5
# Error names that mean "these credentials will not do" (after one refresh).
AUTH_ERRORS = frozenset(
    {
        "ExpiredToken",
        "InvalidToken",
        "AuthMissing",
        "AuthenticationRequired",
        "AccountTakedown",
        "AccountDeactivated",
        "AuthFactorTokenRequired",
    }
)

log = structlog.get_logger("postd.adapters.bluesky")


def _error(body: Any) -> tuple[str | None, str | None]:
    """XRPC errors: ``{"error": "<Name>", "message": "..."}``."""
    if isinstance(body, dict):
        name, message = body.get("error"), body.get("message")
        return (str(name) if name else None), (str(message) if message else None)
    return None, None


@dataclass(frozen=True, slots=True)
class _Session:
    did: str
    handle: str
    access: str = field(repr=False)
    refresh: str = field(repr=False)

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> _Session:
        try:
            return cls(
                str(data["did"]),
                str(data.get("handle", "")),
                str(data["accessJwt"]),
                str(data["refreshJwt"]),
            )
        except KeyError as exc:
            raise base.AuthError("bluesky: the page has no session", code="NOT_CONNECTED") from exc

    def credentials(self) -> dict[str, str]:
        return {
            "did": self.did,
            "handle": self.handle,
            "accessJwt": self.access,
            "refreshJwt": self.refresh,
        }


def jwt_expiry(token: str) -> datetime | None:
    """The ``exp`` claim of a JWT (not verified: only to refresh ahead of time)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return datetime.fromtimestamp(float(claims["exp"]), UTC)
    except (IndexError, KeyError, TypeError, ValueError):
        return None


def split_uri(uri: str) -> tuple[str, str, str]:
    """(repo, collection, rkey) of ``at://repo/collection/rkey``."""
    parts = uri.removeprefix("at://").split("/")
    if not uri.startswith("at://") or len(parts) != 3 or not all(parts):
        raise base.PermanentError(f"bluesky: not a record URI: {uri!r}", code="INVALID_URI")
    return parts[0], parts[1], parts[2]


def permalink(did: str, uri: str) -> str:
    return f"https://bsky.app/profile/{did}/post/{split_uri(uri)[2]}"


def _stamp(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _embed_count(record: Mapping[str, Any]) -> int:
    embed = record.get("embed") or {}
    if embed.get("$type") == "app.bsky.embed.images":
        return len(embed.get("images") or ())
    return 1 if embed.get("$type") == "app.bsky.embed.video" else 0


class BlueskyAdapter:
    """The platform ``"bluesky"``; implements :class:`adapters.base.Adapter`."""

    platform: str = "bluesky"

    def __init__(
        self,
        credentials: _http.CredentialStore,
        *,
        now: _http.Now,
        fetch_media: _http.MediaFetcher = _http.no_media,
        api_base: str = DEFAULT_API_BASE,
        timeouts: _http.Timeouts | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._store = credentials
        self._now = now
        self._fetch = fetch_media
        self._base = (api_base or DEFAULT_API_BASE).rstrip("/")
        self._timeouts = timeouts or _http.Timeouts()
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._sessions: dict[str, _Session] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._refused: dict[str, str] = {}  # page -> the refresh token the PDS refused
        self._dids = _http.BoundedCache(4096)  # handle -> did

    # --- plumbing -----------------------------------------------------------------------------

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = _http.make_client(self._timeouts, self._transport)
        return self._client

    def _url(self, nsid: str) -> str:
        return f"{self._base}/xrpc/{nsid}"

    def _raise(self, response: httpx.Response, *, final: bool, what: str) -> base.AdapterError:
        err = _http.status_error(response, final=final, now=self._now(), what=what, parse=_error)
        if err.code in AUTH_ERRORS and not isinstance(err, base.AuthError):
            return base.AuthError(
                err.message, code=err.code, http_status=err.http_status, excerpt=err.excerpt
            )
        return err

    async def _session(self, page_id: str) -> _Session:
        if page_id not in self._sessions:
            session = _Session.parse(await self._store.load(page_id))
            self._check_refused(page_id, session)
            self._sessions[page_id] = session
        return self._sessions[page_id]

    def _check_refused(self, page_id: str, session: _Session) -> None:
        """A session whose refresh token the PDS refused is dead until a re-connect."""
        if self._refused.get(page_id) == session.refresh:
            raise base.AuthError(
                "bluesky: the session expired and could not be refreshed: re-connect the page",
                code="SESSION_EXPIRED",
            )

    async def _xrpc(
        self, page_id: str, method: str, nsid: str, *, final: bool, what: str, **request: Any
    ) -> dict[str, Any]:
        """One authenticated call; refreshes the session ahead of expiry or once when refused."""
        session = await self._session(page_id)
        expiry = jwt_expiry(session.access)
        if expiry is not None and (expiry - self._now()).total_seconds() < REFRESH_MARGIN_SECONDS:
            session = await self._refresh(page_id, session)
        headers = dict(request.pop("headers", {}))
        for attempt in (1, 2):
            headers["Authorization"] = f"Bearer {session.access}"
            response = await _http.send(
                self.client,
                method,
                self._url(nsid),
                final=final,
                what=what,
                headers=headers,
                **request,
            )
            if response.is_success:
                return _http.json_object(response, final=final, what=what)
            err = self._raise(response, final=final, what=what)
            if attempt == 2 or not isinstance(err, base.AuthError):
                raise err
            session = await self._refresh(page_id, session)
        raise AssertionError("unreachable")

    def _lock(self, page_id: str) -> asyncio.Lock:
        return self._locks.setdefault(page_id, asyncio.Lock())

    async def _refresh(self, page_id: str, stale: _Session) -> _Session:
        """A usable session after ``stale`` was refused or is expiring: one that another task or
        process already got, or a refreshed one (saved before use)."""
        async with self._lock(page_id):
            current = self._sessions.get(page_id)
            if current is not None and current.access != stale.access:
                return current
            stored = _Session.parse(await self._store.load(page_id))
            if stored.access != stale.access:
                self._sessions[page_id] = stored
                return stored
            self._check_refused(page_id, stored)
            try:
                fresh = await self._refresh_session(stored.refresh)
            except base.AuthError:
                self._refused[page_id] = stored.refresh
                self._sessions.pop(page_id, None)
                raise
            self._sessions[page_id] = fresh
            try:
                await self._store.save(page_id, fresh.credentials())
            except Exception as exc:  # the rotated tokens live on in memory; say so loudly
                log.error("credentials_save_failed", page_id=page_id, error=repr(exc))
            return fresh

    async def _refresh_session(self, refresh_jwt: str) -> _Session:
        nsid = "com.atproto.server.refreshSession"
        response = await _http.send(
            self.client,
            "POST",
            self._url(nsid),
            final=False,
            what="refresh session",
            headers={"Authorization": f"Bearer {refresh_jwt}"},
        )
        if not response.is_success:
            raise self._raise(response, final=False, what="refresh session")
        data = _http.json_object(response, final=False, what="refresh session")
        return _Session.parse(data)

    # --- publishing ---------------------------------------------------------------------------

    async def publish(self, post: base.PostPayload) -> base.Published:
        problems = self.validate(post)
        if problems:
            raise base.PermanentError("; ".join(problems), code="INVALID_POST")
        record = await self._record(post.message or "", post.options)
        embed = await self._embed(post)
        if embed is not None:
            record["embed"] = embed
        return await self._create(post.page_id, record, what="publish")

    async def _create(self, page_id: str, record: dict[str, Any], *, what: str) -> base.Published:
        session = await self._session(page_id)
        data = await self._xrpc(
            page_id,
            "POST",
            "com.atproto.repo.createRecord",
            final=True,
            what=what,
            json={"repo": session.did, "collection": POST, "record": record},
        )
        uri = data.get("uri")
        if not isinstance(uri, str) or not uri.startswith("at://"):
            raise base.AmbiguousError("bluesky: createRecord gave no URI", code="BAD_RESPONSE")
        created = _http.parse_time(record.get("createdAt"), self._now())
        return base.Published(uri, permalink(session.did, uri), created)

    async def _record(self, text: str, options: Mapping[str, Any]) -> dict[str, Any]:
        record: dict[str, Any] = {"$type": POST, "text": text, "createdAt": _stamp(self._now())}
        facets = await self._facets(text)
        if facets:
            record["facets"] = facets
        chosen = options.get("bluesky") if isinstance(options, Mapping) else None
        if isinstance(chosen, Mapping) and chosen.get("langs"):
            record["langs"] = list(chosen["langs"])[:3]
        return record

    async def _facets(self, text: str) -> list[dict[str, Any]]:
        facets = []
        for span in _text.facet_spans(text):
            if span.kind == "link":
                feature = {"$type": "app.bsky.richtext.facet#link", "uri": span.value}
            elif span.kind == "tag":
                feature = {"$type": "app.bsky.richtext.facet#tag", "tag": span.value}
            else:
                did = await self._resolve(span.value)
                if did is None:  # not a handle after all: it stays plain text
                    continue
                feature = {"$type": "app.bsky.richtext.facet#mention", "did": did}
            index = {"byteStart": span.byte_start, "byteEnd": span.byte_end}
            facets.append({"index": index, "features": [feature]})
        return facets

    async def _resolve(self, handle: str) -> str | None:
        if handle not in self._dids:
            nsid = "com.atproto.identity.resolveHandle"
            response = await _http.send(
                self.client,
                "GET",
                self._url(nsid),
                final=False,
                what="resolve handle",
                params={"handle": handle},
            )
            if response.status_code == 400:
                return None
            if not response.is_success:
                raise self._raise(response, final=False, what="resolve handle")
            did = _http.json_object(response, final=False, what="resolve handle").get("did")
            if not isinstance(did, str):
                return None
            self._dids[handle] = did
        return str(self._dids[handle])

    async def _embed(self, post: base.PostPayload) -> dict[str, Any] | None:
        if not post.media:
            return None
        blobs = []
        for item in post.media:
            cap = VIDEO_MAX_BYTES if item.kind == "video" else IMAGE_MAX_BYTES
            media = await self._fetch(item, cap)
            data = await self._xrpc(
                post.page_id,
                "POST",
                "com.atproto.repo.uploadBlob",
                final=False,
                what="upload blob",
                content=media.data,
                headers={"Content-Type": media.mime_type},
            )
            if not isinstance(data.get("blob"), dict):
                raise base.RetryableError("bluesky: uploadBlob gave no blob", code="BAD_RESPONSE")
            blobs.append(data["blob"])
        if post.media[0].kind == "video":
            return {"$type": "app.bsky.embed.video", "video": blobs[0]}
        images = [{"image": blob, "alt": ""} for blob in blobs]
        return {"$type": "app.bsky.embed.images", "images": images}

    # --- reconciliation -----------------------------------------------------------------------

    async def find_published(
        self,
        post: base.PostPayload,
        since: datetime,
        exclude_remote_ids: AbstractSet[str] = frozenset(),
    ) -> base.Published | None:
        session = await self._session(post.page_id)
        wanted = " ".join((post.message or "").split())
        params: dict[str, Any] = {"repo": session.did, "collection": POST, "limit": PAGE_SIZE}
        for _ in range(MAX_PAGES):
            data = await self._xrpc(
                post.page_id,
                "GET",
                "com.atproto.repo.listRecords",
                final=False,
                what="list records",
                params=params,
            )
            records = data.get("records") or []
            reached_older = False
            for item in records:
                value = item.get("value") or {}
                created = _http.parse_time(value.get("createdAt"), self._now())
                if created < since:
                    reached_older = True
                elif (
                    item.get("uri") not in exclude_remote_ids
                    and not value.get("reply")
                    and " ".join(str(value.get("text", "")).split()) == wanted
                    and _embed_count(value) == len(post.media)
                ):
                    uri = str(item["uri"])
                    return base.Published(uri, permalink(session.did, uri), created)
            params["cursor"] = data.get("cursor")
            if reached_older or not records or not params["cursor"]:
                return None
        raise base.UnsupportedAction(
            f"bluesky: more than {PAGE_SIZE * MAX_PAGES} posts since the attempt"
        )

    # --- comments -----------------------------------------------------------------------------

    async def _strong_ref(self, page_id: str, uri: str) -> tuple[dict[str, str], Any]:
        repo, collection, rkey = split_uri(uri)
        data = await self._xrpc(
            page_id,
            "GET",
            "com.atproto.repo.getRecord",
            final=False,
            what="get record",
            params={"repo": repo, "collection": collection, "rkey": rkey},
        )
        return {"uri": str(data["uri"]), "cid": str(data["cid"])}, data.get("value") or {}

    async def _reply(
        self, post: base.PostPayload, parent_uri: str, message: str, what: str
    ) -> base.Comment:
        parent, value = await self._strong_ref(post.page_id, parent_uri)
        root = (value.get("reply") or {}).get("root") or parent
        record = await self._record(message, post.options)
        record["reply"] = {"root": {"uri": root["uri"], "cid": root["cid"]}, "parent": parent}
        published = await self._create(post.page_id, record, what=what)
        session = await self._session(post.page_id)
        return base.Comment(
            id=published.remote_id,
            post_remote_id=str(root["uri"]),
            message=message,
            author_name=None,
            author_username=session.handle or session.did,
            created_at=published.published_at,
            parent_id=None if parent["uri"] == root["uri"] else parent["uri"],
        )

    async def post_comment(
        self, post: base.PostPayload, remote_id: str, message: str
    ) -> base.Comment:
        return await self._reply(post, remote_id, message, "comment")

    async def reply_to_comment(
        self, post: base.PostPayload, comment_id: str, message: str
    ) -> base.Comment:
        return await self._reply(post, comment_id, message, "reply")

    async def list_comments(
        self, post: base.PostPayload, remote_id: str, since: datetime | None = None
    ) -> list[base.Comment]:
        data = await self._xrpc(
            post.page_id,
            "GET",
            "app.bsky.feed.getPostThread",
            final=False,
            what="list comments",
            params={"uri": remote_id, "depth": 10, "parentHeight": 0},
        )
        comments: list[base.Comment] = []
        self._walk(data.get("thread") or {}, remote_id, remote_id, comments)
        if since is not None:
            comments = [c for c in comments if c.created_at >= since]
        return sorted(comments, key=lambda c: c.created_at)

    def _walk(self, node: Any, root: str, parent: str, out: list[base.Comment]) -> None:
        for reply in node.get("replies") or ():
            view = reply.get("post") if isinstance(reply, dict) else None
            if not isinstance(view, dict) or not view.get("uri"):
                continue  # notFoundPost / blockedPost
            value, author = view.get("record") or {}, view.get("author") or {}
            created = _http.parse_time(value.get("createdAt") or view.get("indexedAt"), self._now())
            out.append(
                base.Comment(
                    id=str(view["uri"]),
                    post_remote_id=root,
                    message=str(value.get("text", "")),
                    author_name=author.get("displayName") or None,
                    author_username=author.get("handle"),
                    created_at=created,
                    parent_id=None if parent == root else parent,
                )
            )
            self._walk(reply, root, str(view["uri"]), out)

    # --- the rest of the contract -------------------------------------------------------------

    async def refresh_credentials(self, credentials: Mapping[str, str]) -> Mapping[str, str]:
        """A refreshed session (``refreshSession``); AuthError when the PDS refuses it."""
        fresh = await self._refresh_session(_Session.parse(credentials).refresh)
        return {**credentials, **fresh.credentials()}

    def limits(self) -> base.PlatformLimits:
        return base.PlatformLimits()  # repo write points are far above any guardrail

    def validate(self, post: base.PostPayload) -> list[str]:
        problems = []
        text = post.message or ""
        if not text.strip() and not post.media:
            problems.append("a Bluesky post needs text or media")
        count = _text.graphemes(text)
        if count > MAX_GRAPHEMES:
            problems.append(f"text is {count} graphemes; Bluesky allows {MAX_GRAPHEMES}")
        size = len(text.encode("utf-8"))
        if size > MAX_BYTES:
            problems.append(f"text is {size} bytes in UTF-8; Bluesky allows {MAX_BYTES}")
        kinds = [item.kind for item in post.media]
        if any(kind not in ("photo", "video") for kind in kinds):
            problems.append("media must be photos or videos")
        if "video" in kinds and len(kinds) > 1:
            problems.append("a Bluesky post has one video or up to 4 images, not both")
        elif len(kinds) > MAX_IMAGES:
            problems.append(f"{len(kinds)} images; Bluesky allows {MAX_IMAGES}")
        return problems

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


async def connect(
    handle: str,
    app_password: str,
    *,
    api_base: str = DEFAULT_API_BASE,
    timeouts: _http.Timeouts | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    now: _http.Now | None = None,
) -> _http.Connected:
    """Log in once (``createSession``); the app password is not part of what is returned."""
    url = f"{(api_base or DEFAULT_API_BASE).rstrip('/')}/xrpc/com.atproto.server.createSession"
    async with _http.make_client(timeouts or _http.Timeouts(), transport) as client:
        response = await _http.send(
            client,
            "POST",
            url,
            final=False,
            what="create session",
            json={"identifier": handle.removeprefix("@"), "password": app_password},
        )
    if not response.is_success:
        at = (now or (lambda: datetime.now(UTC)))()
        err = _http.status_error(response, final=False, now=at, what="login", parse=_error)
        if err.code in AUTH_ERRORS or err.http_status == 401:
            raise base.AuthError(err.message, code=err.code, http_status=err.http_status)
        raise err
    session = _Session.parse(_http.json_object(response, final=False, what="create session"))
    return _http.Connected(
        credentials=session.credentials(),
        external_id=session.did,
        username=session.handle,
        name=session.handle or session.did,
    )
