"""Facebook Pages against the Graph fake: the documented requests in detail, and every failure
mode of the fake mapped to its class and outcome (platforms.md §0.1, §1)."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest

from adapters import _graph, base, facebook, graph_video
from daemon.clock import FakeClock
from tests.contract import graph_harness
from tests.contract.conftest import MemoryCredentials
from tests.contract.graph_harness import GraphHarness
from tests.fakes import graph


async def test_text_post_is_a_form_post_to_the_page_feed_under_the_pinned_version(
    fb: GraphHarness,
) -> None:
    """POST /v24.0/{page-id}/feed with message and the Page token as a form field; the remote
    id is the page_post id Graph answers, the permalink read after."""
    published = await fb.adapter.publish(fb.post("Hello page"))

    (call,) = fb.graph.calls("feed")
    assert (call.method, call.path) == ("POST", f"/{_graph.GRAPH_VERSION}/{graph.PAGE_ID}/feed")
    assert call.headers["content-type"] == "application/x-www-form-urlencoded"
    assert httpx.QueryParams(call.body.decode()) == httpx.QueryParams(
        {"message": "Hello page", "access_token": graph.PAGE_TOKEN}
    )
    assert call.query == {}  # the token never travels in the URL of a POST
    assert published.remote_id.startswith(f"{graph.PAGE_ID}_")
    assert published.permalink == f"https://www.facebook.com/{published.remote_id}"


async def test_link_option_is_sent_with_the_message(fb: GraphHarness) -> None:
    """options["facebook"]["link"] becomes the feed call's ``link``."""
    post = base.PostPayload(
        "post_1", "page_1", "facebook", "Read this", options={"facebook": {"link": "https://x.y"}}
    )
    await fb.adapter.publish(post)

    (call,) = fb.graph.calls("feed")
    assert httpx.QueryParams(call.body.decode())["link"] == "https://x.y"


async def test_photo_passes_the_url_for_graph_to_fetch(fb: GraphHarness) -> None:
    """POST /{page-id}/photos with url and caption (no bytes are uploaded); the remote id is
    the photo's post_id, so comments land on the post."""
    url = fb.image_url()
    published = await fb.adapter.publish(fb.post("A cat", url))

    (call,) = fb.graph.calls("photos")
    params = httpx.QueryParams(call.body.decode())
    assert (params["url"], params["caption"]) == (url, "A cat")
    assert fb.graph.calls("file") == []  # postd itself never downloaded it
    assert published.remote_id == fb.graph.of_kind("fb_post")[0]["id"]


def test_private_media_urls_are_refused_by_default() -> None:
    """Graph cannot fetch loopback/private URLs: validate says so before any call."""
    adapter = facebook.FacebookAdapter(MemoryCredentials(), now=FakeClock().now)
    for url in ("http://127.0.0.1/a.png", "https://10.0.0.1/a.png", "http://localhost/a.png"):
        post = base.PostPayload("p", "page_1", "facebook", "x", (base.MediaItem(url, "photo"),))
        assert any("not public" in p for p in adapter.validate(post)), url
    ok = base.PostPayload(
        "p", "page_1", "facebook", "x", (base.MediaItem("https://cdn.example.com/a.png", "photo"),)
    )
    assert adapter.validate(ok) == []


# mode on the final call -> (error class, code, retry_after, posts at the fake afterwards)
FAILURES = [
    ("rate_limit", base.RetryableError, "GRAPH_4", _graph.DEFAULT_THROTTLE_WAIT, 0),
    ("user_rate_limit", base.RetryableError, "GRAPH_17", _graph.DEFAULT_THROTTLE_WAIT, 0),
    ("page_rate_limit", base.RetryableError, "GRAPH_32", 7 * 60.0, 0),
    ("expired_token", base.AuthError, "GRAPH_190_463", None, 0),
    ("duplicate", base.PermanentError, "GRAPH_506", None, 0),
    ("policy_block", base.PermanentError, "GRAPH_368", None, 0),
    ("invalid", base.PermanentError, "GRAPH_100", None, 0),
    ("unavailable", base.AmbiguousError, "GRAPH_2", None, 0),  # 503 on the final call
    ("server_error", base.AmbiguousError, "GRAPH_2", None, 0),
    ("ambiguous_after", base.AmbiguousError, "GRAPH_1", None, 1),
    ("hang", base.AmbiguousError, "READ_TIMEOUT", None, 0),
    ("garbage", base.AmbiguousError, "BAD_RESPONSE", None, 0),
]


@pytest.mark.parametrize(
    ("mode", "error", "code", "wait", "posts"), FAILURES, ids=[f[0] for f in FAILURES]
)
async def test_failure_modes_of_the_feed_call(
    fb: GraphHarness,
    mode: str,
    error: type[base.AdapterError],
    code: str,
    wait: float | None,
    posts: int,
) -> None:
    """Each Graph failure of POST /feed is classified as platforms.md §1 says (throttles wait as
    the usage headers say; 5xx and timeouts on the final call are ambiguous)."""
    fb.graph.fail("feed", mode)

    with pytest.raises(base.AdapterError) as caught:
        await fb.adapter.publish(fb.post("Hello"))

    assert type(caught.value) is error
    assert caught.value.code == code
    if wait is not None:
        assert isinstance(caught.value, base.RetryableError)
        assert caught.value.retry_after == pytest.approx(wait)
    assert len(fb.graph.of_kind("fb_post")) == posts


async def test_throttle_before_the_final_call_is_retryable_and_then_publishes(
    fb: GraphHarness,
) -> None:
    """A 5xx on a lookup is retryable, not ambiguous; the retry after a throttle publishes once."""
    fb.graph.fail("posts", "server_error")
    with pytest.raises(base.RetryableError):
        await fb.adapter.find_published(fb.post("x"), fb.clock.now())
    fb.graph.fail("feed", "rate_limit")
    with pytest.raises(base.RetryableError):
        await fb.adapter.publish(fb.post("Once"))

    await fb.adapter.publish(fb.post("Once"))

    assert fb.published_texts() == ["Once"]


async def test_ambiguous_publish_is_reconciled_not_repeated(fb: GraphHarness) -> None:
    """Recorded, then 500: find_published finds the post Graph did make, by text and time."""
    since = fb.clock.now() - timedelta(seconds=30)
    fb.graph.fail("feed", "ambiguous_after")
    with pytest.raises(base.AmbiguousError):
        await fb.adapter.publish(fb.post("Maybe"))

    found = await fb.adapter.find_published(fb.post("Maybe"), since)

    assert found is not None and found.remote_id == fb.graph.by_text("Maybe")[0]["id"]


async def test_find_published_pages_through_newer_posts(fb: GraphHarness) -> None:
    """The wanted post behind more than a page of newer ones is found through ``after``."""
    since = fb.clock.now() - timedelta(seconds=1)
    await fb.adapter.publish(fb.post("Old one"))
    for n in range(30):
        fb.clock.advance(1)
        fb.graph._fb_post(f"newer {n}", None)
    mark = fb.mark()

    found = await fb.adapter.find_published(fb.post("Old one"), since)

    assert found is not None
    calls = fb.graph.requests[mark:]
    assert [c.param("after") for c in calls] == [None, "25"]


async def test_expired_token_rereads_the_store_once(fb: GraphHarness) -> None:
    """Code 190: the adapter reads the stored credentials again; a re-connected token works."""
    await fb.adapter.publish(fb.post("first"))  # the old token is cached
    fb.graph.tokens["page-token-2"] = graph.PAGE_ID
    del fb.graph.tokens[graph.PAGE_TOKEN]
    fb.store.pages["page_1"]["access_token"] = "page-token-2"

    await fb.adapter.publish(fb.post("second"))

    assert fb.published_texts() == ["first", "second"]


async def test_comment_reply_and_listing_use_graph_edges(fb: GraphHarness) -> None:
    """First comment and reply are POST .../comments; the listing asks for the stream with
    parents, chronologically."""
    published = await fb.adapter.publish(fb.post("Post"))
    comment = await fb.adapter.post_comment(fb.post(), published.remote_id, "First!")
    reply = await fb.adapter.reply_to_comment(fb.post(), comment.id, "Threaded")
    mark = fb.mark()

    listed = await fb.adapter.list_comments(fb.post(), published.remote_id)

    first, second = fb.graph.calls("comment")
    assert first.path.endswith(f"/{published.remote_id}/comments")
    assert second.path.endswith(f"/{comment.id}/comments")
    (listing,) = fb.graph.requests[mark:]
    assert (listing.param("filter"), listing.param("order")) == ("stream", "chronological")
    assert [(c.id, c.parent_id) for c in listed] == [(comment.id, None), (reply.id, comment.id)]


# --- video (platforms.md §1 (c)) ----------------------------------------------------------------


async def test_video_is_published_by_url_then_its_processing_is_waited_out(
    fb: GraphHarness,
) -> None:
    """POST /{page-id}/videos with file_url and description (form, Page token; no bytes sent),
    then GET /{video-id}?fields=id,status,... through the injected sleep until ``ready``; the
    remote id is the video id, with its permalink."""
    url = fb.video_url()
    published = await fb.adapter.publish(fb.video_post("A clip #video"))

    (call,) = fb.graph.calls("videos")
    assert (call.method, call.path) == ("POST", f"/{_graph.GRAPH_VERSION}/{graph.PAGE_ID}/videos")
    assert call.query == {}
    assert httpx.QueryParams(call.body.decode()) == httpx.QueryParams(
        {"file_url": url, "description": "A clip #video", "access_token": graph.PAGE_TOKEN}
    )
    (video,) = fb.graph.of_kind("fb_video")
    polls = fb.graph.calls("node")
    assert [p.path for p in polls] == [f"/{_graph.GRAPH_VERSION}/{video['id']}"] * 3
    assert {p.param("fields") for p in polls} == {"id,status,permalink_url,created_time"}
    assert fb.slept is not None and fb.slept.waits == [1.0, 1.0]
    assert fb.graph.calls("file") == [] and fb.graph.of_kind("fb_post") == []
    assert (published.remote_id, published.permalink) == (video["id"], video["permalink_url"])
    assert fb.published_texts() == ["A clip #video"]


def test_videos_go_to_the_graph_video_host_unless_the_api_base_is_overridden() -> None:
    """platforms.md §1 (c): uploads go to graph-video.facebook.com; a configured api_base (a
    proxy, the fake) is used as is, and video_api_base wins over both."""
    assert (
        graph_video.video_base("", "") == f"https://graph-video.facebook.com/{_graph.GRAPH_VERSION}"
    )
    assert graph_video.video_base(_graph.GRAPH_API_BASE, "") == _graph.GRAPH_VIDEO_BASE
    assert graph_video.video_base("http://127.0.0.1:9/v24.0/", "") == "http://127.0.0.1:9/v24.0"
    assert graph_video.video_base("", "https://v.example/") == "https://v.example"


async def test_video_still_processing_after_the_poll_budget_is_published_once(
    clock: FakeClock,
) -> None:
    """Processing past media_poll_max_seconds, or a failing status read: the video exists, so
    the post is published (never a second /videos call, no retry consumed)."""
    fb = await graph_harness.facebook_harness(clock, video_polls=50)
    try:
        slow = await fb.adapter.publish(fb.video_post("Slow clip"))
        assert fb.slept is not None and sum(fb.slept.waits) == 5.0
        fb.graph.fail("node", "server_error")
        unread = await fb.adapter.publish(fb.video_post("Unread clip", post_id="post_2"))

        assert [v["id"] for v in fb.graph.of_kind("fb_video")] == [slow.remote_id, unread.remote_id]
        assert len(fb.graph.calls("videos")) == 2
        assert unread.permalink is None
    finally:
        await fb.adapter.aclose()
        await fb.graph.stop()


async def test_video_whose_processing_fails_is_a_permanent_failure(fb: GraphHarness) -> None:
    """status.video_status ``error``: PermanentError VIDEO_ERROR after the polls."""
    fb.graph.fail("videos", "video_error")

    with pytest.raises(base.PermanentError) as caught:
        await fb.adapter.publish(fb.video_post())

    assert caught.value.code == "VIDEO_ERROR"
    assert len(fb.graph.calls("videos")) == 1


VIDEO_FAILURES = [*FAILURES, ("hang_after", base.AmbiguousError, "READ_TIMEOUT", None, 1)]


@pytest.mark.parametrize(
    ("mode", "error", "code", "wait", "videos"),
    VIDEO_FAILURES,
    ids=[f[0] for f in VIDEO_FAILURES],
)
async def test_failure_modes_of_the_videos_call(
    fb: GraphHarness,
    mode: str,
    error: type[base.AdapterError],
    code: str,
    wait: float | None,
    videos: int,
) -> None:
    """POST /videos is the final call: classified like /feed (5xx and timeouts ambiguous)."""
    fb.graph.fail("videos", mode)

    with pytest.raises(base.AdapterError) as caught:
        await fb.adapter.publish(fb.video_post())

    assert (type(caught.value), caught.value.code) == (error, code)
    if wait is not None:
        assert isinstance(caught.value, base.RetryableError)
        assert caught.value.retry_after == pytest.approx(wait)
    assert len(fb.graph.of_kind("fb_video")) == videos


@pytest.mark.parametrize("mode", ["ambiguous_after", "hang_after"])
async def test_ambiguous_video_publish_is_reconciled_through_the_page_videos(
    fb: GraphHarness, mode: str
) -> None:
    """Recorded, then 500 or no answer: find_published lists GET /{page-id}/videos (by
    description and time) and finds the video Graph made; nothing is sent again."""
    since = fb.clock.now() - timedelta(seconds=30)
    fb.graph.fail("videos", mode)
    with pytest.raises(base.AmbiguousError):
        await fb.adapter.publish(fb.video_post("Maybe a clip"))
    mark = fb.mark()

    found = await fb.adapter.find_published(fb.video_post("Maybe a clip"), since)

    (video,) = fb.graph.of_kind("fb_video")
    assert found is not None and found.remote_id == video["id"]
    (listing,) = fb.graph.requests[mark:]
    assert (listing.route, listing.param("fields")) == (
        "page_videos",
        "id,description,created_time,permalink_url",
    )
    assert len(fb.graph.calls("videos")) == 1
    assert await fb.adapter.find_published(fb.video_post("Other"), since) is None


def _fb(*media: base.MediaItem) -> base.PostPayload:
    return base.PostPayload("p", "page_1", "facebook", "x", media)


MP4 = base.MediaItem("https://cdn.example.com/a.mp4", "video")


@pytest.mark.parametrize(
    ("post", "problem"),
    [
        (_fb(MP4, base.MediaItem("https://cdn.example.com/a.png", "photo")), "one video"),
        (_fb(MP4, MP4), "one video"),
        (_fb(base.MediaItem("https://cdn.example.com/a.avi", "video")), "not MP4 or MOV"),
        (_fb(base.MediaItem("https://cdn.example.com/a", "video", "video/webm")), "video/webm"),
        (_fb(base.MediaItem("http://192.168.1.2/a.mp4", "video")), "not public"),
    ],
    ids=["with-photo", "two-videos", "avi", "webm", "private-url"],
)
def test_validate_video_posts(post: base.PostPayload, problem: str) -> None:
    """One video alone, MP4 or MOV (by type, else extension), at a public URL."""
    adapter = facebook.FacebookAdapter(MemoryCredentials(), now=FakeClock().now)
    assert any(problem in p for p in adapter.validate(post)), adapter.validate(post)
    assert adapter.validate(_fb(MP4)) == []
    assert (
        adapter.validate(_fb(base.MediaItem("https://c.example/v", "video", "video/quicktime")))
        == []
    )
    assert adapter.validate(_fb(base.MediaItem("https://c.example/a.MOV", "video"))) == []
