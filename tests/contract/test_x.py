"""X against its fake: the documented requests in detail (each also checked against X's OpenAPI
document by the fake), every failure mode mapped to its class (platforms.md §0.1, §5), token
refresh before expiry and after a 401, and X's weighted character count."""

from __future__ import annotations

import asyncio
import base64
from datetime import timedelta

import pytest

from adapters import base, x_text
from tests.contract.conftest import PAGE, Harness
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
