"""Instagram against the Graph fake: the container flow in detail, the progress it keeps, and
every failure mode mapped to its class and outcome (platforms.md §0.1, §2)."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest

from adapters import _graph, _progress, base, instagram
from daemon.clock import FakeClock
from tests.contract.conftest import PAGE, TIMEOUTS, MemoryCredentials, Slept
from tests.contract.graph_harness import GraphHarness, instagram_harness
from tests.fakes import graph


class OrderedProgress(_progress.MemoryProgress):
    """Progress that notes how many requests the fake had seen at each write."""

    def __init__(self, fake: graph.FakeGraph) -> None:
        super().__init__()
        self.fake, self.seen_at_put = fake, list[tuple[str, int]]()

    async def put(self, post_id: str, key: str, value: str) -> None:
        self.seen_at_put.append((key.split(":")[0], len(self.fake.requests)))
        await super().put(post_id, key, value)


def second_process(ig: GraphHarness) -> instagram.InstagramAdapter:
    """Another adapter on the same stores, as after a daemon restart (nothing cached)."""
    return instagram.InstagramAdapter(
        ig.store,
        ig.progress,
        now=ig.clock.now,
        api_base=ig.graph.base_url + graph.PREFIX,
        timeouts=TIMEOUTS,
        sleep=Slept(ig.clock),
        media_poll_seconds=1.0,
        media_poll_max_seconds=5.0,
        public_media_only=False,
    )


async def test_container_then_publish_with_the_documented_parameters(ig: GraphHarness) -> None:
    """POST /{ig-user}/media with image_url and caption, status read, quota read, then
    POST /{ig-user}/media_publish with creation_id = the container; remote id = the media id."""
    url = ig.image_url()
    published = await ig.adapter.publish(ig.post("A cat #cats", url))

    (create,) = ig.graph.calls("container")
    assert create.path == f"/{_graph.GRAPH_VERSION}/{graph.IG_USER_ID}/media"
    assert httpx.QueryParams(create.body.decode()) == httpx.QueryParams(
        {"image_url": url, "caption": "A cat #cats", "access_token": graph.IG_TOKEN}
    )
    (container,) = ig.graph.of_kind("container")
    status = ig.graph.calls("node")[0]
    assert status.path.endswith(f"/{container['id']}")
    assert status.param("fields") == "status_code,status"
    (publish,) = ig.graph.calls("media_publish")
    assert httpx.QueryParams(publish.body.decode())["creation_id"] == container["id"]
    (media,) = ig.graph.of_kind("ig_media")
    assert (published.remote_id, published.permalink) == (media["id"], media["permalink"])


async def test_container_id_is_stored_before_the_first_status_poll(clock: FakeClock) -> None:
    """The container id is written the moment Graph returns it, before any other request;
    the publish mark before media_publish; the media id right after it."""
    ig = await instagram_harness(clock)
    progress = OrderedProgress(ig.graph)
    ig.adapter._progress = progress
    try:
        ig.graph.fail("container", "not_ready")
        await ig.adapter.publish(ig.post("Slow"))
    finally:
        await ig.adapter.aclose()
        await ig.graph.stop()

    routes = [r.route for r in ig.graph.requests]
    assert progress.seen_at_put == [
        ("ig_container", routes.index("container") + 1),
        ("ig_publish_sent", routes.index("media_publish")),
        ("ig_media", routes.index("media_publish") + 1),
    ]


async def test_polls_wait_through_sleep_and_are_not_tries(clock: FakeClock) -> None:
    """IN_PROGRESS twice: two injected sleeps, three status reads, one publish, in one call."""
    ig = await instagram_harness(clock, processing_polls=2)
    try:
        ig.graph.fail("container", "not_ready")
        await ig.adapter.publish(ig.post("Slow"))
        assert ig.routes() == [
            "container", "node", "node", "node", "publishing_limit", "media_publish", "node",
        ]  # fmt: skip
        assert ig.slept is not None and ig.slept.waits == [1.0, 1.0]
    finally:
        await ig.adapter.aclose()
        await ig.graph.stop()


async def test_a_container_still_processing_is_resumed_by_the_next_try(clock: FakeClock) -> None:
    """Past media_poll_max_seconds: retryable; the next try (another process) polls the same
    container instead of creating a second one."""
    ig = await instagram_harness(clock, processing_polls=8)
    try:
        ig.graph.fail("container", "not_ready")
        with pytest.raises(base.RetryableError) as caught:
            await ig.adapter.publish(ig.post("Very slow"))
        assert caught.value.code == "MEDIA_NOT_READY"

        later = second_process(ig)
        await later.publish(ig.post("Very slow"))
        await later.aclose()

        assert len(ig.graph.of_kind("container")) == 1
        assert ig.published_texts() == ["Very slow"]
    finally:
        await ig.adapter.aclose()
        await ig.graph.stop()


@pytest.mark.parametrize("published_status", [True, False], ids=["PUBLISHED", "stays-FINISHED"])
async def test_retry_after_ambiguous_publish_never_publishes_the_container_twice(
    clock: FakeClock, published_status: bool
) -> None:
    """media_publish recorded, then 500: a later try (another process) looks the post up first
    and answers it; the container is published once, whether Graph marks it PUBLISHED or not."""
    ig = await instagram_harness(clock, published_status=published_status)
    try:
        ig.graph.fail("media_publish", "ambiguous_after")
        with pytest.raises(base.AmbiguousError):
            await ig.adapter.publish(ig.post("Once only"))
        clock.advance(60)

        later = second_process(ig)
        published = await later.publish(ig.post("Once only"))
        again = await later.publish(ig.post("Once only"))  # the media id is remembered now
        await later.aclose()

        (media,) = ig.graph.of_kind("ig_media")
        assert published.remote_id == again.remote_id == media["id"]
        assert sum(ig.graph.publishes.values()) == 1
        assert ig.graph.republished == []
        assert len(ig.graph.calls("media_publish")) == 1
    finally:
        await ig.adapter.aclose()
        await ig.graph.stop()


async def test_ambiguous_publish_that_did_not_happen_publishes_the_same_container(
    ig: GraphHarness,
) -> None:
    """500 with nothing recorded: the next try finds no post, sees the container FINISHED, and
    publishes that container (no second container)."""
    ig.graph.fail("media_publish", "server_error")
    with pytest.raises(base.AmbiguousError):
        await ig.adapter.publish(ig.post("Retry me"))

    await ig.adapter.publish(ig.post("Retry me"))

    assert len(ig.graph.of_kind("container")) == 1
    assert ig.published_texts() == ["Retry me"]
    assert "media" in ig.routes()  # looked for the post before publishing again


async def test_published_container_whose_post_cannot_be_found_is_not_published_again(
    ig: GraphHarness,
) -> None:
    """PUBLISHED but absent from the listing: permanent failure, never a second media_publish."""
    ig.graph.fail("media_publish", "ambiguous_after")
    with pytest.raises(base.AmbiguousError):
        await ig.adapter.publish(ig.post("Hidden"))
    ig.graph.of_kind("ig_media")[0]["caption"] = "edited in the app"

    with pytest.raises(base.PermanentError) as caught:
        await ig.adapter.publish(ig.post("Hidden"))

    assert caught.value.code == "CONTAINER_ALREADY_PUBLISHED"
    assert len(ig.graph.calls("media_publish")) == 1 and ig.graph.republished == []


async def test_expired_container_restarts_the_flow(clock: FakeClock) -> None:
    """A stored container that EXPIRED between tries is replaced by a new one, then published."""
    ig = await instagram_harness(clock, processing_polls=8)
    try:
        ig.graph.fail("container", "not_ready")
        with pytest.raises(base.RetryableError):
            await ig.adapter.publish(ig.post("Late"))
        (old,) = ig.graph.of_kind("container")
        ig.graph.expire(old["id"])

        published = await ig.adapter.publish(ig.post("Late"))

        _, second = ig.graph.of_kind("container")
        assert ig.graph.publishes == {second["id"]: 1}
        assert (
            ig.progress.values[("post_1", instagram._Keys(ig.post("Late")).container)]
            == (second["id"])
        )
        assert published.remote_id == ig.graph.of_kind("ig_media")[0]["id"]
    finally:
        await ig.adapter.aclose()
        await ig.graph.stop()


async def test_a_container_expired_at_creation_is_recreated_once_then_retryable(
    ig: GraphHarness,
) -> None:
    """EXPIRED right away: one new container in the same try; twice: retryable, nothing out."""
    ig.graph.fail("container", "expired")
    await ig.adapter.publish(ig.post("Fresh"))
    assert len(ig.graph.of_kind("container")) == 2

    ig.graph.fail("container", "expired", times=2)
    with pytest.raises(base.RetryableError) as caught:
        await ig.adapter.publish(ig.post("Stale", post_id="post_2"))
    assert caught.value.code == "EXPIRED"
    assert ig.published_texts() == ["Fresh"]


# (route, mode) -> (error class, code, retry_after, publish mark left behind)
FAILURES = [
    ("media_publish", "rate_limit", base.RetryableError, "GRAPH_4", 300.0, False),
    ("media_publish", "page_rate_limit", base.RetryableError, "GRAPH_32", 420.0, False),
    ("media_publish", "daily_cap", base.RetryableError, "GRAPH_9_2207042", 3600.0, False),
    ("media_publish", "spam", base.PermanentError, "SPAM_RESTRICTED", None, False),
    ("media_publish", "expired_token", base.AuthError, "GRAPH_190_463", None, False),
    ("media_publish", "server_error", base.AmbiguousError, "GRAPH_2", None, True),
    ("media_publish", "hang", base.AmbiguousError, "READ_TIMEOUT", None, True),
    ("container", "server_error", base.RetryableError, "GRAPH_2", None, False),
    ("container", "hang", base.RetryableError, "READ_TIMEOUT", None, False),
    ("container", "invalid", base.PermanentError, "GRAPH_100", None, False),
    ("node", "rate_limit", base.RetryableError, "GRAPH_4", 300.0, False),
    ("publishing_limit", "unavailable", base.RetryableError, "GRAPH_2", None, False),
]


@pytest.mark.parametrize(
    ("route", "mode", "error", "code", "wait", "marked"),
    FAILURES,
    ids=[f"{f[0]}-{f[1]}" for f in FAILURES],
)
async def test_failure_modes(
    ig: GraphHarness,
    route: str,
    mode: str,
    error: type[base.AdapterError],
    code: str,
    wait: float | None,
    marked: bool,
) -> None:
    """Each failure is classified as platforms.md §1-§2 say; only the final call's 5xx and
    timeouts are ambiguous and leave the publish mark; a refused media_publish leaves none."""
    ig.graph.fail(route, mode)

    with pytest.raises(base.AdapterError) as caught:
        await ig.adapter.publish(ig.post("Hello"))

    assert (type(caught.value), caught.value.code) == (error, code)
    if wait is not None:
        assert isinstance(caught.value, base.RetryableError)
        assert caught.value.retry_after == pytest.approx(wait)
    sent = [k for (_, k) in ig.progress.values if k.startswith("ig_publish_sent")]
    assert bool(sent) is marked
    assert ig.published_texts() == []


async def test_publishing_limit_is_reported_and_enforced(clock: FakeClock) -> None:
    """quota_total becomes limits().per_24h; a used-up quota waits without calling publish."""
    ig = await instagram_harness(clock, quota_total=1)
    try:
        assert ig.adapter.limits() == base.PlatformLimits()
        await ig.adapter.publish(ig.post("One"))
        assert ig.adapter.limits().per_24h == 1

        with pytest.raises(base.RetryableError) as caught:
            await ig.adapter.publish(ig.post("Two", post_id="post_2"))

        assert caught.value.code == "PUBLISHING_LIMIT"
        assert len(ig.graph.calls("media_publish")) == 1
    finally:
        await ig.adapter.aclose()
        await ig.graph.stop()


def _ig(message: str | None, *media: base.MediaItem) -> base.PostPayload:
    return base.PostPayload("p", PAGE, "instagram", message, media)


PHOTO = base.MediaItem("https://cdn.example.com/a.jpg", "photo")
REEL = base.MediaItem("https://cdn.example.com/a.mov", "video", "video/quicktime")


@pytest.mark.parametrize(
    ("post", "problem"),
    [
        (_ig("text only"), "needs a photo"),
        (_ig("x" * 2201, PHOTO), "2200"),
        (_ig(" ".join(f"#t{n}" for n in range(31)), PHOTO), "31 hashtags"),
        (_ig(" ".join(f"@u{n}" for n in range(21)), PHOTO), "21 @-mentions"),
        (_ig("two", PHOTO, PHOTO), "one photo"),
        (_ig("reel", base.MediaItem("https://cdn.example.com/a.webm", "video")), "not MP4"),
        (_ig("reel", base.MediaItem("https://cdn.example.com/a.mp4", "video"), PHOTO), "one video"),
        (_ig("local", base.MediaItem("http://192.168.1.2/a.jpg", "photo")), "not public"),
    ],
    ids=[
        "text-only",
        "caption",
        "hashtags",
        "mentions",
        "carousel",
        "webm",
        "video-and-photo",
        "private-url",
    ],
)
def test_validate_refuses(post: base.PostPayload, problem: str) -> None:
    """Instagram's documented limits refuse the post before any request."""
    adapter = instagram.InstagramAdapter(
        MemoryCredentials(), _progress.MemoryProgress(), now=FakeClock().now
    )
    assert any(problem in p for p in adapter.validate(post)), adapter.validate(post)
    ok = _ig("x" * 2200 + "", PHOTO)
    assert adapter.validate(ok) == []
    assert adapter.validate(_ig(" ".join(f"#t{n}" for n in range(30)), PHOTO)) == []
    assert adapter.validate(_ig("a reel", REEL)) == []


async def test_find_published_matches_caption_and_time(ig: GraphHarness) -> None:
    """GET /{ig-user}/media: by caption from ``since`` on; excluded ids are skipped."""
    since = ig.clock.now() - timedelta(seconds=1)
    published = await ig.adapter.publish(ig.post("Look"))
    mark = ig.mark()

    found = await ig.adapter.find_published(ig.post("Look"), since)

    (call,) = ig.graph.requests[mark:]
    assert call.param("fields") == "id,caption,media_type,permalink,timestamp"
    assert found is not None and found.remote_id == published.remote_id
    excluded = frozenset({published.remote_id})
    assert await ig.adapter.find_published(ig.post("Look"), since, excluded) is None


# --- reels (platforms.md §2 "Flow": media_type=REELS) -------------------------------------------


async def test_reel_is_a_reels_container_polled_through_sleep_then_published(
    ig: GraphHarness,
) -> None:
    """POST /{ig-user}/media with media_type=REELS, video_url and caption; IN_PROGRESS twice
    (two injected sleeps, no try used), FINISHED, quota, then media_publish of that container;
    the container id is stored before the first status read."""
    progress = OrderedProgress(ig.graph)
    ig.adapter._progress = progress
    post = ig.video_post("A reel #reels")
    url = post.media[0].url
    published = await ig.adapter.publish(post)

    (create,) = ig.graph.calls("container")
    assert httpx.QueryParams(create.body.decode()) == httpx.QueryParams(
        {
            "media_type": "REELS",
            "video_url": url,
            "caption": "A reel #reels",
            "access_token": graph.IG_TOKEN,
        }
    )
    (container,) = ig.graph.of_kind("container")
    assert ig.routes() == [
        "container", "node", "node", "node", "publishing_limit", "media_publish", "node",
    ]  # fmt: skip
    assert ig.slept is not None and ig.slept.waits == [1.0, 1.0]
    (publish,) = ig.graph.calls("media_publish")
    assert httpx.QueryParams(publish.body.decode())["creation_id"] == container["id"]
    key = f"ig_container:{post.fingerprint()[:16]}"
    assert progress.puts[0][1:] == (key, container["id"])
    assert progress.seen_at_put[0] == ("ig_container", 1)  # before the first status read
    (media,) = ig.graph.of_kind("ig_media")
    assert (media["media_type"], media["caption"]) == ("VIDEO", "A reel #reels")
    assert (published.remote_id, published.permalink) == (media["id"], media["permalink"])
    assert ig.graph.calls("file") == []  # Graph pulls the video, postd does not


async def test_reel_container_error_is_permanent_with_graphs_code(ig: GraphHarness) -> None:
    """ERROR after processing: PermanentError with the code Graph's status names; the container
    is forgotten and nothing is published."""
    ig.graph.fail("container", "error")

    with pytest.raises(base.PermanentError) as caught:
        await ig.adapter.publish(ig.video_post())

    assert caught.value.code == "GRAPH_2207026"
    assert ig.graph.calls("media_publish") == []
    assert not any(k.startswith("ig_container") for (_, k) in ig.progress.values)


@pytest.mark.parametrize("mode", ["ambiguous_after", "hang_after"])
async def test_ambiguous_reel_publish_is_reconciled_without_a_second_publish(
    clock: FakeClock, mode: str
) -> None:
    """media_publish of a reel recorded, then 500 or no answer: the next try (another process)
    finds the reel by caption and answers it; media_publish is never sent again."""
    ig = await instagram_harness(clock)
    try:
        ig.graph.fail("media_publish", mode)
        with pytest.raises(base.AmbiguousError):
            await ig.adapter.publish(ig.video_post("Reel once"))
        clock.advance(60)

        later = second_process(ig)
        published = await later.publish(ig.video_post("Reel once"))
        await later.aclose()

        (media,) = ig.graph.of_kind("ig_media")
        assert published.remote_id == media["id"]
        assert len(ig.graph.calls("media_publish")) == 1 and ig.graph.republished == []
        assert len(ig.graph.of_kind("container")) == 1
    finally:
        await ig.adapter.aclose()
        await ig.graph.stop()


class _Crash(Exception):
    """The process dies (here: while waiting between status polls)."""


async def _crash(_seconds: float) -> None:
    raise _Crash


async def test_reel_resumes_after_a_crash_with_the_persisted_container(clock: FakeClock) -> None:
    """A crash while the reel processes: the restarted process reads the stored container id,
    polls that container and publishes it; no second container, one publish."""
    ig = await instagram_harness(clock)
    try:
        ig.adapter._sleep = _crash
        with pytest.raises(_Crash):
            await ig.adapter.publish(ig.video_post("Crashy reel"))
        (container,) = ig.graph.of_kind("container")
        assert container["id"] in ig.progress.values.values()

        later = second_process(ig)
        published = await later.publish(ig.video_post("Crashy reel"))
        await later.aclose()

        assert len(ig.graph.calls("container")) == 1
        (publish,) = ig.graph.calls("media_publish")
        assert httpx.QueryParams(publish.body.decode())["creation_id"] == container["id"]
        assert published.remote_id == ig.graph.of_kind("ig_media")[0]["id"]
    finally:
        await ig.adapter.aclose()
        await ig.graph.stop()
