"""YouTube against its fake: the documented requests in detail (resumable upload, comments,
reconciliation, token refresh), every failure mode mapped to its class (platforms.md §0.1, §6),
resuming a persisted upload session, the final chunk's lost answer reconciled without a
duplicate video, and the daily quota."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs

import pytest

from adapters import _progress, base, youtube, youtube_client
from daemon.clock import FakeClock
from tests.contract.conftest import PAGE, Harness
from tests.contract.youtube_harness import YouTubeHarness, video_bytes, youtube_harness
from tests.fakes import youtube as fake_yt

UNIT = youtube.CHUNK_UNIT
SIZE = 2 * UNIT + 1000  # three chunks of 256 KiB at most


def yt_of(h: Harness) -> YouTubeHarness:
    assert isinstance(h, YouTubeHarness)
    return h


def big_post(h: YouTubeHarness, message: str = "Launch day\nAll about it") -> base.PostPayload:
    return h.post(message, h.video_url("big.mp4", SIZE))


class OrderedProgress(_progress.MemoryProgress):
    """Progress that notes how many requests the fake had seen at each write."""

    def __init__(self, fake: fake_yt.FakeYouTube) -> None:
        super().__init__()
        self.fake, self.seen_at_put = fake, list[tuple[str, int]]()

    async def put(self, post_id: str, key: str, value: str) -> None:
        self.seen_at_put.append((key.split(":")[0], len(self.fake.requests)))
        await super().put(post_id, key, value)


# --- the documented requests ------------------------------------------------------------------


async def test_publish_is_a_resumable_upload_in_256k_chunks(yt: Harness) -> None:
    """POST the metadata (resumable, snippet+status, upload length and type), then PUT the bytes
    to the session URI in 256 KiB chunks with Content-Range; the video id comes back."""
    h = yt_of(yt)
    published = await h.adapter.publish(big_post(h))

    (start,) = h.yt.calls("start")
    assert (start.method, start.path) == ("POST", "/upload/youtube/v3/videos")
    assert start.query == {"uploadType": ["resumable"], "part": ["snippet,status"]}
    assert start.headers["authorization"] == f"Bearer {h.store.pages[PAGE]['access_token']}"
    assert start.headers["content-type"] == "application/json; charset=UTF-8"
    assert start.headers["x-upload-content-length"] == str(SIZE)
    assert start.headers["x-upload-content-type"] == "video/mp4"
    assert json.loads(start.body) == {
        "snippet": {"title": "Launch day", "description": "Launch day\nAll about it"},
        "status": {"privacyStatus": "public"},
    }
    chunks = h.yt.calls("chunk")
    assert [(c.method, c.path, c.param("upload_id")) for c in chunks] == [
        ("PUT", "/upload/youtube/v3/videos", next(iter(h.yt.sessions)))
    ] * 3
    assert [c.headers["content-range"] for c in chunks] == [
        f"bytes 0-{UNIT - 1}/{SIZE}",
        f"bytes {UNIT}-{2 * UNIT - 1}/{SIZE}",
        f"bytes {2 * UNIT}-{SIZE - 1}/{SIZE}",
    ]
    assert {c.headers["content-type"] for c in chunks} == {"video/mp4"}
    (video,) = h.yt.videos
    assert video["_bytes"] == video_bytes(SIZE) and h.yt.bytes_received == SIZE
    assert (published.remote_id, published.permalink) == (
        video["id"],
        f"https://www.youtube.com/watch?v={video['id']}",
    )


async def test_session_uri_is_stored_before_the_first_chunk(clock: FakeClock) -> None:
    """The session URI is written the moment Google returns it; the final-chunk mark just
    before the last chunk; the video id right after it; the session is then forgotten."""
    h = await youtube_harness(clock)
    progress = OrderedProgress(h.yt)
    h.adapter._progress = progress
    try:
        await h.adapter.publish(big_post(h))
    finally:
        await h.adapter.aclose()
        await h.yt.stop()

    routes = [r.route for r in h.yt.requests]
    last_chunk = len(routes) - 1
    assert progress.seen_at_put == [
        ("yt_session", routes.index("start") + 1),
        ("yt_final_sent", last_chunk),
        ("yt_video", last_chunk + 1),
    ]
    session_uri = progress.puts[0][2]
    assert session_uri.startswith(h.yt.base_url + "/upload/youtube/v3/videos?")
    assert not any(k.startswith(("yt_session", "yt_final")) for _, k in progress.values)


async def test_first_comment_is_a_comment_thread(yt: Harness) -> None:
    """commentThreads.insert?part=snippet with the channel, the video and textOriginal."""
    h = yt_of(yt)
    published = await h.adapter.publish(h.post())

    comment = await h.adapter.post_comment(h.post(), published.remote_id, "First!")

    (call,) = h.yt.calls("thread_insert")
    assert (call.method, call.path, call.query) == (
        "POST",
        "/youtube/v3/commentThreads",
        {"part": ["snippet"]},
    )
    assert call.headers["authorization"] == f"Bearer {h.store.pages[PAGE]['access_token']}"
    assert call.headers["content-type"] == "application/json"
    assert call.json() == {
        "snippet": {
            "channelId": h.yt.alice["id"],
            "videoId": published.remote_id,
            "topLevelComment": {"snippet": {"textOriginal": "First!"}},
        }
    }
    assert (comment.author_name, comment.author_username) == ("Alice's channel", "alice")


async def test_comments_are_listed_as_threads_with_replies(yt: Harness) -> None:
    """commentThreads.list by videoId (snippet,replies; plain text; newest first) gives every
    comment, replies under their thread, oldest first; authors by handle."""
    h = yt_of(yt)
    published = await h.adapter.publish(h.post())
    top = h.someone_comments(published.remote_id, "nice & <b>bold</b>")
    h.clock.advance(5)
    reply = await h.adapter.reply_to_comment(h.post(), top, "thanks")

    comments = await h.adapter.list_comments(h.post(), published.remote_id)

    (call,) = h.yt.calls("threads")
    assert call.query == {
        "part": ["snippet,replies"],
        "videoId": [published.remote_id],
        "maxResults": ["100"],
        "order": ["time"],
        "textFormat": ["plainText"],
    }
    assert [(c.id, c.message, c.parent_id, c.author_username) for c in comments] == [
        (top, "nice & <b>bold</b>", None, "bob"),
        (reply.id, "thanks", top, "alice"),
    ]


async def test_threads_with_many_replies_fetch_them_all(yt: Harness) -> None:
    """A thread listing only some of its replies (YouTube inlines a few) has them read through
    comments.list?parentId."""
    h = yt_of(yt)
    published = await h.adapter.publish(h.post())
    top = h.someone_comments(published.remote_id, "question")
    for i in range(7):
        h.clock.advance(1)
        h.yt._new_comment(h.yt.bob, published.remote_id, f"more {i}", top)

    comments = await h.adapter.list_comments(h.post(), published.remote_id)

    (replies,) = h.yt.calls("replies")
    assert replies.query == {"part": ["snippet"], "parentId": [top], "maxResults": ["100"]}
    assert [c.message for c in comments] == ["question"] + [f"more {i}" for i in range(7)]


async def test_reply_is_comments_insert_with_parent_id(yt: Harness) -> None:
    """comments.insert?part=snippet with parentId and textOriginal; the video comes back."""
    h = yt_of(yt)
    published = await h.adapter.publish(h.post())
    top = h.someone_comments(published.remote_id, "question?")

    reply = await h.adapter.reply_to_comment(h.post(), top, "answer")

    (call,) = h.yt.calls("comment_insert")
    assert (call.path, call.query) == ("/youtube/v3/comments", {"part": ["snippet"]})
    assert call.json() == {"snippet": {"parentId": top, "textOriginal": "answer"}}
    assert (reply.parent_id, reply.post_remote_id) == (top, published.remote_id)


async def test_find_published_lists_the_uploads_playlist(yt: Harness) -> None:
    """channels?mine=true names the uploads playlist (read once), playlistItems lists it; the
    video matches by title and description, not by text alone."""
    h = yt_of(yt)
    since = h.clock.now() - timedelta(minutes=1)
    published = await h.adapter.publish(h.post("Title line\nbody"))

    found = await h.adapter.find_published(h.post("Title line\nbody"), since)
    titled = h.post("Title line\nbody")
    other_title = base.PostPayload(
        titled.post_id, PAGE, "youtube", titled.message, titled.media, options={"title": "X"}
    )
    assert await h.adapter.find_published(other_title, since) is None

    (channels,) = h.yt.calls("channels")
    assert channels.query == {"part": ["contentDetails"], "mine": ["true"]}
    listing = h.yt.calls("playlist_items")
    assert [c.query for c in listing] == [
        {
            "part": ["snippet,contentDetails"],
            "playlistId": ["UU" + h.yt.alice["id"][2:]],
            "maxResults": ["50"],
        }
    ] * 2
    assert found is not None and found.remote_id == published.remote_id


async def test_find_published_walks_pages_until_older_uploads(yt: Harness) -> None:
    """Older uploads end the walk; a match on the second page is found through pageToken."""
    h = yt_of(yt)
    since = h.clock.now()
    published = await h.adapter.publish(h.post("The one"))
    for i in range(55):
        await h.adapter.publish(h.post(f"Later {i}", post_id=f"later_{i}"))

    found = await h.adapter.find_published(h.post("The one"), since)

    assert found is not None and found.remote_id == published.remote_id
    tokens = [c.param("pageToken") for c in h.yt.calls("playlist_items")]
    assert tokens == [None, "50"]


async def test_refresh_posts_the_refresh_token_with_client_credentials(yt: Harness) -> None:
    """POST /token (Google's token endpoint) with grant_type=refresh_token, the refresh token,
    client id and secret; Google keeps the refresh token, so the stored one stays."""
    h = yt_of(yt)
    creds = dict(h.store.pages[PAGE])

    refreshed = await h.adapter.refresh_credentials(creds)

    (call,) = h.yt.calls("token")
    assert (call.method, call.path) == ("POST", "/token")
    assert {k: v[0] for k, v in parse_qs(call.body.decode()).items()} == {
        "grant_type": "refresh_token",
        "refresh_token": creds["refresh_token"],
        "client_id": fake_yt.CLIENT_ID,
        "client_secret": fake_yt.CLIENT_SECRET,
    }
    assert refreshed["refresh_token"] == creds["refresh_token"]
    assert refreshed["access_token"] in h.yt.tokens
    assert int(refreshed["expires_at"]) == int(h.clock.now().timestamp()) + 3599


# --- failure modes ----------------------------------------------------------------------------

PACIFIC_MIDNIGHT = (
    datetime(2026, 1, 6, 8, 0, tzinfo=UTC) - FakeClock().now()
).total_seconds()  # the clock starts 2026-01-05 09:00 UTC, 01:00 PST

FAILURES = [
    ("start", "rate_limit", base.RetryableError, "rateLimitExceeded", 30),
    ("start", "throttled", base.RetryableError, "rateLimitExceeded", 60),
    ("start", "quota", base.RetryableError, "quotaExceeded", PACIFIC_MIDNIGHT),
    ("start", "upload_limit", base.RetryableError, "uploadLimitExceeded", 86400),
    ("start", "invalid_title", base.PermanentError, "invalidTitle", None),
    ("start", "server_error", base.RetryableError, "backendError", None),
    ("start", "unavailable", base.RetryableError, "backendError", None),
    ("start", "hang", base.RetryableError, "READ_TIMEOUT", None),
    ("start", "garbage", base.RetryableError, "BAD_RESPONSE", None),
    ("chunk", "server_error", base.RetryableError, "UPLOAD_INCOMPLETE", None),
    ("chunk", "hang", base.RetryableError, "UPLOAD_INCOMPLETE", None),
    ("chunk", "garbage", base.RetryableError, "UPLOAD_INCOMPLETE", None),
    ("chunk", "quota", base.RetryableError, "quotaExceeded", PACIFIC_MIDNIGHT),
]


@pytest.mark.parametrize(("route", "mode", "error", "code", "wait"), FAILURES)
async def test_failure_modes_are_classified(
    yt: Harness,
    route: str,
    mode: str,
    error: type[base.AdapterError],
    code: str,
    wait: float | None,
) -> None:
    """Each failure maps to its class and code; a lost answer to the final chunk is asked of
    the session first (308: provably nothing created, so retryable); nothing was published."""
    h = yt_of(yt)
    h.yt.fail(route, mode)

    with pytest.raises(base.AdapterError) as caught:
        await h.adapter.publish(h.post())

    assert type(caught.value) is error
    assert caught.value.code == code
    if wait is not None:
        assert isinstance(caught.value, base.RetryableError)
        assert caught.value.retry_after == pytest.approx(wait, abs=1)
    assert h.yt.videos == []


async def test_invalid_title_keeps_youtubes_reason_and_message(yt: Harness) -> None:
    """YouTube's 400 invalidTitle is permanent with its reason and message."""
    h = yt_of(yt)
    h.yt.fail("start", "invalid_title")

    with pytest.raises(base.PermanentError) as caught:
        await h.adapter.publish(h.post())

    assert caught.value.http_status == 400 and "invalid video title" in caught.value.message


async def test_a_5xx_after_the_final_chunk_created_the_video_is_reconciled(yt: Harness) -> None:
    """The final chunk creates the video and answers 503: the session, asked again, answers 200
    with the video; published once, no ambiguity, no second upload."""
    h = yt_of(yt)
    h.yt.fail("chunk", "ambiguous_after")

    published = await h.adapter.publish(h.post())

    (video,) = h.yt.videos
    assert published.remote_id == video["id"]
    status_query = h.yt.calls("chunk")[-1]
    assert status_query.headers["content-range"] == "bytes */4096" and status_query.body == b""
    assert status_query.headers["content-length"] == "0"
    assert h.routes() == ["start", "chunk", "chunk"]


async def test_a_timeout_after_the_final_chunk_created_the_video_is_reconciled(
    yt: Harness,
) -> None:
    """The final chunk creates the video and hangs past the read timeout: the status query
    finds the video."""
    h = yt_of(yt)
    h.yt.fail("chunk", "hang_after")

    published = await h.adapter.publish(h.post())

    assert [v["id"] for v in h.yt.videos] == [published.remote_id]


async def test_final_chunk_in_doubt_is_ambiguous_then_resolved_without_a_duplicate(
    yt: Harness,
) -> None:
    """The final chunk's 503 and then a failing status query: AmbiguousError. Reconciliation
    finds the video; a later try asks the stored session and gets the same video back."""
    h = yt_of(yt)
    since = h.clock.now() - timedelta(minutes=1)
    h.yt.fail("chunk", "ambiguous_after")
    h.yt.fail("chunk", "server_error")

    with pytest.raises(base.AmbiguousError):
        await h.adapter.publish(h.post())
    found = await h.adapter.find_published(h.post(), since)
    async with h.second_process() as later:
        again = await later.publish(h.post())

    (video,) = h.yt.videos
    assert found is not None and found.remote_id == video["id"] == again.remote_id
    assert len(h.yt.calls("start")) == 1 and h.yt.bytes_received == 4096


@pytest.mark.parametrize("mode", ["server_error", "hang"])
async def test_a_later_try_resumes_the_stored_session_at_its_offset(yt: Harness, mode: str) -> None:
    """The second of three chunks fails (5xx or timeout: retryable). Another process asks the
    stored session where it stands and sends from there: no new session, every byte once."""
    h = yt_of(yt)
    post = big_post(h)
    h.yt.fail("chunk", "ok")
    h.yt.fail("chunk", mode)
    with pytest.raises(base.RetryableError):
        await h.adapter.publish(post)
    mark = h.mark()

    async with h.second_process() as later:
        published = await later.publish(post)

    chunks = h.yt.calls("chunk")[-3:]
    assert h.routes(mark) == ["chunk", "chunk", "chunk"]  # status query, then two chunks
    assert [c.headers["content-range"] for c in chunks] == [
        f"bytes */{SIZE}",
        f"bytes {UNIT}-{2 * UNIT - 1}/{SIZE}",
        f"bytes {2 * UNIT}-{SIZE - 1}/{SIZE}",
    ]
    (video,) = h.yt.videos
    assert published.remote_id == video["id"] and video["_bytes"] == video_bytes(SIZE)
    assert h.yt.bytes_received == SIZE and len(h.yt.sessions) == 1


async def test_a_crash_right_after_the_session_was_stored_reuses_it(clock: FakeClock) -> None:
    """The process dies the moment the session URI is stored: the next process asks it (308,
    no Range: nothing received) and uploads into it; there is one session and one video."""
    h = await youtube_harness(clock)

    class Crash(Exception):
        pass

    class Dying(_progress.MemoryProgress):
        async def put(self, post_id: str, key: str, value: str) -> None:
            await super().put(post_id, key, value)
            raise Crash

    dying = Dying()
    h.adapter._progress = dying
    try:
        with pytest.raises(Crash):
            await h.adapter.publish(h.post())
        h.progress.values.update(dying.values)
        async with h.second_process() as later:
            published = await later.publish(h.post())
    finally:
        await h.adapter.aclose()
        await h.yt.stop()

    assert h.routes() == ["start", "chunk", "chunk"]
    assert [v["id"] for v in h.yt.videos] == [published.remote_id]
    assert len(h.yt.sessions) == 1 and h.yt.bytes_received == 4096


async def test_an_expired_session_with_nothing_in_doubt_starts_over(yt: Harness) -> None:
    """404 for the session (expired) when no final chunk is in doubt: a new session, one video."""
    h = yt_of(yt)
    post = big_post(h)
    h.yt.fail("chunk", "expired")

    published = await h.adapter.publish(post)

    assert h.routes() == ["start", "chunk", "start", "chunk", "chunk", "chunk"]
    assert [v["id"] for v in h.yt.videos] == [published.remote_id]


async def test_an_expired_session_after_a_lost_final_answer_is_not_uploaded_again(
    yt: Harness,
) -> None:
    """The final chunk's answer was lost and the session cannot tell; later the session is gone:
    the uploads are searched, and a video not found there fails permanently (no new upload)."""
    h = yt_of(yt)
    h.yt.fail("chunk", "hang")  # the final chunk never arrives
    h.yt.fail("chunk", "server_error")  # and the status query fails
    with pytest.raises(base.AmbiguousError):
        await h.adapter.publish(h.post())
    h.yt.sessions.clear()

    with pytest.raises(base.PermanentError) as caught:
        async with h.second_process() as later:
            await later.publish(h.post())

    assert caught.value.code == "SESSION_GONE_AFTER_FINAL"
    assert len(h.yt.calls("start")) == 1 and h.yt.videos == []


async def test_an_expired_session_whose_video_exists_is_found(yt: Harness) -> None:
    """As above, but the final chunk had created the video: it is found among the uploads."""
    h = yt_of(yt)
    h.yt.fail("chunk", "ambiguous_after")
    h.yt.fail("chunk", "server_error")
    with pytest.raises(base.AmbiguousError):
        await h.adapter.publish(h.post())
    h.yt.sessions.clear()

    async with h.second_process() as later:
        published = await later.publish(h.post())

    assert [v["id"] for v in h.yt.videos] == [published.remote_id]
    assert len(h.yt.calls("start")) == 1


# --- quota --------------------------------------------------------------------------------------


async def test_quota_exceeded_waits_for_pacific_midnight_without_asking(yt: Harness) -> None:
    """After quotaExceeded nothing is sent until midnight Pacific time (DST included); then
    publishing works again."""
    h = yt_of(yt)
    h.clock.set(datetime(2026, 7, 1, 12, 0, tzinfo=UTC))  # 05:00 PDT
    h.yt.fail("start", "quota")
    with pytest.raises(base.RetryableError):
        await h.adapter.publish(h.post())
    h.clock.advance(3600)
    mark = h.mark()

    with pytest.raises(base.RetryableError) as caught:
        await h.adapter.publish(h.post())

    assert caught.value.code == "quotaExceeded" and h.routes(mark) == []
    assert caught.value.retry_after == pytest.approx(18 * 3600)  # until 07:00 UTC
    h.clock.set(datetime(2026, 7, 2, 7, 0, tzinfo=UTC))
    await h.adapter.publish(h.post())
    assert len(h.yt.videos) == 1


async def test_limits_report_the_uploads_a_quota_day_held(yt: Harness) -> None:
    """limits() knows nothing until the quota runs out; then it reports the most uploads a
    quota day held."""
    h = yt_of(yt)
    assert h.adapter.limits() == base.PlatformLimits()
    for i in range(3):
        await h.adapter.publish(h.post(f"Video {i}", post_id=f"p{i}"))
    h.yt.fail("start", "quota")

    with pytest.raises(base.RetryableError):
        await h.adapter.publish(h.post("One too many", post_id="p4"))

    assert h.adapter.limits() == base.PlatformLimits(per_24h=3)
    h.clock.set(youtube_client.quota_reset(h.clock.now()))  # a day other calls ate
    await h.adapter.publish(h.post("Next day", post_id="p5"))
    h.yt.fail("start", "quota")
    with pytest.raises(base.RetryableError):
        await h.adapter.publish(h.post("Again too many", post_id="p6"))
    assert h.adapter.limits() == base.PlatformLimits(per_24h=3)  # the most a day held


# --- credentials --------------------------------------------------------------------------------


async def test_401_refreshes_once_then_succeeds(yt: Harness) -> None:
    """A 401 refreshes the token (saved at once) and the same request is sent again."""
    h = yt_of(yt)
    old = dict(h.store.pages[PAGE])
    h.yt.fail("chunk", "expired_token")

    await h.adapter.publish(h.post())

    assert h.routes() == ["start", "chunk", "token", "chunk"]
    (saved,) = h.store.saved
    assert saved[1]["access_token"] != old["access_token"]
    assert h.yt.calls("chunk")[-1].headers["authorization"] == f"Bearer {saved[1]['access_token']}"


async def test_401_after_refresh_is_auth_error(yt: Harness) -> None:
    """Two 401s in a row: AuthError after one refresh."""
    h = yt_of(yt)
    h.yt.fail("start", "expired_token", times=2)

    with pytest.raises(base.AuthError):
        await h.adapter.publish(h.post())

    assert h.routes() == ["start", "token", "start"]


async def test_token_is_refreshed_five_minutes_before_expiry(yt: Harness) -> None:
    """Within 5 minutes of expires_at the token is refreshed first; six minutes out it is not."""
    h = yt_of(yt)
    expires = float(h.store.pages[PAGE]["expires_at"])
    h.clock.advance(expires - h.clock.now().timestamp() - 360)
    await h.adapter.publish(h.post("early", post_id="p1"))
    assert h.routes() == ["start", "chunk"]

    h.clock.advance(61)
    mark = h.mark()
    await h.adapter.publish(h.post("late", post_id="p2"))

    assert h.routes(mark) == ["token", "start", "chunk"]
    assert float(h.store.pages[PAGE]["expires_at"]) > expires


@pytest.mark.parametrize("mode", ["unavailable", "server_error", "hang", "rate_limit"])
async def test_transient_refresh_failure_is_retryable_and_keeps_credentials(
    yt: Harness, mode: str
) -> None:
    """A 5xx/429/timeout of the token endpoint is RetryableError, never AuthError; the next try
    refreshes and publishes."""
    h = yt_of(yt)
    before = dict(h.store.pages[PAGE])
    h.clock.advance(float(before["expires_at"]) - h.clock.now().timestamp() + 1)
    h.yt.fail("token", mode)

    with pytest.raises(base.RetryableError):
        await h.adapter.publish(h.post())
    assert h.store.pages[PAGE] == before and h.yt.videos == []

    await h.adapter.publish(h.post())
    assert h.yt.descriptions() == ["Hello from postd"]


async def test_refused_refresh_token_is_auth_error(yt: Harness) -> None:
    """Google's invalid_grant is AuthError REFRESH_REFUSED; nothing is saved."""
    h = yt_of(yt)
    h.clock.advance(float(h.store.pages[PAGE]["expires_at"]) - h.clock.now().timestamp())
    h.yt.fail("token", "invalid_grant")

    with pytest.raises(base.AuthError) as caught:
        await h.adapter.publish(h.post())

    assert caught.value.code == "REFRESH_REFUSED" and h.store.saved == []


# --- validation ---------------------------------------------------------------------------------


def test_title_is_the_first_line_shortened_or_the_title_option(yt: Harness) -> None:
    """The first non-blank line, cut to 100 characters with an ellipsis; options title wins."""
    h = yt_of(yt)
    assert youtube.title_of(h.post("\n  My video  \nmore")) == "My video"
    long = youtube.title_of(h.post("w" * 150))
    assert len(long) == 100 and long.endswith("…")
    titled = base.PostPayload("p", PAGE, "youtube", "text", options={"title": "Chosen"})
    assert youtube.title_of(titled) == "Chosen"


@pytest.mark.parametrize(
    ("message", "options", "media", "problem"),
    [
        ("fine", {}, "video", None),
        ("é" * 2500, {}, "video", None),  # 5,000 bytes
        ("é" * 2501, {}, "video", "5002 bytes"),
        ("a <tag>", {}, "video", "< or >"),
        ("text", {"title": "t" * 101}, "video", "101 characters"),
        ("text", {"title": "a > b"}, "video", "< or >"),
        ("text", {}, "photo", "exactly one video"),
        ("text", {}, "two", "exactly one video"),
        ("text", {}, "none", "needs a video"),
        (None, {}, "video", "needs a title"),
    ],
)
def test_validate_follows_youtubes_limits(
    yt: Harness, message: str | None, options: dict[str, str], media: str, problem: str | None
) -> None:
    """One video; title ≤ 100 characters, description ≤ 5,000 bytes, no < or >."""
    h = yt_of(yt)
    url = "https://media.example/clip.mp4"
    items = {
        "video": (base.MediaItem(url, "video"),),
        "photo": (base.MediaItem(url, "photo"),),
        "two": (base.MediaItem(url, "video"),) * 2,
        "none": (),
    }[media]
    post = base.PostPayload("p", PAGE, "youtube", message, media=items, options=options)

    problems = h.adapter.validate(post)

    if problem is None:
        assert problems == []
    else:
        assert any(problem in p for p in problems), problems


def test_chunk_size_must_be_a_multiple_of_256k() -> None:
    """Google takes chunks in multiples of 256 KiB only: other sizes are refused at build."""
    with pytest.raises(ValueError, match="multiple"):
        youtube.YouTubeAdapter(
            None,  # type: ignore[arg-type]
            _progress.MemoryProgress(),
            now=FakeClock().now,
            app=youtube.oauth.OAuthApp("id"),
            chunk_bytes=100_000,
        )
