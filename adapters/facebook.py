"""Facebook Pages (Graph API; platforms.md §1).

Publishing is one call, the final one: ``POST /{page-id}/feed`` (``message``, optional ``link``
from ``options["facebook"]["link"]``) for text, ``POST /{page-id}/photos`` (``url``,
``caption``) for one photo, ``POST /{page-id}/videos`` (``file_url``, ``description``, on the
video host) for one video, then its processing status is waited out (adapters/graph_video.py).
Graph fetches the media from its URL itself (so the URL must be public; postd never uploads the
bytes). Graph has no idempotency key: an ambiguous publish is reconciled through
``GET /{page-id}/posts`` (``GET /{page-id}/videos`` for a video) by text and time, and a repeat of
the same text is refused by Graph itself (code 506, "duplicate post") rather than published
twice.

Credentials: ``access_token`` (a Page access token) and ``page_id``. Page tokens made from a
long-lived user token do not expire [U]; on code 190 the stored credentials are read again once,
then AuthError (the page needs a re-connect). The permalink is read after publishing
(``GET /{post-id}?fields=permalink_url``), best effort: a failure there leaves it empty and never
fails a publish that happened.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from datetime import datetime
from typing import Any

import httpx

from adapters import _graph, _http, base, graph_video

MAX_MESSAGE = 63_206  # [U]
NODES = _graph.NodeFields(
    "facebook",
    "posts",
    "message",
    "created_time",
    "permalink_url",
    listing="id,message,created_time,permalink_url",
)


class FacebookAdapter:
    """The platform ``"facebook"``; implements :class:`adapters.base.Adapter`."""

    platform: str = "facebook"

    def __init__(
        self,
        credentials: _http.CredentialStore,
        *,
        now: _http.Now,
        api_base: str = "",
        timeouts: _http.Timeouts | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        public_media_only: bool = True,
        video_api_base: str = "",
        sleep: _http.Sleep = asyncio.sleep,
        media_poll_seconds: float = 2.0,
        media_poll_max_seconds: float = 300.0,
    ) -> None:
        self._now = now
        self._public_only = public_media_only
        self._graph = _graph.GraphClient(
            credentials,
            "page_id",
            api_base=api_base,
            now=now,
            timeouts=timeouts or _http.Timeouts(),
            transport=transport,
        )
        self._video = graph_video.FacebookVideo(
            self._graph,
            video_api_base=graph_video.video_base(api_base, video_api_base),
            now=now,
            sleep=sleep,
            poll_seconds=media_poll_seconds,
            poll_max_seconds=media_poll_max_seconds,
        )

    # --- publishing ---------------------------------------------------------------------------

    async def publish(self, post: base.PostPayload) -> base.Published:
        problems = self.validate(post)
        if problems:
            raise base.PermanentError("; ".join(problems), code="INVALID_POST")
        if graph_video.is_video(post):
            return await self._video.publish(post)
        if post.media:
            params = {"url": post.media[0].url, "caption": post.message or ""}
            made = await self._graph.call(
                post.page_id, "POST", "/{node}/photos", final=True, what="publish", params=params
            )
            remote = made.get("post_id") or made.get("id")
        else:
            params = {"message": post.message or "", **_link(post.options)}
            made = await self._graph.call(
                post.page_id, "POST", "/{node}/feed", final=True, what="publish", params=params
            )
            remote = made.get("id")
        if not remote:
            raise base.AmbiguousError("facebook: a post without an id", code="BAD_RESPONSE")
        return await self._graph.with_permalink(post.page_id, str(remote), NODES)

    # --- reconciliation -----------------------------------------------------------------------

    async def find_published(
        self,
        post: base.PostPayload,
        since: datetime,
        exclude_remote_ids: AbstractSet[str] = frozenset(),
    ) -> base.Published | None:
        nodes = graph_video.FB_VIDEO_NODES if graph_video.is_video(post) else NODES
        return await self._graph.find_published(post, since, exclude_remote_ids, nodes)

    # --- comments -----------------------------------------------------------------------------

    async def _comment_on(
        self, post: base.PostPayload, target: str, message: str, root: str, parent: str | None
    ) -> base.Comment:
        made = await self._graph.call(
            post.page_id,
            "POST",
            f"/{target}/comments",
            final=True,
            what="comment",
            params={"message": message},
        )
        if not made.get("id"):
            raise base.AmbiguousError("facebook: a comment without an id", code="BAD_RESPONSE")
        return base.Comment(str(made["id"]), root, message, None, None, self._now(), parent)

    async def post_comment(
        self, post: base.PostPayload, remote_id: str, message: str
    ) -> base.Comment:
        return await self._comment_on(post, remote_id, message, remote_id, None)

    async def reply_to_comment(
        self, post: base.PostPayload, comment_id: str, message: str
    ) -> base.Comment:
        # The post a comment belongs to is not part of the answer: post_remote_id stays empty.
        return await self._comment_on(post, comment_id, message, "", comment_id)

    async def list_comments(
        self, post: base.PostPayload, remote_id: str, since: datetime | None = None
    ) -> list[base.Comment]:
        params: dict[str, Any] = {
            "fields": "id,message,from,created_time,parent{id}",
            "filter": "stream",
            "order": "chronological",
            "limit": 100,
        }
        comments: list[base.Comment] = []
        for _ in range(_graph.MAX_PAGES):
            page = await self._graph.call(
                post.page_id,
                "GET",
                f"/{remote_id}/comments",
                final=False,
                what="list comments",
                params=params,
            )
            comments += [self._comment(item, remote_id) for item in page.get("data") or []]
            after = _graph.next_cursor(page)
            if after is None:
                break
            params["after"] = after
        if since is not None:
            comments = [c for c in comments if c.created_at >= since]
        return sorted(comments, key=lambda c: c.created_at)

    def _comment(self, item: Any, root: str) -> base.Comment:
        if not isinstance(item, dict) or not item.get("id"):
            raise base.RetryableError("facebook: a comment without an id", code="BAD_RESPONSE")
        author = _graph.mapping(item.get("from"))
        parent = _graph.mapping(item.get("parent"))
        return base.Comment(
            id=str(item["id"]),
            post_remote_id=root,
            message=str(item.get("message") or ""),
            author_name=author.get("name"),
            author_username=author.get("id"),
            created_at=_graph.graph_time(item.get("created_time"), self._now()),
            parent_id=str(parent["id"]) if parent.get("id") else None,
        )

    # --- the rest of the contract -------------------------------------------------------------

    async def refresh_credentials(self, credentials: Mapping[str, str]) -> Mapping[str, str]:
        """Page tokens do not expire [U]: this checks the token against its page
        (``GET /{page-id}?fields=id,name``) and returns the credentials unchanged."""
        account = _graph.account_of(credentials, "page_id")
        url = f"{self._graph.api_base}/{account.node_id}"
        response = await _http.send(
            self._graph.client,
            "GET",
            url,
            final=False,
            what="verify page",
            params={"fields": "id,name", "access_token": account.token},
        )
        if not response.is_success:
            raise _graph.classify(response, final=False, now=self._now(), what="verify page")
        node = _http.json_object(response, final=False, what="verify page")
        if str(node.get("id")) != account.node_id:
            raise base.AuthError("facebook: the token is for another page", code="WRONG_PAGE")
        return dict(credentials)

    def limits(self) -> base.PlatformLimits:
        return base.PlatformLimits()  # Graph publishes no per-Page post count (platforms.md §1)

    def validate(self, post: base.PostPayload) -> list[str]:
        problems = []
        text = post.message or ""
        if not text.strip() and not post.media:
            problems.append("a Facebook post needs text, a photo or a video")
        if len(text) > MAX_MESSAGE:
            problems.append(f"text is {len(text)} characters; Facebook allows {MAX_MESSAGE}")
        problems += graph_video.media_problems(
            post, platform="Facebook", public_only=self._public_only
        )
        return problems

    async def aclose(self) -> None:
        await self._graph.aclose()


def _link(options: Mapping[str, Any]) -> dict[str, str]:
    chosen = options.get("facebook") if isinstance(options, Mapping) else None
    if isinstance(chosen, Mapping) and isinstance(chosen.get("link"), str):
        return {"link": chosen["link"]}
    return {}
