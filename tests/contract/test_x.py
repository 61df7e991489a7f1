"""X against its fake: the documented requests in detail (each also checked against X's OpenAPI
document by the fake), every failure mode mapped to its class (platforms.md §0.1, §5), token
refresh before expiry and after a 401, and X's weighted character count."""

from __future__ import annotations

import asyncio
import base64
from datetime import timedelta

import pytest

from adapters import base, x_text
from tests.contract.conftest import PAGE, Harness, Slept
from tests.contract.x_harness import credentials_for
from tests.fakes import x_openapi
from tests.fakes.tiktok import make_mp4
from tests.fakes.x import FakeX


def fake(h: Harness) -> FakeX:
    assert isinstance(h.fake, FakeX)
    return h.fake


async def test_publish_posts_json_text_with_bearer_token(xh: Harness) -> None:
    """POST /2/tweets: the page's bearer token, JSON {"text"}; the permalink names the user."""
    published = await xh.adapter.publish(xh.post("Hello https://example.com/a?b=1 & <you>"))

    (call,) = fake(xh).calls("tweets")
    assert call.headers["authorization"] == f"Bearer {xh.store.pages[PAGE]['access_token']}"
    assert call.json() == {"text": "Hello https://example.com/a?b=1 & <you>"}
    assert published.permalink == f"https://x.com/alice/status/{published.remote_id}"


async def test_image_is_uploaded_base64_as_tweet_image_then_attached(xh: Harness) -> None:
    """POST /2/media/upload carries the bytes base64 with media_category tweet_image and the
    sniffed type; the post names the returned media id."""
    await xh.adapter.publish(xh.post("cat", xh.image_url()))

    (upload,) = fake(xh).calls("media_upload")
    body = upload.json()
    assert (body["media_category"], body["media_type"]) == ("tweet_image", "image/png")
    assert base64.b64decode(body["media"])[:8] == b"\x89PNG\r\n\x1a\n"
    (tweet,) = fake(xh).calls("tweets")
    assert tweet.json()["media"] == {"media_ids": list(fake(xh).media)}


async def test_comment_is_a_reply_post(xh: Harness) -> None:
    """post_comment sends reply.in_reply_to_tweet_id = the published post."""
    published = await xh.adapter.publish(xh.post())

    await xh.adapter.post_comment(xh.post(), published.remote_id, "First!")

    reply = fake(xh).calls("tweets")[-1].json()
    assert reply == {"text": "First!", "reply": {"in_reply_to_tweet_id": published.remote_id}}


async def test_comments_are_searched_by_conversation_id(xh: Harness) -> None:
    """list_comments searches recent posts with conversation_id:<post> and names authors."""
    published = await xh.adapter.publish(xh.post())
    xh.someone_comments(published.remote_id, "hi & bye")

    (comment,) = await xh.adapter.list_comments(xh.post(), published.remote_id)

    (search,) = fake(xh).calls("search")
    assert search.param("query") == f"conversation_id:{published.remote_id}"
    assert (comment.message, comment.author_username) == ("hi & bye", "bob")


async def test_find_published_matches_through_tco_rewriting(xh: Harness) -> None:
    """A post with a link and an image is found although X rewrote both to t.co links."""
    since = xh.clock.now() - timedelta(minutes=1)
    post = xh.post("Read https://example.com/long/path now", xh.image_url())
    published = await xh.adapter.publish(post)

    found = await xh.adapter.find_published(post, since)

    assert found is not None and found.remote_id == published.remote_id
    other = xh.post("Read https://example.com/long/path later", xh.image_url())
    assert await xh.adapter.find_published(other, since) is None
    no_image = xh.post("Read https://example.com/long/path now")
    assert await xh.adapter.find_published(no_image, since) is None
    listing = fake(xh).calls("user_tweets")[0]
    assert listing.param("exclude") == "replies,retweets"


FAILURES = [
    ("tweets", "rate_limit", base.RetryableError, "rate-limit-exceeded"),
    ("tweets", "unavailable", base.AmbiguousError, "HTTP_503"),
    ("tweets", "server_error", base.AmbiguousError, "HTTP_500"),
    ("tweets", "hang", base.AmbiguousError, "READ_TIMEOUT"),
    ("tweets", "garbage", base.AmbiguousError, "BAD_RESPONSE"),
    ("tweets", "ambiguous_after", base.AmbiguousError, "HTTP_503"),
    ("tweets", "hang_after", base.AmbiguousError, "READ_TIMEOUT"),
    ("tweets", "duplicate", base.PermanentError, "DUPLICATE_CONTENT"),
    ("media_upload", "unavailable", base.RetryableError, "UNAVAILABLE"),
    ("media_upload", "server_error", base.RetryableError, "HTTP_500"),
    ("media_upload", "hang", base.RetryableError, "READ_TIMEOUT"),
    ("media_upload", "rate_limit", base.RetryableError, "rate-limit-exceeded"),
]


@pytest.mark.parametrize(("route", "mode", "error", "code"), FAILURES)
async def test_failure_modes_are_classified(
    xh: Harness, route: str, mode: str, error: type[base.AdapterError], code: str
) -> None:
    """Each failure of the fake maps to exactly its class and code; the publish call's 5xx and
    timeouts are ambiguous, those before it retryable."""
    fake(xh).fail(route, mode)

    with pytest.raises(base.AdapterError) as caught:
        await xh.adapter.publish(xh.post("Hello", xh.image_url()))

    assert type(caught.value) is error
    assert caught.value.code == code
    if mode == "rate_limit":
        assert isinstance(caught.value, base.RetryableError)
        assert caught.value.retry_after == pytest.approx(120, abs=1)


async def test_ambiguous_publish_is_found_by_reconciliation(xh: Harness) -> None:
    """After a 503 that created the post, find_published finds it (no blind retry needed)."""
    since = xh.clock.now() - timedelta(minutes=1)
    fake(xh).fail("tweets", "ambiguous_after")
    with pytest.raises(base.AmbiguousError):
        await xh.adapter.publish(xh.post("Maybe out"))

    found = await xh.adapter.find_published(xh.post("Maybe out"), since)

    assert found is not None and fake(xh).root_texts() == ["Maybe out"]


async def test_duplicate_is_permanent_with_status_403(xh: Harness) -> None:
    """X's 403 "duplicate content" is permanent, not an auth failure."""
    fake(xh).fail("tweets", "duplicate")

    with pytest.raises(base.PermanentError) as caught:
        await xh.adapter.publish(xh.post())

    assert not isinstance(caught.value, base.AuthError)
    assert caught.value.http_status == 403


async def test_401_refreshes_once_then_succeeds(xh: Harness) -> None:
    """A 401 refreshes the token (saved at once) and the call is made again with it."""
    old = dict(xh.store.pages[PAGE])
    fake(xh).fail("tweets", "expired_token")

    await xh.adapter.publish(xh.post())

    assert xh.routes() == ["tweets", "token", "tweets"]
    (saved,) = xh.store.saved
    assert saved[1]["access_token"] != old["access_token"]
    assert fake(xh).calls("tweets")[-1].headers["authorization"] == (
        f"Bearer {saved[1]['access_token']}"
    )


async def test_401_after_refresh_is_auth_error(xh: Harness) -> None:
    """Two 401s in a row (refresh did not help) raise AuthError; one refresh only."""
    fake(xh).fail("tweets", "expired_token", times=2)

    with pytest.raises(base.AuthError):
        await xh.adapter.publish(xh.post())

    assert xh.routes() == ["tweets", "token", "tweets"]


async def test_token_is_refreshed_five_minutes_before_expiry(xh: Harness) -> None:
    """Within 5 minutes of expires_at the adapter refreshes before calling, and saves."""
    expires = float(xh.store.pages[PAGE]["expires_at"])
    xh.clock.advance(expires - xh.clock.now().timestamp() - 299)

    await xh.adapter.publish(xh.post())

    assert xh.routes() == ["token", "tweets"]
    assert float(xh.store.pages[PAGE]["expires_at"]) > expires


async def test_token_is_not_refreshed_earlier(xh: Harness) -> None:
    """Six minutes before expiry the stored token is used as is."""
    expires = float(xh.store.pages[PAGE]["expires_at"])
    xh.clock.advance(expires - xh.clock.now().timestamp() - 360)

    await xh.adapter.publish(xh.post())

    assert xh.routes() == ["tweets"] and xh.store.saved == []


@pytest.mark.parametrize("mode", ["unavailable", "server_error", "hang", "rate_limit"])
async def test_transient_refresh_failure_is_retryable_and_keeps_credentials(
    xh: Harness, mode: str
) -> None:
    """A 5xx/429/timeout of the token endpoint is RetryableError (never AuthError): nothing is
    saved, nothing published, and the next try refreshes and publishes."""
    before = dict(xh.store.pages[PAGE])
    xh.clock.advance(float(before["expires_at"]) - xh.clock.now().timestamp() + 1)
    fake(xh).fail("token", mode)

    with pytest.raises(base.RetryableError):
        await xh.adapter.publish(xh.post())
    assert xh.store.pages[PAGE] == before and fake(xh).root_texts() == []

    await xh.adapter.publish(xh.post())
    assert fake(xh).root_texts() == ["Hello from postd"]
    assert xh.store.pages[PAGE]["refresh_token"] != before["refresh_token"]


async def test_refused_refresh_token_is_auth_error(xh: Harness) -> None:
    """X refusing the refresh token (400 invalid_request) is AuthError: the page needs a
    re-connect."""
    xh.clock.advance(float(xh.store.pages[PAGE]["expires_at"]) - xh.clock.now().timestamp())
    fake(xh).fail("token", "invalid_grant")

    with pytest.raises(base.AuthError) as caught:
        await xh.adapter.publish(xh.post())

    assert caught.value.code == "REFRESH_REFUSED" and xh.store.saved == []


async def test_concurrent_calls_spend_one_refresh_token(xh: Harness) -> None:
    """Two publishes needing a refresh at once refresh once (X rotates refresh tokens: a
    second refresh with the old one would be refused)."""
    xh.clock.advance(float(xh.store.pages[PAGE]["expires_at"]) - xh.clock.now().timestamp())

    await asyncio.gather(
        xh.adapter.publish(xh.post("one", post_id="p1")),
        xh.adapter.publish(xh.post("two", post_id="p2")),
    )

    assert len(fake(xh).calls("token")) == 1
    assert sorted(fake(xh).root_texts()) == ["one", "two"]


async def test_limits_come_from_the_rate_headers(xh: Harness) -> None:
    """limits() reports the publish endpoint's 15-minute limit per hour once it was seen."""
    assert xh.adapter.limits() == base.PlatformLimits()

    await xh.adapter.publish(xh.post())

    assert xh.adapter.limits().per_hour == 400


async def test_a_request_violating_the_openapi_document_is_caught(xh: Harness) -> None:
    """The fake's OpenAPI check works: a body breaking TweetCreateRequest (empty media_ids, an
    unknown field) is recorded as a violation and refused 400, which the adapter reports as
    permanent."""
    bad = {"text": "hi", "media": {"media_ids": []}, "colour": "red"}

    with pytest.raises(base.PermanentError) as caught:
        await xh.adapter._data(PAGE, "POST", "/2/tweets", final=True, what="bad", json=bad)

    assert caught.value.http_status == 400
    problems = fake(xh).violations
    assert any("less than 1 item" in p for p in problems), problems
    assert any("'colour' was unexpected" in p for p in problems), problems
    assert fake(xh).root_texts() == []
    fake(xh).violations.clear()  # proven; the fixture checks nothing else slipped through


async def test_undeclared_query_parameter_is_caught(xh: Harness) -> None:
    """A query parameter the operation does not declare (or out of range) is a violation."""
    user = xh.store.pages[PAGE]["user_id"]

    with pytest.raises(base.PermanentError):
        await xh.adapter._data(
            PAGE,
            "GET",
            f"/2/users/{user}/tweets",
            final=False,
            what="bad",
            params={"max_results": 500, "tweet_fields": "created_at"},
        )

    assert len(fake(xh).violations) == 2
    fake(xh).violations.clear()


async def test_path_parameter_breaking_its_pattern_is_caught(xh: Harness) -> None:
    """A tweet id that is not 1-19 digits violates the TweetId schema of the path."""
    with pytest.raises(base.PermanentError):
        await xh.adapter._data(PAGE, "GET", "/2/tweets/not-an-id", final=False, what="bad")

    assert fake(xh).violations == ['path id: "not-an-id" does not match "^[0-9]{1,19}$"']
    fake(xh).violations.clear()


@pytest.mark.parametrize(
    ("text", "weight"),
    [
        ("a" * 280, 280),
        ("é" * 10, 10),  # Latin-1 range weighs 1
        ("e\u0301" * 10, 10),  # NFC-normalized to é first
        ("日本語", 6),  # CJK weighs 2
        ("“quoted” — dash", 15),  # general punctuation ranges weigh 1
        ("see https://example.com/" + "x" * 100, 4 + 23),  # any URL weighs 23
        ("👨‍👩‍👧 family", 2 + 7),  # one emoji sequence weighs 2
        ("🇫🇷", 2),
    ],
)
def test_weighted_length_follows_twitter_text(text: str, weight: int) -> None:
    """X's weighted count: URLs 23, CJK and emoji 2, Latin and punctuation 1."""
    assert x_text.weighted_length(text) == weight


def test_validate_refuses_over_280_weighted(xh: Harness) -> None:
    """281 Latin characters or 141 CJK characters are refused; 140 CJK are accepted."""
    assert xh.adapter.validate(xh.post("日" * 140)) == []
    assert xh.adapter.validate(xh.post("日" * 141)) != []
    assert xh.adapter.validate(xh.post("a" * 281)) != []
    assert xh.adapter.validate(xh.post("a" * 200 + " https://example.com/" + "p" * 300)) == []


# --- video (chunked upload, platforms.md §5 (c)) -------------------------------------------------

CLIP = make_mp4(12, 10_000)  # what Harness.video_post serves


def slept(h: Harness) -> Slept:
    sleep = h.adapter._video._sleep
    assert isinstance(sleep, Slept)
    return sleep


async def test_video_is_uploaded_in_chunks_then_posted(xh: Harness) -> None:
    """initialize (JSON: type, size, tweet_video), one multipart append per 4 KiB chunk with
    its segment_index, finalize without a body, STATUS by query until succeeded, then one post
    naming the media id; X reassembles exactly the fetched bytes."""
    published = await xh.adapter.publish(xh.video_post("A clip"))

    (init,) = fake(xh).calls("media_init")
    assert (init.method, init.path) == ("POST", "/2/media/upload/initialize")
    assert init.json() == {
        "media_type": "video/mp4",
        "total_bytes": len(CLIP),
        "media_category": "tweet_video",
    }
    media_id = next(iter(fake(xh).videos))
    appends = fake(xh).calls("media_append")
    assert [a.path for a in appends] == [f"/2/media/upload/{media_id}/append"] * 3
    fields = [x_openapi.multipart_fields(a.headers["content-type"], a.body) for a in appends]
    assert [f and f["segment_index"] for f in fields] == [b"0", b"1", b"2"]
    assert [f and f["media"] for f in fields] == [CLIP[:4096], CLIP[4096:8192], CLIP[8192:]]
    assert all(a.headers["content-type"].startswith("multipart/form-data") for a in appends)
    (final,) = fake(xh).calls("media_finalize")
    assert (final.method, final.path, final.body) == (
        "POST",
        f"/2/media/upload/{media_id}/finalize",
        b"",
    )
    polls = fake(xh).calls("media_status")
    assert [(p.method, p.path, p.query) for p in polls] == [
        ("GET", "/2/media/upload", {"command": ["STATUS"], "media_id": [media_id]})
    ] * 2
    (tweet,) = fake(xh).calls("tweets")
    assert tweet.json() == {"text": "A clip", "media": {"media_ids": [media_id]}}
    assert fake(xh).media[media_id]["bytes"] == CLIP
    assert published.permalink == f"https://x.com/alice/status/{published.remote_id}"


async def test_status_polls_wait_check_after_secs_through_the_injected_sleep(
    xh: Harness,
) -> None:
    """Each wait is X's check_after_secs (finalize says 1, STATUS says 2), through the injected
    sleep, and polling stops at succeeded."""
    fake(xh).video_polls = 4
    start = xh.clock.now()

    await xh.adapter.publish(xh.video_post())

    assert slept(xh).waits == [1, 2, 2, 2]
    assert len(fake(xh).calls("media_status")) == 4
    assert xh.clock.now() - start == timedelta(seconds=7)


async def test_processing_failed_is_permanent_with_xs_error_name(xh: Harness) -> None:
    """processing_info.state failed is a PermanentError named after X's error; nothing is
    posted, and the failed media id is forgotten (a new try uploads again)."""
    fake(xh).fail("media_status", "processing_failed")

    with pytest.raises(base.PermanentError) as caught:
        await xh.adapter.publish(xh.video_post())

    assert type(caught.value) is base.PermanentError
    assert caught.value.code == "InvalidMedia"
    assert "Unsupported video encoding" in str(caught.value)
    assert fake(xh).calls("tweets") == []
    mark = xh.mark()
    await xh.adapter.publish(xh.video_post())
    assert xh.routes(mark)[0] == "media_init"
    assert len(fake(xh).videos) == 2


VIDEO_FAILURES = [
    (route, mode, code)
    for route in ("media_init", "media_append", "media_finalize", "media_status")
    for mode, code in (
        ("server_error", "HTTP_500"),
        ("unavailable", "UNAVAILABLE"),
        ("hang", "READ_TIMEOUT"),
        ("rate_limit", "rate-limit-exceeded"),
    )
]


@pytest.mark.parametrize(("route", "mode", "code"), VIDEO_FAILURES)
async def test_video_upload_failures_are_retryable_never_ambiguous(
    xh: Harness, route: str, mode: str, code: str
) -> None:
    """5xx, timeouts and 429 of initialize/append/finalize/STATUS are RetryableError (no post
    exists yet; a 429 defers until x-rate-limit-reset); nothing is posted."""
    fake(xh).fail(route, mode)

    with pytest.raises(base.AdapterError) as caught:
        await xh.adapter.publish(xh.video_post())

    assert type(caught.value) is base.RetryableError
    assert caught.value.code == code
    if mode == "rate_limit":
        assert caught.value.retry_after == pytest.approx(120, abs=1)
    assert fake(xh).calls("tweets") == []


async def test_append_5xx_is_retried_without_duplicating_the_post(xh: Harness) -> None:
    """A 500 on the second append fails the try before any post; the next try uploads afresh
    and posts once."""
    fake(xh).fail("media_append", "ok")  # the first append passes (the fake knows no "ok")
    fake(xh).fail("media_append", "server_error")

    with pytest.raises(base.RetryableError):
        await xh.adapter.publish(xh.video_post())
    assert xh.routes() == ["media_init", "media_append", "media_append"]

    await xh.adapter.publish(xh.video_post())

    assert fake(xh).root_texts() == ["A clip"]
    assert len(fake(xh).calls("tweets")) == 1
    (tweet,) = fake(xh).calls("tweets")
    assert tweet.json()["media"]["media_ids"] == [list(fake(xh).videos)[-1]]


async def test_a_retry_reuses_the_uploaded_video(xh: Harness) -> None:
    """The post call is rate limited after the upload: the next try only posts, naming the
    media id uploaded before (remembered per post and media)."""
    fake(xh).fail("tweets", "rate_limit")
    with pytest.raises(base.RetryableError):
        await xh.adapter.publish(xh.video_post())
    mark = xh.mark()

    await xh.adapter.publish(xh.video_post())

    assert xh.routes(mark) == ["tweets"]
    (media_id,) = fake(xh).videos
    assert fake(xh).calls("tweets")[-1].json()["media"] == {"media_ids": [media_id]}


async def test_an_expired_upload_is_not_reused(xh: Harness) -> None:
    """Past X's expires_after_secs (a day in the fake) the remembered media id is dropped and
    the video uploaded again."""
    fake(xh).fail("tweets", "rate_limit")
    with pytest.raises(base.RetryableError):
        await xh.adapter.publish(xh.video_post())
    xh.clock.advance(86_401)
    xh.store.pages[PAGE] = credentials_for(fake(xh), fake(xh).alice)

    await xh.adapter.publish(xh.video_post())

    assert len(fake(xh).videos) == 2
    assert fake(xh).calls("tweets")[-1].json()["media"] == {
        "media_ids": [list(fake(xh).videos)[-1]]
    }


async def test_processing_past_the_poll_budget_is_retryable_and_polled_next_time(
    xh: Harness,
) -> None:
    """Still processing after media_poll_max_seconds (30 s here): RetryableError MEDIA_NOT_READY
    with the media id kept; the next try polls it (no new upload) and posts."""
    fake(xh).video_polls = 1000

    with pytest.raises(base.RetryableError) as caught:
        await xh.adapter.publish(xh.video_post())

    assert caught.value.code == "MEDIA_NOT_READY"
    assert sum(slept(xh).waits) >= 30 and fake(xh).calls("tweets") == []
    fake(xh).video_polls = 0
    mark = xh.mark()
    await xh.adapter.publish(xh.video_post())
    assert xh.routes(mark) == ["media_status", "tweets"]
    assert len(fake(xh).videos) == 1


async def test_a_video_too_long_is_refused_before_any_upload(xh: Harness) -> None:
    """A 200 s MP4 (X takes 0.5-140 s) is a PermanentError once fetched, nothing sent to X."""
    url = fake(xh).serve_file("long.mp4", make_mp4(200, 10_000), "video/mp4")
    post = base.PostPayload("p", PAGE, "twitter", "long", (base.MediaItem(url, "video"),))

    with pytest.raises(base.PermanentError) as caught:
        await xh.adapter.publish(post)

    assert caught.value.code == "VIDEO_DURATION"
    assert xh.routes() == []


def test_validate_takes_one_video_alone(xh: Harness) -> None:
    """One MP4 or QuickTime video alone is valid; with an image, a second video or in another
    format it is refused."""
    mp4 = base.MediaItem("https://m.example/a.mp4", "video", "video/mp4")
    mov = base.MediaItem("https://m.example/a.mov", "video", "video/quicktime")
    webm = base.MediaItem("https://m.example/a.webm", "video", "video/webm")
    png = base.MediaItem("https://m.example/a.png", "photo", "image/png")

    def problems(*media: base.MediaItem) -> list[str]:
        return xh.adapter.validate(base.PostPayload("p", PAGE, "twitter", "clip", media))

    assert problems(mp4) == [] and problems(mov) == []
    assert any("alone" in p for p in problems(mp4, png))
    assert any("alone" in p for p in problems(mp4, mov))
    assert any("MP4" in p for p in problems(webm))
    assert xh.routes() == []


async def test_a_bad_segment_index_is_caught_by_the_openapi_check(xh: Harness) -> None:
    """The fake checks multipart bodies too: segment_index 1000 breaks MediaSegments (0-999)."""
    answer = await xh.adapter._data(
        PAGE,
        "POST",
        "/2/media/upload/initialize",
        final=False,
        what="init",
        json={"media_type": "video/mp4", "total_bytes": 3, "media_category": "tweet_video"},
    )
    media_id = answer["data"]["id"]

    with pytest.raises(base.PermanentError) as caught:
        await xh.adapter._call(
            PAGE,
            "POST",
            f"/2/media/upload/{media_id}/append",
            final=False,
            what="append",
            data={"segment_index": "1000"},
            files={"media": ("chunk", b"abc", "video/mp4")},
        )

    assert caught.value.http_status == 400
    assert fake(xh).violations and all("segment_index" in v for v in fake(xh).violations)
    fake(xh).violations.clear()
