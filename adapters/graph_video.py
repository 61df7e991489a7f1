"""Video posts on the Graph platforms (platforms.md §1 (c), §2 "Flow"): what Facebook Pages and
Instagram share about them, and the Facebook video publish.

Both platforms fetch the video from its URL themselves (postd never uploads the bytes), so the
URL must be public, like a photo's; one video per post, MP4 or MOV (by the item's MIME type, else
the URL's extension). Sizes cannot be checked here (a media item carries no size): a file over
the platform's limit fails at Graph's processing, as an ERROR status.

Facebook: ``POST https://graph-video.facebook.com/{version}/{page-id}/videos`` with ``file_url``
and ``description`` is the final, irreversible call (a timeout or a 5xx is ambiguous, reconciled
through ``GET /{page-id}/videos``). Then ``GET /{video-id}?fields=id,status,permalink_url,
created_time`` until ``status.video_status`` is ``ready`` [U], each wait through the injected
sleep (polls are not tries): ``error`` fails the post permanently; a read that fails, or a video
still processing after ``media_poll_max_seconds``, leaves the post published as it is (the
video exists: a new try would publish it twice).
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from adapters import _graph, _http, base

VIDEO_MIME_TYPES = frozenset({"video/mp4", "video/quicktime"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".mov"})
# Facebook's videos as find_published lists them (GET /{page-id}/videos).
FB_VIDEO_NODES = _graph.NodeFields(
    "facebook",
    "videos",
    "description",
    "created_time",
    "permalink_url",
    listing="id,description,created_time,permalink_url",
)
_ERROR_CODE = re.compile(r"error code (\d+)", re.IGNORECASE)


def is_video(post: base.PostPayload) -> bool:
    return any(item.kind == "video" for item in post.media)


def media_problems(
    post: base.PostPayload, *, platform: str, public_only: bool, photo_word: str = "photo"
) -> list[str]:
    """What refuses the post's media: more than one item, a video with anything else, a kind
    that is neither photo nor video, a video not MP4/MOV, a URL Graph cannot fetch."""
    problems = []
    if len(post.media) > 1:
        kinds = "video" if is_video(post) else photo_word
        problems.append(f"postd publishes one {kinds} per {platform} post")
    for item in post.media:
        if item.kind == "video":
            problem = video_format_problem(item)
            if problem:
                problems.append(f"{platform}: {problem}")
        elif item.kind != "photo":
            problems.append(f"{platform} posts carry a photo or a video, not {item.kind!r}")
        problem = _graph.media_url_problem(item.url, public_only=public_only)
        if problem:
            problems.append(problem)
    return problems


def video_format_problem(item: base.MediaItem) -> str | None:
    """Why a video is not MP4/MOV: by its MIME type when known, else by the URL's extension."""
    if item.mime_type:
        mime = item.mime_type.split(";")[0].strip().lower()
        return None if mime in VIDEO_MIME_TYPES else f"video type {mime} is not MP4 or MOV"
    suffix = PurePosixPath(urlsplit(item.url).path).suffix.lower()
    if suffix in VIDEO_EXTENSIONS:
        return None
    return f"video {item.url!r} is not MP4 or MOV (no video/mp4 or video/quicktime type)"


def status_error_code(status: Any) -> str:
    """``GRAPH_<n>`` from a failed container's ``status`` ("Error: ... error code 2207026"),
    else ``CONTAINER_ERROR``."""
    found = _ERROR_CODE.search(str(status or ""))
    return f"GRAPH_{found.group(1)}" if found else "CONTAINER_ERROR"


def video_base(api_base: str, video_api_base: str) -> str:
    """The host videos are published on: as given, else Graph's video host when ``api_base``
    is Graph's own, else ``api_base`` (a proxy, a fake)."""
    if video_api_base:
        return video_api_base.rstrip("/")
    if not api_base or api_base.rstrip("/") == _graph.GRAPH_API_BASE:
        return _graph.GRAPH_VIDEO_BASE
    return api_base.rstrip("/")


class FacebookVideo:
    """The Facebook video publish (see the module docstring)."""

    def __init__(
        self,
        graph: _graph.GraphClient,
        *,
        video_api_base: str,
        now: _http.Now,
        sleep: _http.Sleep,
        poll_seconds: float,
        poll_max_seconds: float,
    ) -> None:
        self._graph = graph
        self._base = video_api_base
        self._now = now
        self._sleep = sleep
        self._poll = poll_seconds
        self._poll_max = poll_max_seconds

    async def publish(self, post: base.PostPayload) -> base.Published:
        params = {"file_url": post.media[0].url, "description": post.message or ""}
        made = await self._graph.call(
            post.page_id,
            "POST",
            "/{node}/videos",
            final=True,
            what="publish video",
            params=params,
            base_url=self._base,
        )
        if not made.get("id"):
            raise base.AmbiguousError("facebook: a video without an id", code="BAD_RESPONSE")
        return await self._wait_ready(post, str(made["id"]))

    async def _wait_ready(self, post: base.PostPayload, video_id: str) -> base.Published:
        waited = 0.0
        fields = "id,status,permalink_url,created_time"
        while True:
            try:
                node = await self._graph.call(
                    post.page_id,
                    "GET",
                    f"/{video_id}",
                    final=False,
                    what="video status",
                    params={"fields": fields},
                )
            except base.AdapterError:  # published all the same; only the link is lost
                return base.Published(video_id, None, self._now())
            status = str(_graph.mapping(node.get("status")).get("video_status") or "")
            if status == "error":
                raise base.PermanentError(
                    f"facebook: video {video_id} failed processing", code="VIDEO_ERROR"
                )
            if status in ("ready", "") or waited >= self._poll_max:
                when = _graph.graph_time(node.get("created_time"), self._now())
                return base.Published(video_id, node.get("permalink_url"), when)
            await self._sleep(self._poll)
            waited += self._poll
