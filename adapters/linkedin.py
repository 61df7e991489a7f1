"""LinkedIn (Posts, Images, Videos and Comments APIs; platforms.md §3).

Every ``/rest`` call carries ``Authorization: Bearer``, ``LinkedIn-Version`` (:data:`VERSION`)
and ``X-Restli-Protocol-Version: 2.0.0``. Publishing:

* text: one ``POST /rest/posts`` (``commentary`` in the "little" format, reserved characters
  escaped); the new post's URN comes back in the ``x-restli-id`` header.
* images (1, or 2-20 as ``multiImage``): ``POST /rest/images?action=initializeUpload``, ``PUT``
  the bytes to the returned ``uploadUrl``, then the post names the ``urn:li:image``.
* one video: ``POST /rest/videos?action=initializeUpload``, ``PUT`` each part to its pre-signed
  URL (collecting the ETags), ``POST /rest/videos?action=finalizeUpload``, then
  ``GET /rest/videos/{urn}`` until ``AVAILABLE`` (waited through the injected ``sleep``: polls are
  not tries), then the post.

An uploaded asset's URN is written to the injected :class:`adapters._progress.ProgressStore`
the moment the upload is complete, so a later try of the same post reuses it. ``POST /rest/posts``
is the one irreversible call: its timeouts and 5xx are AmbiguousError (the dispatcher reconciles
through :meth:`LinkedInAdapter.find_published`). A mark is stored before it is sent; when a try
with that mark is refused as ``DUPLICATE_POST`` naming a post, that post is taken as this one's
(an earlier, ambiguous try did publish it).

Errors: 401 refreshes once, then AuthError; 403 AuthError (permission or role missing); 429
waits for ``Retry-After`` or else the daily window's reset at midnight UTC; 400/422/426 and
anything unknown PermanentError with LinkedIn's code.

Credentials (``daemon/oauth.py`` connect flow, :mod:`adapters.linkedin_auth`): ``access_token``,
``expires_at``, ``refresh_token`` and ``refresh_expires_at`` (apps approved for programmatic
refresh tokens only), ``author`` (``urn:li:person:…``), ``name``. Access tokens live 60 days; the
adapter refreshes :data:`REFRESH_EARLY` before expiry and saves at once; a refresh failing on a
still valid token is logged and the token used.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import structlog

from adapters import _http, _progress, _tokens, base
from adapters import linkedin_auth as auth
from adapters import linkedin_media as media

log = structlog.get_logger("postd.adapters.linkedin")

VERSION = "202610"  # LinkedIn-Version, YYYYMM; versions sunset about a year after release
RESTLI = "2.0.0"
REFRESH_EARLY = timedelta(days=1)
REFRESH_BACKOFF = 300.0  # seconds between early refreshes that failed transiently
MAX_COMMENTARY = 3000
MAX_IMAGES = 20
LIST_COUNT = 50
MAX_PAGES = 4
MEMBER_POSTS_PER_DAY = 150  # [C3/U]: LinkedIn publishes no limits


class LinkedInAdapter:
    """The platform ``"linkedin"``; implements :class:`adapters.base.Adapter`."""

    platform: str = "linkedin"

    def __init__(
        self,
        credentials: _http.CredentialStore,
        progress: _progress.ProgressStore,
        *,
        now: _http.Now,
        app: auth.OAuthApp,
        fetch_media: _http.MediaFetcher = _http.no_media,
        api_base: str = auth.PRODUCTION_API,
        timeouts: _http.Timeouts | None = None,
        sleep: _http.Sleep = asyncio.sleep,
        transport: httpx.AsyncBaseTransport | None = None,
        media_poll_seconds: float = 2.0,
        media_poll_max_seconds: float = 300.0,
        version: str = VERSION,
    ) -> None:
        self._store = credentials
        self._progress = progress
        self._now = now
        self._app = app
        self._api_base = api_base.rstrip("/")
        self._timeouts = timeouts or _http.Timeouts()
        self._transport = transport
        self._media = media.Media(
            self,
            progress,
            fetch=fetch_media,
            now=now,
            sleep=sleep,
            poll_seconds=media_poll_seconds,
            poll_max_seconds=media_poll_max_seconds,
        )
        self._version = version
        self._client: httpx.AsyncClient | None = None
        self._tokens = _tokens.PageTokens(
            credentials,
            now,
            self.refresh_credentials,
            auth.Account,
            platform="linkedin",
            early=REFRESH_EARLY,
            required=("access_token", "author"),
            backoff=timedelta(seconds=REFRESH_BACKOFF),
        )

    # --- plumbing -----------------------------------------------------------------------------

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = _http.make_client(self._timeouts, self._transport)
        return self._client

    async def _page(self, page_id: str) -> auth.Account:
        return await self._tokens.get(page_id)

    async def account(self, page_id: str) -> auth.Account:
        """The page's current credentials (refreshed when due)."""
        return await self._tokens.get(page_id)

    def _headers(
        self, page: auth.Account, extra: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {page.token}",
            "LinkedIn-Version": self._version,
            "X-Restli-Protocol-Version": RESTLI,
            **(extra or {}),
        }

    async def call(
        self,
        page_id: str,
        method: str,
        path: str,
        *,
        final: bool,
        what: str,
        headers: Mapping[str, str] | None = None,
        **request: Any,
    ) -> httpx.Response:
        """One ``/rest`` request; a 401 refreshes the token once (if it can) and tries again."""

        async def send(page: auth.Account) -> httpx.Response:
            return await _http.send(
                self.client,
                method,
                self._api_base + path,
                final=final,
                what=what,
                headers=self._headers(page, headers),
                **request,
            )

        response = await self._tokens.send(page_id, send, needs_refresh_token=True)
        if response.is_success:
            return response
        raise auth.classify(response, final=final, now=self._now(), what=what)

    async def json(self, page_id: str, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = await self.call(page_id, method, path, **kwargs)
        return _http.json_object(response, final=kwargs["final"], what=kwargs["what"])

    # --- publishing ---------------------------------------------------------------------------

    async def publish(self, post: base.PostPayload) -> base.Published:
        problems = self.validate(post)
        if problems:
            raise base.PermanentError("; ".join(problems), code="INVALID_POST")
        keys = media.Keys(post)
        done = await self._progress.get(post.post_id, keys.post)
        if done:  # published by an earlier try whose answer the daemon did not record
            return self._published(done, self._now())
        page = await self._page(post.page_id)
        body: dict[str, Any] = {
            "author": page.author,
            "commentary": auth.escape(post.message or ""),
            "visibility": "PUBLIC",
            "distribution": {
                "feedDistribution": "MAIN_FEED",
                "targetEntities": [],
                "thirdPartyDistributionChannels": [],
            },
            "lifecycleState": "PUBLISHED",
            "isReshareDisabledByAuthor": False,
        }
        content = await self._media.content(post, page, keys)
        if content:
            body["content"] = content
        urn = await self._send_post(post, keys, body)
        await self._progress.put(post.post_id, keys.post, urn)
        return self._published(urn, self._now())

    async def _send_post(self, post: base.PostPayload, keys: media.Keys, body: Any) -> str:
        earlier = await self._progress.get(post.post_id, keys.sent)
        await self._progress.put(post.post_id, keys.sent, self._now().isoformat())
        try:
            response = await self.call(
                post.page_id, "POST", "/posts", final=True, what="publish", json=body
            )
        except (base.RetryableError, base.PermanentError) as exc:  # provably not published now
            ours = auth.duplicate_of(exc) if exc.code == "DUPLICATE_POST" and earlier else None
            if ours is not None:
                log.info("duplicate_is_earlier_try", platform="linkedin", post_id=post.post_id)
                return ours
            if earlier is None:
                await self._progress.delete(post.post_id, keys.sent)
            else:
                await self._progress.put(post.post_id, keys.sent, earlier)
            raise
        urn = response.headers.get("x-restli-id")
        if not urn:
            raise base.AmbiguousError(
                "linkedin: a created post without x-restli-id", code="BAD_RESPONSE"
            )
        return str(urn)

    def _published(self, urn: str, when: datetime) -> base.Published:
        return base.Published(urn, f"https://www.linkedin.com/feed/update/{urn}", when)

    # --- reconciliation -----------------------------------------------------------------------

    async def find_published(
        self,
        post: base.PostPayload,
        since: datetime,
        exclude_remote_ids: AbstractSet[str] = frozenset(),
    ) -> base.Published | None:
        """The author's posts by ``LAST_MODIFIED`` (newest first), matched on commentary and
        media count from ``since`` on. Reading member posts needs ``r_member_social``: a 403
        means LinkedIn cannot tell (UnsupportedAction)."""
        page = await self._page(post.page_id)
        wanted = auth.comparable(post.message)
        cutoff = since.timestamp() * 1000
        for number in range(MAX_PAGES):
            query = (
                f"q=author&author={auth.enc(page.author)}&count={LIST_COUNT}"
                f"&start={number * LIST_COUNT}&sortBy=LAST_MODIFIED"
            )
            try:
                data = await self.json(
                    post.page_id,
                    "GET",
                    f"/posts?{query}",
                    final=False,
                    what="list posts",
                    headers={"X-RestLi-Method": "FINDER"},
                )
            except base.AuthError as exc:
                if exc.http_status != 403:
                    raise
                raise base.UnsupportedAction(
                    "linkedin: reading the member's posts is not granted", code=exc.code
                ) from exc
            elements = [e for e in data.get("elements") or [] if isinstance(e, dict)]
            for item in elements:
                created = float(item.get("publishedAt") or item.get("createdAt") or 0)
                if (
                    created >= cutoff
                    and str(item.get("id")) not in exclude_remote_ids
                    and auth.comparable(item.get("commentary")) == wanted
                    and _media_count(item.get("content")) == len(post.media)
                ):
                    return self._published(str(item["id"]), _from_ms(created))
            modified = [float(e.get("lastModifiedAt") or 0) for e in elements]
            if len(elements) < LIST_COUNT or (modified and min(modified) < cutoff):
                return None
        raise base.UnsupportedAction(f"linkedin: more than {LIST_COUNT * MAX_PAGES} recent posts")

    # --- comments -----------------------------------------------------------------------------

    async def _create_comment(
        self, post: base.PostPayload, target: str, body: dict[str, Any]
    ) -> str:
        response = await self.call(
            post.page_id,
            "POST",
            f"/socialActions/{auth.enc(target)}/comments",
            final=True,
            what="comment",
            json=body,
        )
        made = _http.body_json(response)
        urn = made.get("commentUrn") if isinstance(made, dict) else None
        if not urn and response.headers.get("x-restli-id"):
            urn = f"urn:li:comment:({body['object']},{response.headers['x-restli-id']})"
        if not urn:
            raise base.AmbiguousError("linkedin: a comment without an id", code="BAD_RESPONSE")
        return str(urn)

    async def post_comment(
        self, post: base.PostPayload, remote_id: str, message: str
    ) -> base.Comment:
        page = await self._page(post.page_id)
        body = {"actor": page.author, "object": remote_id, "message": {"text": message}}
        urn = await self._create_comment(post, remote_id, body)
        return base.Comment(
            urn, remote_id, message, page.creds.get("name"), page.author, self._now()
        )

    async def reply_to_comment(
        self, post: base.PostPayload, comment_id: str, message: str
    ) -> base.Comment:
        """A nested comment: posted on the comment's URN, ``parentComment`` naming it and
        ``object`` the URN the comment URN is made of."""
        page = await self._page(post.page_id)
        target = _comment_object(comment_id)
        body = {
            "actor": page.author,
            "object": target,
            "message": {"text": message},
            "parentComment": comment_id,
        }
        urn = await self._create_comment(post, comment_id, body)
        return base.Comment(
            urn, target, message, page.creds.get("name"), page.author, self._now(), comment_id
        )

    async def list_comments(
        self, post: base.PostPayload, remote_id: str, since: datetime | None = None
    ) -> list[base.Comment]:
        """Top-level comments, then the replies of each that has some, oldest first."""
        comments: list[base.Comment] = []
        for item in await self._comments(post, remote_id):
            comments.append(self._comment(item, remote_id, None))
            summary = item.get("commentsSummary")
            replies = summary.get("aggregatedTotalComments") if isinstance(summary, dict) else None
            if replies is None or int(replies) > 0:
                parent = comments[-1].id
                for reply in await self._comments(post, parent):
                    comments.append(self._comment(reply, remote_id, parent))
        if since is not None:
            comments = [c for c in comments if c.created_at >= since]
        return sorted(comments, key=lambda c: c.created_at)

    async def _comments(self, post: base.PostPayload, target: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for number in range(MAX_PAGES):
            data = await self.json(
                post.page_id,
                "GET",
                f"/socialActions/{auth.enc(target)}/comments",
                final=False,
                what="list comments",
                params={"start": number * LIST_COUNT, "count": LIST_COUNT},
            )
            elements = [e for e in data.get("elements") or [] if isinstance(e, dict)]
            found += elements
            if len(elements) < LIST_COUNT:
                break
        return found

    def _comment(self, item: dict[str, Any], root: str, parent: str | None) -> base.Comment:
        urn = item.get("commentUrn")
        if not urn:
            raise base.RetryableError("linkedin: a comment without a URN", code="BAD_RESPONSE")
        created = item.get("created") or {}
        when = created.get("time") if isinstance(created, dict) else None
        return base.Comment(
            id=str(urn),
            post_remote_id=root,
            message=str((item.get("message") or {}).get("text") or ""),
            author_name=None,
            author_username=item.get("actor"),
            created_at=_from_ms(float(when)) if when is not None else self._now(),
            parent_id=parent,
        )

    # --- the rest of the contract -------------------------------------------------------------

    async def refresh_credentials(self, credentials: Mapping[str, str]) -> Mapping[str, str]:
        """A new access token from ``refresh_token`` (LinkedIn keeps the refresh token's own
        expiry; whatever comes back is kept)."""
        refresh = credentials.get("refresh_token")
        if not refresh:
            raise base.AuthError("linkedin: no refresh token stored", code="NOT_REFRESHABLE")
        ends = auth.Account(dict(credentials)).expires_at("refresh_expires_at")
        if credentials.get("refresh_expires_at") and ends <= self._now().timestamp():
            raise base.AuthError("linkedin: the refresh token expired", code="REFRESH_EXPIRED")
        form = {"grant_type": "refresh_token", "refresh_token": refresh}
        data = await auth.token_request(self.client, self._api_base, self._app, form, self._now())
        return {**credentials, **auth.token_credentials(data, self._now())}

    def limits(self) -> base.PlatformLimits:
        """LinkedIn publishes no limits; a member's posts per day as reported by third parties
        (the config's own, lower, limits win)."""
        return base.PlatformLimits(per_24h=MEMBER_POSTS_PER_DAY)

    def validate(self, post: base.PostPayload) -> list[str]:
        problems = []
        text = post.message or ""
        if not text.strip() and not post.media:
            problems.append("a LinkedIn post needs text or media")
        if len(text) > MAX_COMMENTARY:
            problems.append(f"text is {len(text)} characters; LinkedIn allows {MAX_COMMENTARY}")
        kinds = {item.kind for item in post.media}
        if "video" in kinds and len(post.media) > 1:
            problems.append("a LinkedIn post carries one video alone (no other media)")
        if kinds - {"photo", "video"}:
            problems.append("LinkedIn posts carry photos or one video")
        if kinds == {"photo"} and len(post.media) > MAX_IMAGES:
            problems.append(f"{len(post.media)} images; LinkedIn allows {MAX_IMAGES}")
        return problems

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _from_ms(value: float) -> datetime:
    return datetime.fromtimestamp(value / 1000, UTC)


def _media_count(content: Any) -> int:
    if not isinstance(content, dict):
        return 0
    if isinstance(content.get("multiImage"), dict):
        return len(content["multiImage"].get("images") or [])
    return 1 if isinstance(content.get("media"), dict) else 0


def _comment_object(comment_urn: str) -> str:
    """``urn:li:activity:1`` of ``urn:li:comment:(urn:li:activity:1,2)``."""
    inner = comment_urn.removeprefix("urn:li:comment:(").removesuffix(")")
    head, sep, _ = inner.rpartition(",")
    if not sep or not head.startswith("urn:li:"):
        raise base.PermanentError(f"linkedin: {comment_urn!r} is not a comment URN", code="BAD_ID")
    return head
