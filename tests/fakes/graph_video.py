"""Video on the Graph fake (tests/fakes/graph.py; platforms.md §1 (c), §2 "Flow"): the Page's
``/videos`` edge and the video nodes it makes. A Page video is created by ``POST /{page}/videos``
(``file_url``, ``description``; route ``videos``), reads ``status.video_status`` ``processing``
for :attr:`FakeGraph.video_polls` reads of the node, then ``ready`` (``error`` in the mode
``video_error``), and is listed by ``GET /{page}/videos`` (route ``page_videos``), newest first.
Reels containers (``media_type=REELS``) live in graph.py next to the image containers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.responses import Response

if TYPE_CHECKING:
    from tests.fakes.graph import FakeGraph

# What a failed container's ``status`` says (the code is Graph's "unsupported video format").
REEL_ERROR_STATUS = "Error: Media upload has failed with error code 2207026"


class FakeVideos:
    """The Page video handlers of one :class:`FakeGraph`."""

    def __init__(self, fake: FakeGraph) -> None:
        self.fake = fake

    async def create(self, node: str, params: dict[str, str], mode: str | None) -> Response:
        from tests.fakes import graph

        fake = self.fake
        if node != graph.PAGE_ID:
            return fake._not_found(node)
        if not params.get("file_url"):
            return fake._json(graph.error(100, "Invalid parameter: file_url"), 400)
        video_id = fake._id()
        fake._add(
            "fb_video",
            video_id,
            description=params.get("description", ""),
            permalink_url=f"https://www.facebook.com/{graph.PAGE_ID}/videos/{video_id}/",
            _file=params["file_url"],
            _polls_left=fake.video_polls,
            _video_status="error" if mode == "video_error" else "ready",
        )
        if mode == "ambiguous_after":
            return fake._ambiguous()
        if mode == "hang_after":  # done, then no answer until the client gives up
            await fake._release.wait()
            return Response(status_code=504)
        return fake._json({"id": video_id})

    async def listing(self, node: str, params: dict[str, str], _m: str | None) -> Response:
        from tests.fakes import graph

        if node != graph.PAGE_ID:
            return self.fake._not_found(node)
        return self.fake._json(self.fake._page_of(self.fake.of_kind("fb_video"), params))

    def status(self, found: dict[str, Any]) -> dict[str, Any]:
        """A read of the video node: ``processing`` while polls are left, then its outcome."""
        if found["_polls_left"] > 0:
            found["_polls_left"] -= 1
            status: dict[str, Any] = {"video_status": "processing", "processing_progress": 50}
        else:
            status = {"video_status": found["_video_status"]}
        return {**self.fake._public(found), "status": status}
