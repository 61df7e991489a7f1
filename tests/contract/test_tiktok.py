"""TikTok against its fake: the documented requests in detail (creator_info, Direct Post init,
chunked upload, status, video list, token), the publish_id kept before any upload and never
inited twice, every failure mode mapped to its class (platforms.md §0.1, §4), token refresh
before expiry and after a 401, and validation."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs

import pytest

from adapters import _progress, base, tiktok
from daemon.clock import FakeClock
from tests.contract.conftest import PAGE, Slept
from tests.contract.tiktok_harness import TikTokHarness, adapter_for, tiktok_harness
from tests.fakes import tiktok as fake_tiktok

VIDEO = fake_tiktok.make_mp4(12, 10_000)


def fake(h: TikTokHarness) -> fake_tiktok.FakeTikTok:
    return h.tiktok


def second_process(tt: TikTokHarness) -> tiktok.TikTokAdapter:
    """Another adapter on the same stores, as after a daemon restart (nothing cached)."""
    return adapter_for(fake(tt), tt.store, tt.progress, tt.clock, Slept(tt.clock))


class OrderedProgress(_progress.MemoryProgress):
    """Progress that notes how many requests the fake had seen at each write."""

    def __init__(self, fake: fake_tiktok.FakeTikTok) -> None:
        super().__init__()
        self.fake, self.seen_at_put = fake, list[tuple[str, int]]()

    async def put(self, post_id: str, key: str, value: str) -> None:
        self.seen_at_put.append((key.rsplit(":", 1)[-1], len(self.fake.requests)))
        await super().put(post_id, key, value)


# --- the documented requests ------------------------------------------------------------------


async def test_video_post_requests_are_exactly_as_documented(tt: TikTokHarness) -> None:
    """creator_info (POST, no body), video/init (FILE_UPLOAD, chunk plan, post_info), two PUTs
    with Content-Range to the upload_url (no bearer), status/fetch with the publish_id."""
    token = tt.store.pages[PAGE]["access_token"]
    url = fake(tt).serve_file("clip.mp4", VIDEO, "video/mp4")

    published = await tt.adapter.publish(tt.post("Hello #fyp @bob", url, disable_comment=True))

    assert tt.routes() == ["creator_info", "video_init", "upload", "upload", "status"]
    (info,) = fake(tt).calls("creator_info")
    assert (info.method, info.path, info.body) == (
        "POST",
        "/v2/post/publish/creator_info/query/",
        b"",
    )
    for call in fake(tt).calls("creator_info") + fake(tt).calls("video_init"):
        assert call.headers["authorization"] == f"Bearer {token}"
        assert call.headers["content-type"] == "application/json; charset=UTF-8"
    (init,) = fake(tt).calls("video_init")
    assert (init.method, init.path) == ("POST", "/v2/post/publish/video/init/")
    assert init.json() == {
        "post_info": {
            "title": "Hello #fyp @bob",
            "privacy_level": "PUBLIC_TO_EVERYONE",
            "disable_comment": True,
            "disable_duet": False,
            "disable_stitch": True,  # the creator turned stitches off in the app
        },
        "source_info": {
            "source": "FILE_UPLOAD",
            "video_size": 10_000,
            "chunk_size": 4096,
            "total_chunk_count": 2,
        },
    }
    (publish_id,) = fake(tt).publishes
    uploads = fake(tt).calls("upload")
    assert [u.method for u in uploads] == ["PUT", "PUT"]
    assert [u.path for u in uploads] == [f"/upload/{publish_id}"] * 2
    assert [u.headers["content-range"] for u in uploads] == [
        "bytes 0-4095/10000",
        "bytes 4096-9999/10000",
    ]
    assert [u.headers["content-length"] for u in uploads] == ["4096", "5904"]
    assert all(u.headers["content-type"] == "video/mp4" for u in uploads)
    assert all("authorization" not in u.headers for u in uploads)
    assert b"".join(u.body for u in uploads) == VIDEO
    (status,) = fake(tt).calls("status")
    assert (status.path, status.json()) == (
        "/v2/post/publish/status/fetch/",
        {"publish_id": publish_id},
    )
    (post,) = fake(tt).posts
    assert published.remote_id == post["id"]
    assert published.permalink == f"https://www.tiktok.com/@alice_tt/video/{post['id']}"


async def test_photo_post_is_pulled_from_its_urls(tt: TikTokHarness) -> None:
    """content/init: PHOTO, DIRECT_POST, the caption as description, PULL_FROM_URL images."""
    photo = tt.image_url()

    await tt.adapter.publish(tt.post("Two cats", photo, photo, privacy="private"))

    (init,) = fake(tt).calls("content_init")
    assert (init.method, init.path) == ("POST", "/v2/post/publish/content/init/")
    assert init.json() == {
        "media_type": "PHOTO",
        "post_mode": "DIRECT_POST",
        "post_info": {
            "description": "Two cats",
            "privacy_level": "SELF_ONLY",
            "disable_comment": False,
            "auto_add_music": True,
        },
        "source_info": {
            "source": "PULL_FROM_URL",
            "photo_images": [photo, photo],
            "photo_cover_index": 0,
        },
    }
    assert fake(tt).calls("upload") == [] and fake(tt).posted_titles() == ["Two cats"]


async def test_private_post_has_the_publish_id_as_remote_id(tt: TikTokHarness) -> None:
    """SELF_ONLY posts never get a public post id: the remote id is the publish_id, no link."""
    published = await tt.adapter.publish(tt.post("Just me", privacy="SELF_ONLY"))

    (publish_id,) = fake(tt).publishes
    assert (published.remote_id, published.permalink) == (publish_id, None)


async def test_find_published_lists_public_videos_by_caption(tt: TikTokHarness) -> None:
    """Without a stored publish (another process): POST /v2/video/list/ with the fields and
    max_count 20, matched on the caption from ``since`` on; private posts are not listed."""
    since = tt.clock.now() - timedelta(minutes=1)
    published = await tt.adapter.publish(tt.post("Find me"))
    await tt.adapter.publish(tt.post("Hidden", post_id="post_2", privacy="SELF_ONLY"))
    other = adapter_for(fake(tt), tt.store, _progress.MemoryProgress(), tt.clock, Slept(tt.clock))
    mark = tt.mark()
    try:
        found = await other.find_published(tt.post("Find me"), since)
        hidden = await other.find_published(tt.post("Hidden", post_id="post_2"), since)
        excluded = await other.find_published(tt.post("Find me"), since, {published.remote_id})
    finally:
        await other.aclose()

    assert found is not None and found.remote_id == published.remote_id
    assert found.permalink == f"https://www.tiktok.com/@alice_tt/video/{published.remote_id}"
    assert hidden is None and excluded is None
    assert tt.routes(mark) == ["video_list"] * 3
    listing = fake(tt).calls("video_list")[0]
    assert listing.param("fields") == tiktok.LIST_FIELDS
    assert listing.json() == {"max_count": 20}


async def test_find_published_asks_the_stored_publish_first(tt: TikTokHarness) -> None:
    """With a stored publish: its status; anything but PUBLISH_COMPLETE answers "not out"
    (the next try resumes that publish)."""
    fake(tt).fail("status", "not_ready", times=6)
    with pytest.raises(base.RetryableError):
        await tt.adapter.publish(tt.post("Slow one"))
    since = tt.clock.now() - timedelta(hours=1)
    fake(tt).fail("status", "not_ready")

    assert await tt.adapter.find_published(tt.post("Slow one"), since) is None
    found = await tt.adapter.find_published(tt.post("Slow one"), since)

    assert found is not None and found.remote_id == fake(tt).posts[0]["id"]
    assert "video_list" not in tt.routes()


# --- progress: publish_id before upload, never a second init -----------------------------------


async def test_publish_id_is_stored_before_the_first_chunk(clock: FakeClock) -> None:
    """The publish_id is written the moment init answers, before any upload request; the
    upload mark after the last chunk."""
    tt = await tiktok_harness(clock)
    progress = OrderedProgress(fake(tt))
    tt.adapter._progress = progress
    try:
        await tt.adapter.publish(tt.post("Ordered"))
    finally:
        await tt.adapter.aclose()
        await fake(tt).stop()
    routes = [r.route for r in fake(tt).requests]
    init_at = routes.index("video_init") + 1
    assert progress.seen_at_put[0][1] == init_at and routes[init_at] == "upload"
    assert progress.seen_at_put[1] == ("up", len(routes) - 1)  # before the status fetch


async def test_crash_after_upload_resumes_by_polling_never_init(tt: TikTokHarness) -> None:
    """A try that ran out of polls leaves the publish_id; the next process only polls it."""
    fake(tt).fail("status", "not_ready", times=6)
    with pytest.raises(base.RetryableError) as caught:
        await tt.adapter.publish(tt.post("Resume me"))
    assert caught.value.code == "MEDIA_NOT_READY"
    mark = tt.mark()

    later = second_process(tt)
    published = await later.publish(tt.post("Resume me"))
    await later.aclose()

    assert tt.routes(mark) == ["status"]
    assert len(fake(tt).calls("video_init")) == 1 and len(fake(tt).posts) == 1
    assert published.remote_id == fake(tt).posts[0]["id"]


async def test_crash_mid_upload_resumes_the_same_upload(tt: TikTokHarness) -> None:
    """The second chunk fails (5xx: retryable, publish kept); the next process asks the status,
    sends only the missing chunk to the same upload_url, and publishes once."""
    fake(tt).fail("upload", "pass")  # the first chunk goes through
    fake(tt).fail("upload", "server_error")
    with pytest.raises(base.RetryableError):
        await tt.adapter.publish(tt.post("Cut short"))
    assert len(tt.progress.values) == 1  # the publish, without the upload mark
    mark = tt.mark()

    later = second_process(tt)
    published = await later.publish(tt.post("Cut short"))
    await later.aclose()

    assert tt.routes(mark) == ["status", "upload", "status"]
    assert fake(tt).calls("upload")[-1].headers["content-range"] == "bytes 4096-9999/10000"
    assert len(fake(tt).calls("video_init")) == 1 and len(fake(tt).posts) == 1
    assert published.remote_id == fake(tt).posts[0]["id"]


async def test_polls_wait_through_sleep_and_are_not_tries(clock: FakeClock) -> None:
    """PROCESSING twice: two injected sleeps, three status fetches, one call to publish."""
    tt = await tiktok_harness(clock, processing_polls=2)
    try:
        await tt.adapter.publish(tt.post("Processing"))
        assert tt.routes()[-3:] == ["status"] * 3
        assert tt.slept is not None and tt.slept.waits == [1.0, 1.0]
    finally:
        await tt.adapter.aclose()
        await fake(tt).stop()


async def test_ambiguous_init_is_reconciled_absent_then_published_once(tt: TikTokHarness) -> None:
    """A 5xx after TikTok created the publish: ambiguous, nothing stored; reconciliation finds
    nothing (a FILE_UPLOAD publish never goes out without its bytes); the repeat publishes
    exactly one post."""
    since = tt.clock.now() - timedelta(minutes=1)
    fake(tt).fail("video_init", "ambiguous_after")
    with pytest.raises(base.AmbiguousError):
        await tt.adapter.publish(tt.post("Maybe"))
    assert tt.progress.values == {}

    assert await tt.adapter.find_published(tt.post("Maybe"), since) is None
    await tt.adapter.publish(tt.post("Maybe"))

    assert len(fake(tt).publishes) == 2 and fake(tt).posted_titles() == ["Maybe"]


# --- failure modes ------------------------------------------------------------------------------

FAILURES: list[tuple[str, str, type[base.AdapterError], str, float | None]] = [
    ("creator_info", "rate_limit", base.RetryableError, "rate_limit_exceeded", 60),
    ("creator_info", "server_error", base.RetryableError, "internal_error", None),
    ("video_init", "rate_limit", base.RetryableError, "rate_limit_exceeded", 60),
    ("video_init", "rate_limit_200", base.RetryableError, "rate_limit_exceeded", 60),
    ("video_init", "spam_risk", base.RetryableError, "spam_risk_too_many_posts", 3600),
    ("video_init", "unaudited", base.PermanentError,
     "unaudited_client_can_only_post_to_private_accounts", None),
    ("video_init", "server_error", base.AmbiguousError, "internal_error", None),
    ("video_init", "unavailable", base.AmbiguousError, "internal_error", None),
    ("video_init", "hang", base.AmbiguousError, "READ_TIMEOUT", None),
    ("video_init", "garbage", base.AmbiguousError, "BAD_RESPONSE", None),
    ("video_init", "ambiguous_after", base.AmbiguousError, "internal_error", None),
    ("video_init", "hang_after", base.AmbiguousError, "READ_TIMEOUT", None),
    ("upload", "server_error", base.RetryableError, "internal_error", None),
    ("upload", "hang", base.RetryableError, "READ_TIMEOUT", None),
    ("status", "server_error", base.RetryableError, "internal_error", None),
    ("status", "hang", base.RetryableError, "READ_TIMEOUT", None),
    ("status", "garbage", base.RetryableError, "BAD_RESPONSE", None),
    ("status", "failed:file_format_check_failed", base.PermanentError,
     "file_format_check_failed", None),
    ("status", "failed:internal", base.RetryableError, "internal", None),
    ("status", "failed:spam_risk_too_many_posts", base.RetryableError,
     "spam_risk_too_many_posts", 3600),
    ("status", "failed:auth_removed", base.AuthError, "auth_removed", None),
]  # fmt: skip


@pytest.mark.parametrize(("route", "mode", "error", "code", "wait"), FAILURES)
async def test_failure_modes_are_classified(
    tt: TikTokHarness,
    route: str,
    mode: str,
    error: type[base.AdapterError],
    code: str,
    wait: float | None,
) -> None:
    """Each failure maps to exactly its class, code and wait: init's 5xx and timeouts are
    ambiguous, everything before and after it retryable; a FAILED publish by its fail_reason."""
    fake(tt).fail(route, mode)

    with pytest.raises(base.AdapterError) as caught:
        await tt.adapter.publish(tt.post("Hello"))

    assert type(caught.value) is error
    assert caught.value.code == code
    if wait is not None:
        assert isinstance(caught.value, base.RetryableError)
        assert caught.value.retry_after == pytest.approx(wait)
    kept = bool(tt.progress.values)
    assert kept is (route in ("upload", "status") and not mode.startswith("failed:"))


async def test_daily_cap_is_reported_by_limits(tt: TikTokHarness) -> None:
    """After spam_risk_too_many_posts, limits() reports TikTok's ~15 posts a day."""
    assert tt.adapter.limits() == base.PlatformLimits()
    fake(tt).fail("video_init", "spam_risk")
    with pytest.raises(base.RetryableError):
        await tt.adapter.publish(tt.post())

    assert tt.adapter.limits().per_24h == 15


async def test_privacy_the_creator_cannot_use_is_refused_before_init(tt: TikTokHarness) -> None:
    """creator_info without PUBLIC_TO_EVERYONE: a public post fails permanently, nothing sent."""
    fake(tt).creator["privacy_level_options"] = ["SELF_ONLY"]

    with pytest.raises(base.PermanentError) as caught:
        await tt.adapter.publish(tt.post("Public please"))

    assert caught.value.code == "privacy_level_option_mismatch"
    assert tt.routes() == ["creator_info"]


async def test_video_longer_than_the_creator_may_post_is_refused(tt: TikTokHarness) -> None:
    """An MP4 of 601 s against max_video_post_duration_sec 600: permanent, no init."""
    long_clip = tt.video_url("long.mp4", seconds=601)

    with pytest.raises(base.PermanentError) as caught:
        await tt.adapter.publish(tt.post("Too long", long_clip))

    assert caught.value.code == "duration_check_failed"
    assert tt.routes() == ["creator_info"]


# --- tokens -------------------------------------------------------------------------------------


async def test_refresh_sends_the_documented_form_and_saves_the_rotated_pair(
    tt: TikTokHarness,
) -> None:
    """POST /v2/oauth/token/ form: client_key, client_secret, grant_type, refresh_token."""
    creds = dict(tt.store.pages[PAGE])

    refreshed = await tt.adapter.refresh_credentials(creds)

    (call,) = fake(tt).calls("token")
    assert call.headers["content-type"] == "application/x-www-form-urlencoded"
    assert {k: v[0] for k, v in parse_qs(call.body.decode()).items()} == {
        "client_key": fake_tiktok.CLIENT_KEY,
        "client_secret": fake_tiktok.CLIENT_SECRET,
        "grant_type": "refresh_token",
        "refresh_token": creds["refresh_token"],
    }
    assert refreshed["refresh_token"] in fake(tt).refresh_tokens
    assert int(refreshed["expires_at"]) == int(tt.clock.now().timestamp()) + 86400


async def test_token_is_refreshed_before_it_expires(tt: TikTokHarness) -> None:
    """Within 10 minutes of expiry the first call refreshes (saved at once), then publishes."""
    expires = int(tt.store.pages[PAGE]["expires_at"])
    tt.clock.advance(expires - tt.clock.now().timestamp() - 300)

    await tt.adapter.publish(tt.post())

    assert tt.routes()[:2] == ["token", "creator_info"]
    (saved,) = tt.store.saved
    assert fake(tt).calls("creator_info")[0].headers["authorization"] == (
        f"Bearer {saved[1]['access_token']}"
    )


async def test_access_token_invalid_refreshes_once_then_succeeds(tt: TikTokHarness) -> None:
    """401 access_token_invalid: one refresh, the call again with the new token."""
    fake(tt).fail("creator_info", "expired_token")

    await tt.adapter.publish(tt.post())

    assert tt.routes()[:3] == ["creator_info", "token", "creator_info"]
    assert len(tt.store.saved) == 1


@pytest.mark.parametrize(
    ("mode", "error", "code"),
    [
        ("invalid_grant", base.AuthError, "REFRESH_REFUSED"),
        ("unavailable", base.RetryableError, "internal_error"),
        ("rate_limit", base.RetryableError, "rate_limit_exceeded"),
        ("hang", base.RetryableError, "READ_TIMEOUT"),
    ],
)
async def test_refresh_failures_only_a_refused_grant_is_auth(
    tt: TikTokHarness, mode: str, error: type[base.AdapterError], code: str
) -> None:
    """A refused refresh token needs a re-connect; an outage of the token endpoint never does."""
    fake(tt).fail("token", mode)

    with pytest.raises(base.AdapterError) as caught:
        await tt.adapter.refresh_credentials(dict(tt.store.pages[PAGE]))

    assert type(caught.value) is error and caught.value.code == code


# --- validation and comments --------------------------------------------------------------------


def _payload(tt: TikTokHarness, message: str | None, *media: base.MediaItem, **extra: Any) -> Any:
    return base.PostPayload("p", PAGE, "tiktok", message, media=media, **extra)


@pytest.mark.parametrize(
    ("case", "wanted"),
    [
        ("text_only", "needs a photo or a video"),
        ("video_and_photo", "one video, or photos only"),
        ("caption_utf16", "UTF-16"),
        ("privacy", "privacy must be one of"),
        ("first_comment", "no API for comments"),
        ("png", "not PNG"),
    ],
)
def test_validate_refuses_what_tiktok_would(tt: TikTokHarness, case: str, wanted: str) -> None:
    """Text-only posts, mixed media, a caption over 2,200 UTF-16 units (emoji count two), an
    unknown privacy level, a first comment and PNG photos are refused before any request."""
    video = base.MediaItem("https://cdn.example/a.mp4", "video")
    photo = base.MediaItem("https://cdn.example/a.jpg", "photo")
    payloads = {
        "text_only": _payload(tt, "Hi"),
        "video_and_photo": _payload(tt, "Hi", video, photo),
        "caption_utf16": _payload(tt, "😀" * 1101, video),
        "privacy": _payload(tt, "Hi", video, options={"tiktok_settings": {"privacy": "secret"}}),
        "first_comment": _payload(tt, "Hi", video, first_comment="First!"),
        "png": _payload(tt, "Hi", base.MediaItem("https://cdn.example/a.png", "photo")),
    }

    problems = tt.adapter.validate(payloads[case])

    assert any(wanted in p for p in problems), problems
    assert tt.adapter.validate(_payload(tt, "😀" * 1100, video)) == []
    assert tt.routes() == []


async def test_comment_calls_are_refused_unsent(tt: TikTokHarness) -> None:
    """No official comment API: UnsupportedAction NOT_SUPPORTED, no request."""
    with pytest.raises(base.UnsupportedAction) as caught:
        await tt.adapter.post_comment(tt.post(), "7400000000000000001", "First!")

    assert caught.value.code == "NOT_SUPPORTED" and tt.routes() == []
