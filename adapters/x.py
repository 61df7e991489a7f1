"""X (API v2; platforms.md §5). postd calls the platform "twitter".

Publishing: each image through ``POST /2/media/upload`` (JSON, base64 ``media``,
``media_category=tweet_image``), or one video through the chunked upload
(:mod:`adapters.x_media`: initialize, append, finalize, then STATUS polls through the injected
``sleep``, which are not tries), then one ``POST /2/tweets`` (the final call: a timeout or 5xx is
ambiguous; X has no idempotency key, so reconciliation lists ``GET /2/users/{id}/tweets``).
Uploaded media ids are remembered per (post, media), so a later try does not upload again.
Comments are reply posts (``reply.in_reply_to_tweet_id``), listed by recent search on
``conversation_id:<root>`` (7-day window).

Credentials (from the OAuth 2.0 PKCE connect flow, ``daemon/oauth.py``): ``access_token``,
``refresh_token``, ``expires_at`` (epoch seconds), ``user_id``, ``username``. Access tokens live
two hours; the adapter refreshes :data:`REFRESH_EARLY` before expiry and saves the rotated pair at
once, under a per-page lock so two calls never spend one refresh token twice. A 401 refreshes once
more, then raises AuthError. Only a refusal of the refresh token itself (400
``invalid_grant``/``invalid_request``, 401) is an AuthError; 5xx, 429 and timeouts of the token
endpoint are RetryableError, so a passing outage never marks a page for re-connect.
"""

from __future__ import annotations

import asyncio
import base64
import html
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from datetime import datetime, timedelta
from typing import Any

import httpx

from adapters import _http, _text, _tokens, base, x_media, x_text

TOKEN_PATH = "/2/oauth2/token"
# X's authorization page lives on x.com, not on the API host (xdk: authorization_base_url
# "https://x.com/i"); against any other api_base (a fake, a proxy) it is <api_base>/i/...
AUTHORIZE_URL = "https://x.com/i/oauth2/authorize"
PRODUCTION_API = "https://api.x.com"
SCOPES = ("tweet.read", "tweet.write", "users.read", "media.write", "offline.access")
REFRESH_EARLY = timedelta(minutes=5)
PAGE_SIZE = 100
MAX_PAGES = 5
IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp")
IMAGE_MAX_BYTES = 5 * 1024 * 1024
TWEET_FIELDS = "created_at,conversation_id,author_id,referenced_tweets,attachments"


def authorize_url(api_base: str) -> str:
    base_url = api_base.rstrip("/")
    return AUTHORIZE_URL if base_url == PRODUCTION_API else f"{base_url}/i/oauth2/authorize"


def _error(body: Any) -> tuple[str | None, str | None]:
    """X's problem JSON (``type``/``title``/``detail``) or OAuth error (``error``)."""
    if not isinstance(body, dict):
        return None, None
    if "error" in body and isinstance(body["error"], str):
        return body["error"], body.get("error_description")
    kind = str(body.get("type") or "")
    detail = body.get("detail") or body.get("title")
    if "duplicate content" in str(detail).lower():
        return "DUPLICATE_CONTENT", str(detail)
    code = kind.rsplit("/", 1)[-1] if kind and kind != "about:blank" else None
    return code, str(detail) if detail else None


OAuthApp = _http.OAuthApp  # the operator's app ([platforms.<name>])


# --- the token endpoint -----------------------------------------------------------------------


async def token_request(
    client: httpx.AsyncClient, api_base: str, app: OAuthApp, form: Mapping[str, str], now: datetime
) -> dict[str, Any]:
    """``POST /2/oauth2/token``; confidential apps authenticate with Basic (X's docs).
    Refusals of the grant are AuthError, everything transient RetryableError."""
    auth = (app.client_id, app.client_secret) if app.client_secret else None
    response = await _http.send(
        client,
        "POST",
        api_base.rstrip("/") + TOKEN_PATH,
        final=False,
        what="token",
        data={**form, "client_id": app.client_id},
        auth=auth,
    )
    if response.is_success:
        return _http.json_object(response, final=False, what="token")
    error = _http.status_error(response, final=False, now=now, what="x token", parse=_error)
    refused = response.status_code == 401 or (
        response.status_code == 400 and error.code in ("invalid_grant", "invalid_request")
    )
    if refused:
        raise base.AuthError(
            error.message, code="REFRESH_REFUSED", http_status=error.http_status
        ) from error
    raise error


def token_credentials(data: Mapping[str, Any], now: datetime) -> dict[str, str]:
    """The stored form of a token answer (``expires_at`` in epoch seconds)."""
    return _tokens.credentials_of(data, now, what="x token", default_seconds=7200)


async def connect(
    code: str,
    verifier: str,
    redirect_uri: str,
    *,
    api_base: str,
    app: OAuthApp,
    now: _http.Now,
    timeouts: _http.Timeouts | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> _http.Connected:
    """Exchange an authorization ``code`` (PKCE ``verifier``) and read the account."""
    async with _http.make_client(timeouts or _http.Timeouts(), transport) as client:
        form = _tokens.code_form(code, verifier, redirect_uri)
        creds = token_credentials(await token_request(client, api_base, app, form, now()), now())
        response = await _http.send(
            client,
            "GET",
            api_base.rstrip("/") + "/2/users/me",
            final=False,
            what="users/me",
            headers={"Authorization": f"Bearer {creds['access_token']}"},
        )
    if not response.is_success:
        raise _http.status_error(response, final=False, now=now(), what="users/me", parse=_error)
    user = _http.json_object(response, final=False, what="users/me").get("data") or {}
    if not user.get("id"):
        raise base.PermanentError("x: no user in the answer", code="BAD_RESPONSE")
    username = str(user.get("username") or user["id"])
    return _http.Connected(
        credentials={**creds, "user_id": str(user["id"]), "username": username},
        external_id=str(user["id"]),
        username=username,
        name=str(user.get("name") or username),
    )


def comparable(text: str | None) -> str:
    """Text both sides agree on: X rewrites URLs to t.co, appends a t.co link per media and
    escapes ``&<>``; so URLs are dropped, entities unescaped and whitespace collapsed."""
    plain = html.unescape(text or "")
    spans = _text._urls(plain)
    for start, end in reversed(spans):
        plain = plain[:start] + " " + plain[end:]
    return " ".join(plain.split())


class _Page(_tokens.Tokens):
    @property
    def user_id(self) -> str:
        return self.creds.get("user_id", "")


class XAdapter:
    """The platform ``"twitter"`` (X API v2); implements :class:`adapters.base.Adapter`."""

    platform: str = "twitter"

    def __init__(
        self,
        credentials: _http.CredentialStore,
        *,
        now: _http.Now,
        app: OAuthApp,
        fetch_media: _http.MediaFetcher = _http.no_media,
        api_base: str = PRODUCTION_API,
        timeouts: _http.Timeouts | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: _http.Sleep = asyncio.sleep,
        media_poll_seconds: float = 2.0,
        media_poll_max_seconds: float = 300.0,
        video_chunk_bytes: int = x_media.CHUNK_BYTES,
    ) -> None:
        self._store = credentials
        self._now = now
        self._app = app
        self._fetch = fetch_media
        self._api_base = api_base.rstrip("/")
        self._timeouts = timeouts or _http.Timeouts()
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._tokens = _tokens.PageTokens(
            credentials,
            now,
            self.refresh_credentials,
            _Page,
            platform="x",
            early=REFRESH_EARLY,
            required=("access_token", "user_id"),
        )
        self._rate: dict[str, _http.RateLimit] = {}
        self._uploads = _http.BoundedCache(1024)  # (post, index, url) -> media id / Upload
        self._video = x_media.VideoUploader(
            self._call,
            fetch_media,
            now,
            sleep,
            self._uploads,
            poll_seconds=media_poll_seconds,
            poll_max_seconds=media_poll_max_seconds,
            chunk_bytes=video_chunk_bytes,
        )

    # --- plumbing -----------------------------------------------------------------------------

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = _http.make_client(self._timeouts, self._transport)
        return self._client

    async def _call(
        self, page_id: str, method: str, path: str, *, final: bool, what: str, **request: Any
    ) -> httpx.Response:
        """One authenticated request; a 401 refreshes the token once and tries again."""

        async def send(page: _Page) -> httpx.Response:
            response = await _http.send(
                self.client,
                method,
                self._api_base + path,
                final=final,
                what=what,
                headers={"Authorization": f"Bearer {page.token}"},
                **request,
            )
            seen = _http.rate_limit(response.headers, self._now())
            if seen is not None:
                self._rate[what] = seen
            return response

        response = await self._tokens.send(page_id, send)
        if response.is_success:
            return response
        if final and response.status_code == 503:
            # X sometimes creates the post and answers 5xx, 503 included (platforms.md §5)
            error = _http.status_error(
                response, final=False, now=self._now(), what=what, parse=_error
            )
            raise base.AmbiguousError(
                error.message, code="HTTP_503", http_status=503, excerpt=error.excerpt
            )
        raise _http.status_error(response, final=final, now=self._now(), what=what, parse=_error)

    async def _data(self, page_id: str, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._call(page_id, method, path, **kwargs)
        return _http.json_object(response, final=kwargs["final"], what=kwargs["what"])

    # --- publishing ---------------------------------------------------------------------------

    async def publish(self, post: base.PostPayload) -> base.Published:
        problems = self.validate(post)
        if problems:
            raise base.PermanentError("; ".join(problems), code="INVALID_POST")
        media_ids = [await self._upload(post, i, item) for i, item in enumerate(post.media)]
        body: dict[str, Any] = {"text": post.message} if post.message else {}
        if media_ids:
            body["media"] = {"media_ids": media_ids}
        page = await self._tokens.get(post.page_id)
        data = await self._data(
            post.page_id, "POST", "/2/tweets", final=True, what="publish", json=body
        )
        tweet = data.get("data") or {}
        if not tweet.get("id"):
            raise base.AmbiguousError("x: a created post without an id", code="BAD_RESPONSE")
        return self._published(str(tweet["id"]), page, self._now())

    def _published(self, tweet_id: str, page: _Page, when: datetime) -> base.Published:
        username = page.creds.get("username")
        link = f"https://x.com/{username}/status/{tweet_id}" if username else None
        return base.Published(tweet_id, link, when)

    async def _upload(self, post: base.PostPayload, index: int, item: base.MediaItem) -> str:
        key = f"{post.post_id}\0{index}\0{item.url}"
        if item.kind == "video":
            return await self._video.upload(post.page_id, key, item)
        if key not in self._uploads:
            blob = await self._fetch(item, IMAGE_MAX_BYTES)
            if blob.mime_type not in IMAGE_TYPES:
                raise base.PermanentError(
                    f"x: {blob.mime_type} is not a supported image type", code="UNSUPPORTED_MEDIA"
                )
            body = {
                "media": base64.b64encode(blob.data).decode("ascii"),
                "media_category": "tweet_image",
                "media_type": blob.mime_type,
            }
            data = await self._data(
                post.page_id, "POST", "/2/media/upload", final=False, what="media upload", json=body
            )
            media_id = (data.get("data") or {}).get("id")
            if not media_id:
                raise base.RetryableError("x: media upload without an id", code="BAD_RESPONSE")
            self._uploads[key] = str(media_id)
        return str(self._uploads[key])

    # --- reconciliation -----------------------------------------------------------------------

    async def find_published(
        self,
        post: base.PostPayload,
        since: datetime,
        exclude_remote_ids: AbstractSet[str] = frozenset(),
    ) -> base.Published | None:
        page = await self._tokens.get(post.page_id)
        wanted = comparable(post.message)
        params: dict[str, Any] = {
            "max_results": PAGE_SIZE,
            "exclude": "replies,retweets",
            "tweet.fields": "created_at,attachments",
        }
        for _ in range(MAX_PAGES):
            data = await self._data(
                post.page_id,
                "GET",
                f"/2/users/{page.user_id}/tweets",
                final=False,
                what="list posts",
                params=params,
            )
            tweets = data.get("data") or []
            reached_older = False
            for tweet in tweets:
                created = _http.parse_time(tweet.get("created_at"), self._now())
                if created < since:
                    reached_older = True
                    continue
                media = (tweet.get("attachments") or {}).get("media_keys") or ()
                if (
                    str(tweet.get("id")) not in exclude_remote_ids
                    and comparable(tweet.get("text")) == wanted
                    and len(media) == len(post.media)
                ):
                    return self._published(str(tweet["id"]), page, created)
            token = (data.get("meta") or {}).get("next_token")
            if reached_older or not token:
                return None
            params["pagination_token"] = token
        raise base.UnsupportedAction(f"x: more than {PAGE_SIZE * MAX_PAGES} posts since then")

    # --- comments -----------------------------------------------------------------------------

    async def _reply(
        self, post: base.PostPayload, to_id: str, message: str, root_id: str
    ) -> base.Comment:
        page = await self._tokens.get(post.page_id)
        body = {"text": message, "reply": {"in_reply_to_tweet_id": to_id}}
        data = await self._data(
            post.page_id, "POST", "/2/tweets", final=True, what="reply", json=body
        )
        tweet = data.get("data") or {}
        if not tweet.get("id"):
            raise base.AmbiguousError("x: a created reply without an id", code="BAD_RESPONSE")
        return base.Comment(
            id=str(tweet["id"]),
            post_remote_id=root_id,
            message=message,
            author_name=None,
            author_username=page.creds.get("username"),
            created_at=self._now(),
            parent_id=None if to_id == root_id else to_id,
        )

    async def post_comment(
        self, post: base.PostPayload, remote_id: str, message: str
    ) -> base.Comment:
        return await self._reply(post, remote_id, message, remote_id)

    async def reply_to_comment(
        self, post: base.PostPayload, comment_id: str, message: str
    ) -> base.Comment:
        data = await self._data(
            post.page_id,
            "GET",
            f"/2/tweets/{comment_id}",
            final=False,
            what="comment lookup",
            params={"tweet.fields": "conversation_id"},
        )
        root = str((data.get("data") or {}).get("conversation_id") or comment_id)
        return await self._reply(post, comment_id, message, root)

    async def list_comments(
        self, post: base.PostPayload, remote_id: str, since: datetime | None = None
    ) -> list[base.Comment]:
        """Replies in the post's conversation, by recent search (the last 7 days only)."""
        params: dict[str, Any] = {
            "query": f"conversation_id:{remote_id}",
            "max_results": PAGE_SIZE,
            "tweet.fields": TWEET_FIELDS,
            "expansions": "author_id",
            "user.fields": "username,name",
        }
        comments: list[base.Comment] = []
        for _ in range(MAX_PAGES):
            data = await self._data(
                post.page_id,
                "GET",
                "/2/tweets/search/recent",
                final=False,
                what="list comments",
                params=params,
            )
            users = {u.get("id"): u for u in (data.get("includes") or {}).get("users") or []}
            comments += [self._comment(t, remote_id, users) for t in data.get("data") or []]
            token = (data.get("meta") or {}).get("next_token")
            if not token:
                break
            params["next_token"] = token
        if since is not None:
            comments = [c for c in comments if c.created_at >= since]
        return sorted(comments, key=lambda c: (c.created_at, int(c.id)))

    def _comment(self, tweet: Any, root_id: str, users: Mapping[Any, Any]) -> base.Comment:
        parent = next(
            (
                str(ref.get("id"))
                for ref in tweet.get("referenced_tweets") or ()
                if ref.get("type") == "replied_to"
            ),
            None,
        )
        author = users.get(tweet.get("author_id")) or {}
        return base.Comment(
            id=str(tweet["id"]),
            post_remote_id=root_id,
            message=html.unescape(str(tweet.get("text") or "")),
            author_name=author.get("name"),
            author_username=author.get("username"),
            created_at=_http.parse_time(tweet.get("created_at"), self._now()),
            parent_id=None if parent in (None, root_id) else parent,
        )

    # --- the rest of the contract -------------------------------------------------------------

    async def refresh_credentials(self, credentials: Mapping[str, str]) -> Mapping[str, str]:
        """A new access token (and the rotated refresh token) from ``refresh_token``."""
        refresh = credentials.get("refresh_token")
        if not refresh:
            raise base.AuthError("x: no refresh token stored", code="NOT_CONNECTED")
        form = {"grant_type": "refresh_token", "refresh_token": refresh}
        data = await token_request(self.client, self._api_base, self._app, form, self._now())
        return {**credentials, **token_credentials(data, self._now())}

    def limits(self) -> base.PlatformLimits:
        """``POST /2/tweets``' own window is 15 minutes: its limit times four per hour."""
        seen = self._rate.get("publish")
        if seen is None or seen.limit is None:
            return base.PlatformLimits()
        return base.PlatformLimits(per_hour=seen.limit * 4)

    def validate(self, post: base.PostPayload) -> list[str]:
        problems = []
        text = post.message or ""
        if not text.strip() and not post.media:
            problems.append("a post on X needs text or media")
        length = x_text.weighted_length(text)
        if length > x_text.MAX_WEIGHTED_LENGTH:
            problems.append(
                f"text weighs {length} as X counts it (a URL 23, CJK and emoji 2); X allows "
                f"{x_text.MAX_WEIGHTED_LENGTH}"
            )
        videos = [item for item in post.media if item.kind == "video"]
        if videos and len(post.media) > 1:
            problems.append("a video on X goes alone: one video, no other media")
        elif len(post.media) > 4:
            problems.append(f"{len(post.media)} images; X allows 4")
        problems += [
            f"a {item.mime_type} video; X takes MP4 or QuickTime"
            for item in videos
            if item.mime_type and item.mime_type not in x_media.VIDEO_TYPES
        ]
        if any(item.kind not in ("photo", "video") for item in post.media):
            problems.append("postd publishes photos and one video to X (no other media)")
        return problems

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
