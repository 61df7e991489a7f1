"""LinkedIn against its fake: the documented requests in detail (versioned ``/rest`` headers,
bodies, URL-encoded URNs), images and chunked videos with their progress, every failure mode
mapped to its class (platforms.md §0.1, §3), token refresh before expiry and after a 401, and
LinkedIn's own limits."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import timedelta
from urllib.parse import parse_qs

import pytest

from adapters import base, linkedin, linkedin_auth
from daemon.clock import FakeClock
from tests.contract.conftest import PAGE, PNG, _close
from tests.contract.linkedin_harness import LinkedInHarness, adapter_for, linkedin_harness
from tests.fakes._server import Recorded
from tests.fakes.linkedin import CLIENT_ID, CLIENT_SECRET, FakeLinkedIn

MP4 = b"\x00\x00\x00\x18ftypmp42" + bytes(range(28))  # 40 bytes: three 16-byte parts


def fake(h: LinkedInHarness) -> FakeLinkedIn:
    assert isinstance(h.fake, FakeLinkedIn)
    return h.fake


def author(h: LinkedInHarness) -> str:
    return h.store.pages[PAGE]["author"]


def video_post(h: LinkedInHarness, text: str = "A clip") -> base.PostPayload:
    url = fake(h).serve_file("clip.mp4", MP4, "video/mp4")
    return base.PostPayload("post_v", PAGE, "linkedin", text, media=(base.MediaItem(url, "video"),))


def rest_headers_ok(h: LinkedInHarness, call: Recorded) -> None:
    headers = call.headers
    assert headers["authorization"] == f"Bearer {h.store.pages[PAGE]['access_token']}"
    assert headers["linkedin-version"] == linkedin.VERSION
    assert headers["x-restli-protocol-version"] == "2.0.0"


@pytest.fixture
async def slow_video(clock: FakeClock) -> AsyncIterator[LinkedInHarness]:
    harness = await linkedin_harness(clock, processing_polls=2, part_size=16)
    yield harness
    await _close(harness)
    assert fake(harness).violations == []


# --- the requests -------------------------------------------------------------------------------


def test_version_is_a_pinned_yyyymm() -> None:
    """LinkedIn-Version is one pinned month (YYYYMM), not a moving value."""
    assert re.fullmatch(r"20\d{2}(0[1-9]|1[0-2])", linkedin.VERSION)


async def test_an_unversioned_request_is_refused_as_linkedin_would(clock: FakeClock) -> None:
    """The fake's header check works: a call without a LinkedIn-Version is recorded as a
    violation and refused 400 VERSION_MISSING, which the adapter reports as permanent."""
    h = await linkedin_harness(clock)
    adapter = adapter_for(fake(h), h.store, clock, version="")
    try:
        with pytest.raises(base.PermanentError) as caught:
            await adapter.publish(h.post())
        assert (caught.value.code, caught.value.http_status) == ("VERSION_MISSING", 400)
        assert fake(h).posts == [] and len(fake(h).violations) == 1
    finally:
        await adapter.aclose()
        await _close(h)


async def test_text_post_is_one_versioned_post_with_the_documented_body(
    li: LinkedInHarness,
) -> None:
    """POST /rest/posts with Bearer, LinkedIn-Version and Rest.li 2.0.0; the id comes from
    x-restli-id and the permalink is the feed update URL."""
    published = await li.adapter.publish(li.post("Hello LinkedIn"))

    (call,) = fake(li).calls("posts")
    assert (call.method, call.path) == ("POST", "/rest/posts")
    rest_headers_ok(li, call)
    assert call.json() == {
        "author": author(li),
        "commentary": "Hello LinkedIn",
        "visibility": "PUBLIC",
        "distribution": {
            "feedDistribution": "MAIN_FEED",
            "targetEntities": [],
            "thirdPartyDistributionChannels": [],
        },
        "lifecycleState": "PUBLISHED",
        "isReshareDisabledByAuthor": False,
    }
    assert published.remote_id == fake(li).posts[0]["id"]
    assert published.permalink == f"https://www.linkedin.com/feed/update/{published.remote_id}"


async def test_reserved_characters_are_escaped_so_nothing_is_cut(li: LinkedInHarness) -> None:
    """The little format's reserved characters are backslash-escaped (LinkedIn would cut the
    text at the first unescaped one); a hashtag stays a hashtag."""
    text = "Sale (20% off) [today] *wow* a_b <3 ~x~ {y} @here | c:\\ #deals # alone"

    await li.adapter.publish(li.post(text))

    sent = fake(li).calls("posts")[0].json()["commentary"]
    assert sent.startswith(r"Sale \(20% off\) \[today\] \*wow\* a\_b \<3")
    assert "#deals" in sent and r"\# alone" in sent and r"c:\\" in sent
    assert li.published_texts() == [text]


async def test_image_is_initialized_uploaded_then_named_in_the_post(li: LinkedInHarness) -> None:
    """images?action=initializeUpload with the owner, PUT of the bytes to uploadUrl (Bearer),
    then content.media.id is the image URN; the URN is kept in the progress store."""
    post = li.post("With a cat", li.image_url())

    await li.adapter.publish(post)

    (init,) = fake(li).calls("images")
    rest_headers_ok(li, init)
    assert init.param("action") == "initializeUpload"
    assert init.json() == {"initializeUploadRequest": {"owner": author(li)}}
    (upload,) = fake(li).calls("image_upload")
    assert upload.method == "PUT" and upload.body == PNG
    assert upload.headers["authorization"].startswith("Bearer ")
    (image,) = fake(li).images
    assert fake(li).calls("posts")[0].json()["content"] == {"media": {"id": image}}
    assert image in li.progress.values.values()


async def test_several_images_are_a_multi_image_post(li: LinkedInHarness) -> None:
    """Two to twenty images go out as content.multiImage, in order."""
    url = li.image_url()
    await li.adapter.publish(li.post("Two cats", url, url))

    images = list(fake(li).images)
    assert fake(li).calls("posts")[0].json()["content"] == {
        "multiImage": {"images": [{"id": images[0]}, {"id": images[1]}]}
    }


async def test_video_is_uploaded_in_parts_finalized_and_waited_for(
    slow_video: LinkedInHarness,
) -> None:
    """initializeUpload with the size, each part PUT to its pre-signed URL without LinkedIn
    headers, finalizeUpload with the ETags in order, status polled (through the injected sleep,
    not a try) until AVAILABLE, then the post names the video."""
    h = slow_video

    await h.adapter.publish(video_post(h))

    init, finalize = fake(h).calls("videos")
    assert init.param("action") == "initializeUpload"
    assert init.json() == {
        "initializeUploadRequest": {
            "owner": author(h),
            "fileSizeBytes": len(MP4),
            "uploadCaptions": False,
            "uploadThumbnail": False,
        }
    }
    parts = fake(h).calls("video_part")
    assert [p.body for p in parts] == [MP4[0:16], MP4[16:32], MP4[32:40]]
    assert all(
        "authorization" not in p.headers and "linkedin-version" not in p.headers for p in parts
    )
    (video,) = fake(h).videos
    assert finalize.param("action") == "finalizeUpload"
    assert finalize.json()["finalizeUploadRequest"] == {
        "video": video,
        "uploadToken": fake(h).videos[video]["token"],
        "uploadedPartIds": [f"etag-{fake(h).videos[video]['id']}-{n}" for n in range(3)],
    }
    assert len(fake(h).calls("video_status")) == 3
    assert h.slept is not None and h.slept.waits == [1.0, 1.0]
    assert fake(h).calls("posts")[0].json()["content"] == {"media": {"id": video}}


async def test_a_slow_video_is_kept_for_the_next_try(clock: FakeClock) -> None:
    """A video still PROCESSING after media_poll_max_seconds is RetryableError MEDIA_NOT_READY;
    the next try reuses the stored video (no second upload) and publishes it."""
    h = await linkedin_harness(clock, processing_polls=100, part_size=16)
    try:
        with pytest.raises(base.RetryableError) as caught:
            await h.adapter.publish(video_post(h))
        assert caught.value.code == "MEDIA_NOT_READY" and fake(h).posts == []
        fake(h).processing_polls = 0

        await h.adapter.publish(video_post(h))

        assert len(fake(h).calls("videos")) == 2  # one initializeUpload, one finalizeUpload
        assert len(fake(h).posts) == 1
    finally:
        await _close(h)


async def test_failed_video_processing_is_permanent_and_forgotten(li: LinkedInHarness) -> None:
    """PROCESSING_FAILED fails the post permanently and drops the stored video."""
    fake(li).fail("video_status", "processing_failed")

    with pytest.raises(base.PermanentError) as caught:
        await li.adapter.publish(video_post(li))

    assert caught.value.code == "VIDEO_PROCESSING_FAILED"
    assert li.progress.values == {} and fake(li).posts == []


async def test_an_uploaded_image_is_reused_by_the_next_try(li: LinkedInHarness) -> None:
    """A throttled publish keeps the uploaded image URN; the next try does not upload again."""
    post = li.post("Cat again", li.image_url())
    fake(li).fail("posts", "rate_limit_retry")
    with pytest.raises(base.RetryableError):
        await li.adapter.publish(post)

    await li.adapter.publish(post)

    assert len(fake(li).calls("images")) == 1 and len(fake(li).posts) == 1


async def test_first_comment_is_created_on_the_post_urn(li: LinkedInHarness) -> None:
    """POST /rest/socialActions/{encoded post URN}/comments with actor, object and text."""
    published = await li.adapter.publish(li.post())

    comment = await li.adapter.post_comment(li.post(), published.remote_id, "First!")

    (call,) = fake(li).calls("create_comment")
    rest_headers_ok(li, call)
    assert call.json() == {
        "actor": author(li),
        "object": published.remote_id,
        "message": {"text": "First!"},
    }
    assert (
        fake(li).raw_paths[-1]
        == f"/rest/socialActions/{linkedin_auth.enc(published.remote_id)}/comments"
    )
    assert comment.id == fake(li).comments[0]["commentUrn"]


async def test_comments_are_listed_with_their_replies(li: LinkedInHarness) -> None:
    """list_comments reads the post's comments, then the replies of a comment that has some
    (commentsSummary), naming each author's URN."""
    published = await li.adapter.publish(li.post())
    first = li.someone_comments(published.remote_id, "nice")
    li.clock.advance(10)
    reply = fake(li).add_comment(first, "thanks", fake(li).alice)

    listed = await li.adapter.list_comments(li.post(), published.remote_id)

    assert [(c.id, c.parent_id, c.author_username) for c in listed] == [
        (first, None, fake(li).bob["urn"]),
        (reply, first, fake(li).alice["urn"]),
    ]
    top, nested = fake(li).calls("comments")
    assert (top.param("start"), top.param("count")) == ("0", str(linkedin.LIST_COUNT))
    assert nested.path == f"/rest/socialActions/{first}/comments"
    assert (
        fake(li)
        .raw_paths[-1]
        .startswith(f"/rest/socialActions/{linkedin_auth.enc(first)}/comments?")
    )


async def test_reply_is_a_nested_comment_naming_its_parent(li: LinkedInHarness) -> None:
    """reply_to_comment posts on the comment URN with parentComment and the comment's object."""
    published = await li.adapter.publish(li.post())
    comment = li.someone_comments(published.remote_id, "question?")

    reply = await li.adapter.reply_to_comment(li.post(), comment, "answer")

    (call,) = fake(li).calls("create_comment")
    assert call.path == f"/rest/socialActions/{comment}/comments"
    assert call.json() == {
        "actor": author(li),
        "object": published.remote_id,
        "message": {"text": "answer"},
        "parentComment": comment,
    }
    assert (reply.parent_id, reply.post_remote_id) == (comment, published.remote_id)


async def test_find_published_lists_the_authors_posts_by_finder(li: LinkedInHarness) -> None:
    """GET /rest/posts?q=author&author=<encoded URN>&sortBy=LAST_MODIFIED as a FINDER; matched
    on unescaped commentary and media count, from the attempt start on."""
    since = li.clock.now() - timedelta(minutes=1)
    text = "Find (me) *now*"
    published = await li.adapter.publish(li.post(text))

    found = await li.adapter.find_published(li.post(text), since)

    assert found is not None and found.remote_id == published.remote_id
    (call,) = fake(li).calls("list_posts")
    rest_headers_ok(li, call)
    assert call.headers["x-restli-method"] == "FINDER"
    assert (call.param("q"), call.param("author"), call.param("sortBy")) == (
        "author",
        author(li),
        "LAST_MODIFIED",
    )
    assert f"&author={linkedin_auth.enc(author(li))}&" in fake(li).raw_paths[-1]
    assert await li.adapter.find_published(li.post(text, li.image_url()), since) is None


async def test_find_published_without_read_permission_cannot_tell(li: LinkedInHarness) -> None:
    """Reading member posts needs r_member_social: a 403 there is UnsupportedAction (the
    dispatcher's in-doubt policy decides), not an auth failure."""
    fake(li).fail("list_posts", "forbidden")

    with pytest.raises(base.UnsupportedAction):
        await li.adapter.find_published(li.post(), li.clock.now())


async def test_refresh_uses_the_refresh_token_grant(li: LinkedInHarness) -> None:
    """refresh_credentials posts grant_type=refresh_token with the client credentials in the
    form; the new access token is returned, the member and refresh token kept."""
    creds = dict(li.store.pages[PAGE])

    fresh = await li.adapter.refresh_credentials(creds)

    (call,) = fake(li).calls("token")
    assert (call.method, call.path) == ("POST", "/oauth/v2/accessToken")
    form = {k: v[0] for k, v in parse_qs(call.body.decode()).items()}
    assert form == {
        "grant_type": "refresh_token",
        "refresh_token": creds["refresh_token"],
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }
    assert (
        fresh["access_token"] in fake(li).tokens and fresh["access_token"] != creds["access_token"]
    )
    assert fresh["author"] == creds["author"]


# --- failures -----------------------------------------------------------------------------------

MIDNIGHT = 15 * 3600  # the FakeClock starts at 09:00 UTC

FAILURES = [
    ("posts", "rate_limit", base.RetryableError, "LINKEDIN_101", MIDNIGHT),
    ("posts", "rate_limit_retry", base.RetryableError, "RATE_LIMITED", 120),
    ("posts", "unavailable", base.AmbiguousError, "HTTP_503", None),
    ("posts", "server_error", base.AmbiguousError, "HTTP_500", None),
    ("posts", "hang", base.AmbiguousError, "READ_TIMEOUT", None),
    ("posts", "garbage", base.AmbiguousError, "BAD_RESPONSE", None),
    ("posts", "ambiguous_after", base.AmbiguousError, "HTTP_500", None),
    ("posts", "hang_after", base.AmbiguousError, "READ_TIMEOUT", None),
    ("posts", "duplicate", base.PermanentError, "DUPLICATE_POST", None),
    ("posts", "forbidden", base.AuthError, "ACCESS_DENIED", None),
    ("images", "rate_limit", base.RetryableError, "LINKEDIN_101", MIDNIGHT),
    ("images", "unavailable", base.RetryableError, "UNAVAILABLE", None),
    ("images", "server_error", base.RetryableError, "HTTP_500", None),
    ("images", "hang", base.RetryableError, "READ_TIMEOUT", None),
    ("images", "garbage", base.RetryableError, "BAD_RESPONSE", None),
    ("image_upload", "server_error", base.RetryableError, "HTTP_500", None),
    ("image_upload", "hang", base.RetryableError, "READ_TIMEOUT", None),
]


@pytest.mark.parametrize(("route", "mode", "error", "code", "wait"), FAILURES)
async def test_failure_modes_are_classified(
    li: LinkedInHarness,
    route: str,
    mode: str,
    error: type[base.AdapterError],
    code: str,
    wait: float | None,
) -> None:
    """Each failure maps to exactly its class and code: the publish call's 5xx and timeouts are
    ambiguous, those before it retryable; a 429 waits for Retry-After, else for the daily
    window's reset at midnight UTC; a duplicate fails with LinkedIn's code."""
    fake(li).fail(route, mode)

    with pytest.raises(base.AdapterError) as caught:
        await li.adapter.publish(li.post("Hello", li.image_url()))

    assert type(caught.value) is error
    assert caught.value.code == code
    if wait is not None:
        assert isinstance(caught.value, base.RetryableError)
        assert caught.value.retry_after == pytest.approx(wait, abs=1)


async def test_ambiguous_publish_is_reconciled_without_a_duplicate(li: LinkedInHarness) -> None:
    """After a 500 that created the post, find_published finds it; a blind retry anyway is
    answered DUPLICATE_POST naming that post, which the adapter takes as this post's."""
    since = li.clock.now() - timedelta(minutes=1)
    fake(li).fail("posts", "ambiguous_after")
    with pytest.raises(base.AmbiguousError):
        await li.adapter.publish(li.post("Maybe out"))

    found = await li.adapter.find_published(li.post("Maybe out"), since)
    again = await li.adapter.publish(li.post("Maybe out"))

    assert found is not None and again.remote_id == found.remote_id
    assert li.published_texts() == ["Maybe out"]
    assert [c.route for c in fake(li).requests].count("posts") == 2


async def test_duplicate_of_another_post_fails_with_linkedins_code(li: LinkedInHarness) -> None:
    """A different postd post with the same text is refused 422 DUPLICATE_POST (permanent, not
    taken as published: its own earlier try never sent anything)."""
    await li.adapter.publish(li.post("Same words", post_id="p1"))

    with pytest.raises(base.PermanentError) as caught:
        await li.adapter.publish(li.post("Same words", post_id="p2"))

    assert (caught.value.code, caught.value.http_status) == ("DUPLICATE_POST", 422)
    assert not isinstance(caught.value, base.AuthError)


async def test_401_refreshes_once_then_succeeds(li: LinkedInHarness) -> None:
    """A 401 refreshes the token (saved at once) and the call is made again with it."""
    old = li.store.pages[PAGE]["access_token"]
    fake(li).fail("posts", "expired_token")

    await li.adapter.publish(li.post())

    assert li.routes() == ["posts", "token", "posts"]
    (saved,) = li.store.saved
    assert saved[1]["access_token"] != old
    rest_headers_ok(li, fake(li).calls("posts")[-1])


async def test_image_upload_uses_the_token_refreshed_during_init(li: LinkedInHarness) -> None:
    """A 401 on initializeUpload refreshes the token; the upload PUT carries the new one."""
    fake(li).fail("images", "expired_token")

    await li.adapter.publish(li.post("cat", li.image_url()))

    assert li.routes() == ["images", "token", "images", "image_upload", "posts"]
    fresh = li.store.pages[PAGE]["access_token"]
    assert fake(li).calls("image_upload")[0].headers["authorization"] == f"Bearer {fresh}"


async def test_401_after_refresh_is_auth_error(li: LinkedInHarness) -> None:
    """Two 401s in a row raise AuthError after one refresh."""
    fake(li).fail("posts", "expired_token", times=2)

    with pytest.raises(base.AuthError) as caught:
        await li.adapter.publish(li.post())

    assert caught.value.code == "INVALID_ACCESS_TOKEN"
    assert li.routes() == ["posts", "token", "posts"]


def _advance_to(li: LinkedInHarness, before_expiry: float) -> None:
    expires = float(li.store.pages[PAGE]["expires_at"])
    li.clock.advance(expires - li.clock.now().timestamp() - before_expiry)


async def test_token_is_refreshed_a_day_before_expiry(li: LinkedInHarness) -> None:
    """Within REFRESH_EARLY of expires_at the token is refreshed before the call, and saved."""
    expires = float(li.store.pages[PAGE]["expires_at"])
    _advance_to(li, linkedin.REFRESH_EARLY.total_seconds() - 60)

    await li.adapter.publish(li.post())

    assert li.routes() == ["token", "posts"]
    assert float(li.store.pages[PAGE]["expires_at"]) > expires


async def test_token_is_not_refreshed_earlier(li: LinkedInHarness) -> None:
    """Two days before expiry the stored token is used as is."""
    _advance_to(li, 2 * 86400)

    await li.adapter.publish(li.post())

    assert li.routes() == ["posts"] and li.store.saved == []


@pytest.mark.parametrize("mode", ["unavailable", "server_error", "hang", "rate_limit"])
async def test_early_refresh_outage_keeps_using_the_valid_token(
    li: LinkedInHarness, mode: str
) -> None:
    """A transient token-endpoint failure before expiry does not stop publishing: the still
    valid token is used, nothing is saved, and the endpoint is not asked again at once."""
    _advance_to(li, 3600)
    fake(li).fail("token", mode)

    await li.adapter.publish(li.post())
    await li.adapter.publish(li.post("a minute later", post_id="p2"))

    assert li.routes() == ["token", "posts", "posts"] and li.store.saved == []


@pytest.mark.parametrize("mode", ["unavailable", "server_error", "hang", "rate_limit"])
async def test_refresh_outage_after_expiry_is_retryable(li: LinkedInHarness, mode: str) -> None:
    """Once the token expired, a 5xx/429/timeout of the token endpoint is RetryableError (never
    AuthError): nothing saved or published, and the next try refreshes and publishes."""
    before = dict(li.store.pages[PAGE])
    _advance_to(li, -1)
    fake(li).fail("token", mode)

    with pytest.raises(base.RetryableError):
        await li.adapter.publish(li.post())
    assert li.store.pages[PAGE] == before and fake(li).posts == []

    await li.adapter.publish(li.post())
    assert li.published_texts() == ["Hello from postd"]


async def test_refused_refresh_token_is_auth_error(li: LinkedInHarness) -> None:
    """LinkedIn refusing the refresh token (400 invalid_grant) is AuthError REFRESH_REFUSED."""
    _advance_to(li, 0)
    fake(li).fail("token", "invalid_grant")

    with pytest.raises(base.AuthError) as caught:
        await li.adapter.publish(li.post())

    assert caught.value.code == "REFRESH_REFUSED" and li.store.saved == []


async def test_expired_token_without_refresh_token_needs_a_reconnect(li: LinkedInHarness) -> None:
    """Apps without programmatic refresh tokens: the token is used until it expires, then
    AuthError without any request."""
    li.store.pages[PAGE].pop("refresh_token")
    _advance_to(li, 3600)
    await li.adapter.publish(li.post("still valid"))
    li.clock.advance(3601)

    with pytest.raises(base.AuthError):
        await li.adapter.publish(li.post("expired"))

    assert li.routes() == ["posts"]


# --- validate and limits ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "media", "ok"),
    [
        ("x" * 3000, (), True),
        ("x" * 3001, (), False),
        ("", ("photo",), True),
        ("", (), False),
        ("two videos", ("video", "video"), False),
        ("video and photo", ("video", "photo"), False),
        ("twenty photos", ("photo",) * 20, True),
        ("21 photos", ("photo",) * 21, False),
    ],
)
def test_validate_commentary_and_media_rules(
    li: LinkedInHarness, text: str, media: tuple[str, ...], ok: bool
) -> None:
    """Commentary up to 3,000 characters; up to 20 photos, or one video alone; never empty."""
    items = tuple(base.MediaItem(f"https://m.example/{i}", kind) for i, kind in enumerate(media))
    post = base.PostPayload("p", PAGE, "linkedin", text, media=items)

    assert (li.adapter.validate(post) == []) is ok


def test_limits_stay_within_the_config_defaults(li: LinkedInHarness) -> None:
    """limits() reports a daily figure only, above the config's own LinkedIn limits, so the
    configured ones apply."""
    from daemon import config

    reported = li.adapter.limits()
    per_hour, per_24h = config.DEFAULT_PAGE_LIMITS["linkedin"]
    assert reported.per_hour is None
    assert reported.per_24h is not None and reported.per_24h >= per_24h >= per_hour
