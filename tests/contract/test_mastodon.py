"""Mastodon against its fake: the documented requests in detail, and every failure mode of the
fake mapped to its class (platforms.md §0.1, §7)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from adapters import base, mastodon
from daemon.clock import FakeClock
from tests.contract.conftest import PAGE, Harness
from tests.fakes.mastodon import _multipart


async def test_publish_sends_json_status_with_bearer_and_idempotency_key(masto: Harness) -> None:
    """POST /api/v1/statuses: bearer token, JSON body, Idempotency-Key derived from the post."""
    post = masto.post("Hello https://example.com/a/very/long/path?x=1 @bob@other.social")

    published = await masto.adapter.publish(post)

    (call,) = masto.fake.calls("statuses")
    assert (call.method, call.path) == ("POST", "/api/v1/statuses")
    assert call.headers["authorization"] == "Bearer token-alice"
    assert call.headers["idempotency-key"] == mastodon.idempotency_key(post)
    assert call.headers["idempotency-key"].startswith("postd-post_1-")
    assert call.json() == {"status": post.message}
    assert published.permalink is not None and published.permalink.endswith(published.remote_id)


async def test_image_is_uploaded_as_multipart_file_to_media_v2(masto: Harness) -> None:
    """POST /api/v2/media carries the bytes in the multipart field ``file`` with its type;
    the status names the media id."""
    await masto.adapter.publish(masto.post("cat", masto.image_url()))

    (upload,) = masto.fake.calls("media")
    data, mime = _multipart(upload)["file"]
    assert (mime, data[:8]) == ("image/png", b"\x89PNG\r\n\x1a\n")
    (status,) = masto.fake.calls("statuses")
    assert status.json()["media_ids"] == list(masto.fake.media)


async def test_media_processing_is_polled_without_using_tries(masto: Harness) -> None:
    """202 on upload: GET /api/v1/media/:id until 200 (206 meanwhile), waits through the
    injected sleep, then one publish call: the post goes out in a single try."""
    masto.fake.fail("media", "media_not_ready")

    await masto.adapter.publish(masto.post("slow cat", masto.image_url()))

    assert masto.routes() == [
        "instance",
        "media",
        "media_status",
        "media_status",
        "media_status",
        "statuses",
    ]
    assert masto.adapter._sleep.waits == [1.0, 1.0]


async def test_media_still_processing_defers_and_resumes_without_reupload(masto: Harness) -> None:
    """Past media_poll_max_seconds the try is retryable (MEDIA_NOT_READY); the next try polls
    the same upload instead of uploading again."""
    masto.fake.processing_polls = 8
    masto.fake.fail("media", "media_not_ready")
    post = masto.post("very slow cat", masto.image_url())

    with pytest.raises(base.RetryableError) as info:
        await masto.adapter.publish(post)
    assert info.value.code == "MEDIA_NOT_READY"
    await masto.adapter.publish(post)

    assert masto.routes().count("media") == 1
    assert masto.routes().count("statuses") == 1


async def test_a_retry_after_an_ambiguous_answer_does_not_duplicate(masto: Harness) -> None:
    """500 after the status was created is ambiguous; find_published sees it, and a retry with
    the same Idempotency-Key returns the same status instead of a second one."""
    masto.fake.fail("statuses", "ambiguous_after")
    post = masto.post("exactly once")
    since = masto.clock.now() - timedelta(minutes=1)

    with pytest.raises(base.AmbiguousError):
        await masto.adapter.publish(post)
    found = await masto.adapter.find_published(post, since)
    again = await masto.adapter.publish(post)

    assert found is not None and again.remote_id == found.remote_id
    assert masto.published_texts() == ["exactly once"]


async def test_instance_limits_are_read_once_and_used_by_validate(masto: Harness) -> None:
    """/api/v2/instance limits are reported and applied: URLs count 23, the cap is the
    instance's."""
    masto.fake.max_characters = 100
    url = "https://example.com/" + "p" * 200
    assert masto.adapter.instance_limits(PAGE) is None

    await masto.adapter.publish(masto.post(f"short text {url}"))
    await masto.adapter.publish(masto.post("second", post_id="post_2"))

    limits = masto.adapter.instance_limits(PAGE)
    assert limits is not None and limits.max_characters == 100
    assert masto.routes().count("instance") == 1
    assert masto.adapter.validate(masto.post("y" * 101)) != []
    assert masto.adapter.validate(masto.post("y" * 76 + " " + url)) == []


@pytest.mark.parametrize(
    ("route", "mode", "error", "code", "status"),
    [
        ("statuses", "rate_limit", base.RetryableError, "RATE_LIMITED", 429),
        ("statuses", "unavailable", base.RetryableError, "UNAVAILABLE", 503),
        ("statuses", "server_error", base.AmbiguousError, "HTTP_500", 500),
        ("statuses", "ambiguous_after", base.AmbiguousError, "HTTP_500", 500),
        ("statuses", "hang", base.AmbiguousError, "READ_TIMEOUT", None),
        ("statuses", "hang_after", base.AmbiguousError, "READ_TIMEOUT", None),
        ("statuses", "garbage", base.AmbiguousError, "BAD_RESPONSE", 200),
        ("statuses", "duplicate", base.PermanentError, "HTTP_422", 422),
        ("statuses", "expired_token", base.AuthError, "AUTH_EXPIRED", 401),
        ("media", "rate_limit", base.RetryableError, "RATE_LIMITED", 429),
        ("media", "server_error", base.RetryableError, "HTTP_500", 500),
        ("media", "hang", base.RetryableError, "READ_TIMEOUT", None),
        ("media", "garbage", base.RetryableError, "BAD_RESPONSE", 200),
        ("instance", "unavailable", base.RetryableError, "UNAVAILABLE", 503),
        ("instance", "expired_token", base.AuthError, "AUTH_EXPIRED", 401),
    ],
)
async def test_failure_modes_map_to_their_class(
    masto: Harness,
    route: str,
    mode: str,
    error: type[base.AdapterError],
    code: str,
    status: int | None,
) -> None:
    """Each failure of the platform becomes exactly one typed error with its code and status."""
    masto.fake.fail(route, mode)

    with pytest.raises(base.AdapterError) as info:
        await masto.adapter.publish(masto.post("x", masto.image_url()))

    assert type(info.value) is error
    assert (info.value.code, info.value.http_status) == (code, status)


async def test_rate_limit_wait_comes_from_x_ratelimit_reset(masto: Harness) -> None:
    """429: retry_after is the time until X-RateLimit-Reset (ISO 8601), on the given clock."""
    masto.fake.fail("statuses", "rate_limit")

    with pytest.raises(base.RetryableError) as info:
        await masto.adapter.publish(masto.post())

    assert info.value.retry_after == pytest.approx(120, abs=0.01)


async def test_a_401_rereads_the_credentials_once(masto: Harness) -> None:
    """A token replaced by a re-connect is picked up on the 401; a dead one raises AuthError."""
    await masto.adapter.publish(masto.post("first"))
    bob = masto.fake.add_account("token-new", "alice2", "Alice")
    masto.fake.accounts.pop("token-alice")
    masto.store.pages[PAGE] |= {"access_token": "token-new", "account_id": bob["id"]}

    await masto.adapter.publish(masto.post("second", post_id="post_2"))
    masto.fake.accounts.pop("token-new")
    with pytest.raises(base.AuthError):
        await masto.adapter.publish(masto.post("third", post_id="post_3"))

    assert masto.published_texts() == ["first", "second"]


async def test_nothing_listening_is_retryable(masto: Harness) -> None:
    """A refused connection provably sent nothing: retryable, even for the final call."""
    await masto.fake.stop()

    with pytest.raises(base.RetryableError) as info:
        await masto.adapter.publish(masto.post())
    assert info.value.code == "CONNECT_FAILED"


async def test_an_unclassified_answer_is_permanent(masto: Harness, clock: FakeClock) -> None:
    """An answer the adapter has no rule for (404 from a wrong api_base) is permanent."""
    wrong = mastodon.MastodonAdapter(
        masto.store, now=clock.now, api_base=masto.fake.base_url + "/not-mastodon"
    )
    try:
        with pytest.raises(base.PermanentError) as info:
            await wrong.publish(masto.post())
    finally:
        await wrong.aclose()
    assert (type(info.value), info.value.code) == (base.PermanentError, "HTTP_404")


async def test_connect_verifies_the_token(masto: Harness) -> None:
    """connect calls verify_credentials and returns the account, never the token in repr."""
    connected = await mastodon.connect(masto.fake.base_url, "token-alice")

    assert connected.external_id == masto.fake.alice["id"]
    assert connected.username == "alice"
    assert "token-alice" not in repr(connected)
    with pytest.raises(base.AuthError):
        await mastodon.connect(masto.fake.base_url, "wrong")


@pytest.mark.parametrize(
    ("given", "normalized"),
    [
        ("mastodon.social", "https://mastodon.social"),
        ("https://mastodon.social/", "https://mastodon.social"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
    ],
)
def test_instance_urls_are_normalized(given: str, normalized: str) -> None:
    """Instances are https origins; plain http only on loopback."""
    assert mastodon.normalize_instance(given) == normalized


def test_plain_http_instances_are_refused() -> None:
    """http to a public host would send the token in clear: refused."""
    with pytest.raises(ValueError, match="https"):
        mastodon.normalize_instance("http://mastodon.social")


def test_status_html_is_compared_as_posted_text() -> None:
    """Rendered content (paragraphs, <br />, link spans, entities) compares equal to the text."""
    html = (
        '<p>a &amp; b<br />see <a href="https://x.io/p"><span class="invisible">https://'
        '</span><span class="">x.io/p</span></a></p><p>@bob</p>'
    )
    assert mastodon.comparable(mastodon.plain_text(html)) == mastodon.comparable(
        "a & b\nsee https://x.io/p\n\n@bob@other.social"
    )
