"""Instagram (Graph API content publishing, Facebook Login; platforms.md §2).

A post is one photo or one video (a reel) with an optional caption (Instagram has no text-only
post; carousels are not built yet). Publishing is two-phase, the same for both:

1. ``POST /{ig-user-id}/media`` (``image_url``, ``caption``; for a video ``media_type=REELS``,
   ``video_url``, ``caption``: single feed videos are reels) creates a container; Graph fetches
   the media from its URL itself, so the URL must be public. The container id is written to the
   injected :class:`adapters._progress.ProgressStore` the moment it returns.
2. ``GET /{container-id}?fields=status_code,status`` until ``FINISHED`` (``IN_PROGRESS``: wait
   through the injected ``sleep``; these polls are not tries; a video takes longer). ``EXPIRED``
   (containers last 24 h) or a vanished container restarts the flow with a new container;
   ``ERROR`` is permanent, with Graph's code when its ``status`` names one.
3. ``GET /{ig-user-id}/content_publishing_limit``: when the rolling 24 h quota is used up, the
   post waits (nothing was published); ``quota_total`` is reported by :meth:`limits`.
4. ``POST /{ig-user-id}/media_publish?creation_id=<container>``, the final call; a mark that it
   was sent is stored just before, the media id just after.

A container is published at most once: when a later try finds the mark of a sent
``media_publish`` (an ambiguous answer), it looks for the post (``GET /{ig-user-id}/media``, by
caption and time) before anything else; a container whose status is ``PUBLISHED`` but whose post
cannot be found fails permanently instead of being published again.

Credentials: ``access_token`` and ``ig_user_id``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from datetime import datetime, timedelta
from typing import Any

import httpx

from adapters import _graph, _http, _progress, base, graph_video

MAX_CAPTION = 2200
MAX_HASHTAGS = 30
MAX_MENTIONS = 20  # [U]
NODES = _graph.NodeFields(
    "instagram",
    "media",
    "caption",
    "timestamp",
    "permalink",
    listing="id,caption,media_type,permalink,timestamp",
)
FIND_SKEW = timedelta(minutes=2)
_HASHTAG = re.compile(r"(?<![\w&])#\w+")
_MENTION = re.compile(r"(?<![\w@])@[\w.]+")


class InstagramAdapter:
    """The platform ``"instagram"``; implements :class:`adapters.base.Adapter`."""

    platform: str = "instagram"

    def __init__(
        self,
        credentials: _http.CredentialStore,
        progress: _progress.ProgressStore,
        *,
        now: _http.Now,
        api_base: str = "",
        timeouts: _http.Timeouts | None = None,
        sleep: _http.Sleep = asyncio.sleep,
        transport: httpx.AsyncBaseTransport | None = None,
        media_poll_seconds: float = 2.0,
        media_poll_max_seconds: float = 300.0,
        public_media_only: bool = True,
    ) -> None:
        self._progress = progress
        self._now = now
        self._sleep = sleep
        self._poll = media_poll_seconds
        self._poll_max = media_poll_max_seconds
        self._public_only = public_media_only
        self._quota: dict[str, int] = {}  # ig user id -> quota_total last reported
        self._graph = _graph.GraphClient(
            credentials,
            "ig_user_id",
            api_base=api_base,
            now=now,
            timeouts=timeouts or _http.Timeouts(),
            transport=transport,
        )

    # --- publishing ---------------------------------------------------------------------------

    async def publish(self, post: base.PostPayload) -> base.Published:
        problems = self.validate(post)
        if problems:
            raise base.PermanentError("; ".join(problems), code="INVALID_POST")
        keys = _Keys(post)
        done = await self._progress.get(post.post_id, keys.media)
        if done:  # published by an earlier try whose answer was not recorded by the daemon
            return await self._graph.with_permalink(post.page_id, done, NODES)
        sent_at = await self._progress.get(post.post_id, keys.sent)
        if sent_at:
            since = _http.parse_time(sent_at, self._now()) - FIND_SKEW
            found = await self.find_published(post, since)
            if found is not None:
                await self._progress.put(post.post_id, keys.media, found.remote_id)
                return found
        container = await self._ready_container(post, keys)
        await self._check_quota(post.page_id)
        await self._progress.put(post.post_id, keys.sent, self._now().isoformat())
        try:
            made = await self._graph.call(
                post.page_id,
                "POST",
                "/{node}/media_publish",
                final=True,
                what="publish",
                params={"creation_id": container},
            )
        except (base.RetryableError, base.PermanentError) as exc:  # provably not published
            await self._progress.delete(post.post_id, keys.sent)
            if exc.code == "CONTAINER_GONE":
                await self._progress.delete(post.post_id, keys.container)
            raise
        if not made.get("id"):
            raise base.AmbiguousError("instagram: a media without an id", code="BAD_RESPONSE")
        await self._progress.put(post.post_id, keys.media, str(made["id"]))
        return await self._graph.with_permalink(post.page_id, str(made["id"]), NODES)

    async def _ready_container(self, post: base.PostPayload, keys: _Keys) -> str:
        """A FINISHED container for ``post``: the stored one, or a new one (at most one
        restart when the stored one expired)."""
        for _ in range(2):
            container = await self._progress.get(post.post_id, keys.container)
            if container is None:
                container = await self._create_container(post, keys)
            status = await self._wait_finished(post, container, keys)
            if status == "FINISHED":
                return container
            if status == "PUBLISHED":
                raise base.PermanentError(
                    f"instagram: container {container} is already published but its post was"
                    " not found; not publishing it again",
                    code="CONTAINER_ALREADY_PUBLISHED",
                )
            await self._progress.delete(post.post_id, keys.container)  # EXPIRED: start over
            await self._progress.delete(post.post_id, keys.sent)
        raise base.RetryableError("instagram: new container expired at once", code="EXPIRED")

    async def _create_container(self, post: base.PostPayload, keys: _Keys) -> str:
        item, caption = post.media[0], post.message or ""
        params = (
            {"media_type": "REELS", "video_url": item.url, "caption": caption}
            if item.kind == "video"
            else {"image_url": item.url, "caption": caption}
        )
        made = await self._graph.call(
            post.page_id, "POST", "/{node}/media", final=False, what="container", params=params
        )
        if not made.get("id"):
            raise base.RetryableError("instagram: a container without an id", code="BAD_RESPONSE")
        await self._progress.put(post.post_id, keys.container, str(made["id"]))
        return str(made["id"])

    async def _wait_finished(self, post: base.PostPayload, container: str, keys: _Keys) -> str:
        """The container's settled status; IN_PROGRESS is waited out (not a try) up to
        ``media_poll_max_seconds``, then a RetryableError keeps the container for the next try."""
        waited = 0.0
        while True:
            try:
                node = await self._graph.call(
                    post.page_id,
                    "GET",
                    f"/{container}",
                    final=False,
                    what="container status",
                    params={"fields": "status_code,status"},
                )
            except base.RetryableError as exc:
                if exc.code == "CONTAINER_GONE":
                    return "EXPIRED"
                raise
            status = str(node.get("status_code") or "")
            if status in ("FINISHED", "PUBLISHED", "EXPIRED"):
                return status
            if status == "ERROR":
                await self._progress.delete(post.post_id, keys.container)
                raise base.PermanentError(
                    f"instagram: container {container} failed: {node.get('status') or 'ERROR'}",
                    code=graph_video.status_error_code(node.get("status")),
                )
            if waited >= self._poll_max:
                raise base.RetryableError(
                    f"instagram: container {container} still {status} after {waited:.0f} s",
                    code="MEDIA_NOT_READY",
                    retry_after=self._poll * 10,
                )
            await self._sleep(self._poll)
            waited += self._poll

    async def _check_quota(self, page_id: str) -> None:
        answer = await self._graph.call(
            page_id,
            "GET",
            "/{node}/content_publishing_limit",
            final=False,
            what="publishing limit",
            params={"fields": "quota_usage,config"},
        )
        data = answer.get("data")
        entry = _graph.mapping(data[0] if isinstance(data, list) and data else None)
        conf = _graph.mapping(entry.get("config"))
        total, used = conf.get("quota_total"), entry.get("quota_usage")
        if isinstance(total, int) and total > 0:
            account = await self._graph.account(page_id)
            self._quota[account.node_id] = total
            if isinstance(used, int) and used >= total:
                raise base.RetryableError(
                    f"instagram: {used} of {total} posts in 24 h used",
                    code="PUBLISHING_LIMIT",
                    retry_after=_graph.DAILY_CAP_WAIT,
                )

    # --- reconciliation -----------------------------------------------------------------------

    async def find_published(
        self,
        post: base.PostPayload,
        since: datetime,
        exclude_remote_ids: AbstractSet[str] = frozenset(),
    ) -> base.Published | None:
        return await self._graph.find_published(post, since, exclude_remote_ids, NODES)

    # --- comments -----------------------------------------------------------------------------

    async def _create_comment(
        self, post: base.PostPayload, path: str, message: str, root: str, parent: str | None
    ) -> base.Comment:
        made = await self._graph.call(
            post.page_id, "POST", path, final=True, what="comment", params={"message": message}
        )
        if not made.get("id"):
            raise base.AmbiguousError("instagram: a comment without an id", code="BAD_RESPONSE")
        return base.Comment(str(made["id"]), root, message, None, None, self._now(), parent)

    async def post_comment(
        self, post: base.PostPayload, remote_id: str, message: str
    ) -> base.Comment:
        return await self._create_comment(post, f"/{remote_id}/comments", message, remote_id, None)

    async def reply_to_comment(
        self, post: base.PostPayload, comment_id: str, message: str
    ) -> base.Comment:
        # The media a comment belongs to is not part of the answer: post_remote_id stays empty.
        path = f"/{comment_id}/replies"
        return await self._create_comment(post, path, message, "", comment_id)

    async def list_comments(
        self, post: base.PostPayload, remote_id: str, since: datetime | None = None
    ) -> list[base.Comment]:
        page = await self._graph.call(
            post.page_id,
            "GET",
            f"/{remote_id}/comments",
            final=False,
            what="list comments",
            params={"fields": "id,text,username,timestamp,replies{id,text,username,timestamp}"},
        )
        comments = []
        for item in page.get("data") or []:
            comments.append(self._comment(item, remote_id, None))
            replies = item.get("replies") if isinstance(item, dict) else None
            for reply in (replies or {}).get("data") or []:
                comments.append(self._comment(reply, remote_id, str(item["id"])))
        if since is not None:
            comments = [c for c in comments if c.created_at >= since]
        return sorted(comments, key=lambda c: c.created_at)

    def _comment(self, item: Any, root: str, parent: str | None) -> base.Comment:
        if not isinstance(item, dict) or not item.get("id"):
            raise base.RetryableError("instagram: a comment without an id", code="BAD_RESPONSE")
        return base.Comment(
            id=str(item["id"]),
            post_remote_id=root,
            message=str(item.get("text") or ""),
            author_name=None,
            author_username=item.get("username"),
            created_at=_graph.graph_time(item.get("timestamp"), self._now()),
            parent_id=parent,
        )

    # --- the rest of the contract -------------------------------------------------------------

    async def refresh_credentials(self, credentials: Mapping[str, str]) -> Mapping[str, str]:
        """Checks the token against its account (``GET /{ig-user-id}?fields=id,username``) and
        returns the credentials unchanged (token renewal comes with the connect flow)."""
        account = _graph.account_of(credentials, "ig_user_id")
        response = await _http.send(
            self._graph.client,
            "GET",
            f"{self._graph.api_base}/{account.node_id}",
            final=False,
            what="verify account",
            params={"fields": "id,username", "access_token": account.token},
        )
        if not response.is_success:
            raise _graph.classify(response, final=False, now=self._now(), what="verify account")
        node = _http.json_object(response, final=False, what="verify account")
        if str(node.get("id")) != account.node_id:
            raise base.AuthError("instagram: the token is for another account", code="WRONG_PAGE")
        return dict(credentials)

    def limits(self) -> base.PlatformLimits:
        """The smallest ``quota_total`` an account reported (posts per rolling 24 h)."""
        return base.PlatformLimits(per_24h=min(self._quota.values()) if self._quota else None)

    def validate(self, post: base.PostPayload) -> list[str]:
        problems = []
        caption = post.message or ""
        if not post.media:
            problems.append("an Instagram post needs a photo or a video (no text-only posts)")
        problems += graph_video.media_problems(
            post, platform="Instagram", public_only=self._public_only, photo_word="photo"
        )
        if len(caption) > MAX_CAPTION:
            problems.append(f"caption is {len(caption)} characters; Instagram allows {MAX_CAPTION}")
        hashtags = len(_HASHTAG.findall(caption))
        if hashtags > MAX_HASHTAGS:
            problems.append(f"{hashtags} hashtags; Instagram allows {MAX_HASHTAGS}")
        mentions = len(_MENTION.findall(caption))
        if mentions > MAX_MENTIONS:
            problems.append(f"{mentions} @-mentions; Instagram allows {MAX_MENTIONS}")
        return problems

    async def aclose(self) -> None:
        await self._graph.aclose()


class _Keys:
    """Progress keys of one post's content (an edited post starts a new container)."""

    def __init__(self, post: base.PostPayload) -> None:
        fp = post.fingerprint()[:16]
        self.container = f"ig_container:{fp}"
        self.sent = f"ig_publish_sent:{fp}"
        self.media = f"ig_media:{fp}"
