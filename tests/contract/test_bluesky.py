"""Bluesky against its fake PDS: the documented requests in detail, the session handling, and
every failure mode of the fake mapped to its class (platforms.md §0.1, §8)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from adapters import base, bluesky
from tests.contract.conftest import PAGE, PNG, Harness


async def test_publish_creates_a_post_record_with_facets(sky: Harness) -> None:
    """createRecord: repo = the page's DID, collection app.bsky.feed.post, the text, a Z
    timestamp, and link/mention/tag facets in UTF-8 byte offsets."""
    sky.fake.add_account("bob.test")
    text = "✨ hi @bob.test see https://example.com/x. #postd"

    published = await sky.adapter.publish(sky.post(text))

    assert sky.routes() == ["resolve_handle", "create_record"]
    (call,) = sky.fake.calls("create_record")
    assert call.headers["authorization"].startswith("Bearer ")
    body = call.json()
    assert (body["repo"], body["collection"]) == (sky.fake.did, "app.bsky.feed.post")
    record = body["record"]
    assert (record["$type"], record["text"]) == ("app.bsky.feed.post", text)
    assert record["createdAt"] == "2026-01-05T09:00:00.000Z"
    raw = text.encode()
    spans = {
        f["features"][0]["$type"].rsplit("#", 1)[1]: raw[
            f["index"]["byteStart"] : f["index"]["byteEnd"]
        ].decode()
        for f in record["facets"]
    }
    assert spans == {"mention": "@bob.test", "link": "https://example.com/x", "tag": "#postd"}
    mention = next(f for f in record["facets"] if "mention" in f["features"][0]["$type"])
    assert mention["features"][0]["did"] == sky.fake.handles["bob.test"]
    rkey = published.remote_id.rsplit("/", 1)[1]
    assert published.permalink == f"https://bsky.app/profile/{sky.fake.did}/post/{rkey}"


async def test_unknown_handles_stay_plain_text(sky: Harness) -> None:
    """A mention the PDS cannot resolve gets no facet (it renders as text), the post still goes."""
    await sky.adapter.publish(sky.post("hello @nobody.test"))

    (call,) = sky.fake.calls("create_record")
    assert "facets" not in call.json()["record"]


async def test_image_is_uploaded_as_a_raw_blob_and_embedded(sky: Harness) -> None:
    """uploadBlob gets the raw bytes with their Content-Type; the record embeds the blob as
    app.bsky.embed.images with an alt text."""
    await sky.adapter.publish(sky.post("cat", sky.image_url()))

    (upload,) = sky.fake.calls("upload_blob")
    assert (upload.headers["content-type"], upload.body) == ("image/png", PNG)
    embed = sky.fake.calls("create_record")[0].json()["record"]["embed"]
    assert embed["$type"] == "app.bsky.embed.images"
    assert embed["images"][0]["alt"] == ""
    assert embed["images"][0]["image"]["ref"]["$link"] in sky.fake.blobs


async def test_reply_refs_point_at_root_and_parent(sky: Harness) -> None:
    """A reply to a comment keeps the original post as root and the comment as parent."""
    published = await sky.adapter.publish(sky.post())
    comment = sky.someone_comments(published.remote_id, "q?")

    await sky.adapter.reply_to_comment(sky.post(), comment, "a!")

    reply = sky.fake.calls("create_record")[-1].json()["record"]["reply"]
    assert reply["root"]["uri"] == published.remote_id
    assert reply["parent"]["uri"] == comment
    assert all(ref["cid"].startswith("bafyrei") for ref in reply.values())


async def test_an_expired_access_token_is_refreshed_once_and_saved(sky: Harness) -> None:
    """ExpiredToken: one refreshSession, the rotated tokens are saved, the call is made again;
    createSession is never called."""
    old = dict(sky.store.pages[PAGE])
    sky.fake.fail("create_record", "expired_token")

    await sky.adapter.publish(sky.post("after refresh"))

    assert sky.routes() == ["create_record", "refresh_session", "create_record"]
    assert sky.fake.calls("refresh_session")[0].headers["authorization"] == (
        f"Bearer {old['refreshJwt']}"
    )
    (saved_page, saved), *_ = sky.store.saved
    assert saved_page == PAGE and saved["refreshJwt"] != old["refreshJwt"]
    assert sky.published_texts() == ["after refresh"]


async def test_a_session_about_to_expire_is_refreshed_first(sky: Harness) -> None:
    """An access JWT expiring within a minute is refreshed before the call, not after a 400."""
    sky.clock.advance(sky.fake.access_ttl - 30)

    await sky.adapter.publish(sky.post())

    assert sky.routes() == ["refresh_session", "create_record"]


async def test_concurrent_calls_share_one_refresh(sky: Harness) -> None:
    """Five publishes meeting an expired session trigger one refreshSession between them."""
    sky.fake.expire_access_tokens()

    await asyncio.gather(
        *(sky.adapter.publish(sky.post(f"p{i}", post_id=f"p{i}")) for i in range(5))
    )

    assert len(sky.fake.calls("refresh_session")) == 1
    assert sorted(sky.published_texts()) == [f"p{i}" for i in range(5)]


async def test_a_refused_refresh_is_auth_and_not_retried(sky: Harness) -> None:
    """A refresh token the PDS refuses: AuthError (the page needs a re-connect); the next post
    fails at once, without asking the PDS again, until the credentials change."""
    sky.fake.expire_access_tokens()
    sky.fake.refresh.clear()

    with pytest.raises(base.AuthError):
        await sky.adapter.publish(sky.post("one"))
    calls = len(sky.fake.requests)
    with pytest.raises(base.AuthError):
        await sky.adapter.publish(sky.post("two"))

    assert len(sky.fake.requests) == calls
    assert sky.fake.calls("create_session") == []
    connected = await bluesky.connect("alice.test", "app-pass-1234", api_base=sky.fake.base_url)
    sky.store.pages[PAGE] = dict(connected.credentials)
    await sky.adapter.publish(sky.post("three"))
    assert sky.published_texts() == ["three"]


async def test_ambiguous_create_is_found_by_listing_the_repo(sky: Harness) -> None:
    """502 after the record was created: AmbiguousError; listRecords then finds that post."""
    sky.fake.fail("create_record", "ambiguous_after")
    post = sky.post("maybe out")
    since = sky.clock.now() - timedelta(minutes=5)

    with pytest.raises(base.AmbiguousError) as info:
        await sky.adapter.publish(post)
    found = await sky.adapter.find_published(post, since)

    assert (info.value.code, info.value.http_status) == ("UpstreamFailure", 502)
    assert found is not None and found.remote_id == sky.fake.records[0]["uri"]
    (listing,) = sky.fake.calls("list_records")
    assert listing.param("repo") == sky.fake.did
    assert listing.param("collection") == "app.bsky.feed.post"


async def test_find_published_pages_through_the_repo(sky: Harness) -> None:
    """A post older than one page of records is found on a later page (cursor)."""
    since = sky.clock.now() - timedelta(minutes=1)
    target = await sky.adapter.publish(sky.post("needle"))
    for i in range(bluesky.PAGE_SIZE + 5):
        sky.fake.add_post(
            sky.fake.did,
            {
                "$type": "app.bsky.feed.post",
                "text": f"hay {i}",
                "createdAt": "2026-01-05T09:00:01Z",
            },
        )

    found = await sky.adapter.find_published(sky.post("needle"), since)

    assert found is not None and found.remote_id == target.remote_id
    assert len(sky.fake.calls("list_records")) == 2


@pytest.mark.parametrize(
    ("route", "mode", "error", "code", "status"),
    [
        ("create_record", "rate_limit", base.RetryableError, "RateLimitExceeded", 429),
        ("create_record", "unavailable", base.RetryableError, "InternalServerError", 503),
        ("create_record", "server_error", base.AmbiguousError, "InternalServerError", 500),
        ("create_record", "ambiguous_after", base.AmbiguousError, "UpstreamFailure", 502),
        ("create_record", "hang", base.AmbiguousError, "READ_TIMEOUT", None),
        ("create_record", "hang_after", base.AmbiguousError, "READ_TIMEOUT", None),
        ("create_record", "garbage", base.AmbiguousError, "BAD_RESPONSE", 200),
        ("create_record", "duplicate", base.PermanentError, "InvalidRequest", 400),
        ("upload_blob", "rate_limit", base.RetryableError, "RateLimitExceeded", 429),
        ("upload_blob", "server_error", base.RetryableError, "InternalServerError", 500),
        ("upload_blob", "hang", base.RetryableError, "READ_TIMEOUT", None),
        ("resolve_handle", "server_error", base.RetryableError, "InternalServerError", 500),
    ],
)
async def test_failure_modes_map_to_their_class(
    sky: Harness,
    route: str,
    mode: str,
    error: type[base.AdapterError],
    code: str,
    status: int | None,
) -> None:
    """Each failure of the PDS becomes exactly one typed error with the PDS's error name."""
    sky.fake.add_account("bob.test")
    sky.fake.fail(route, mode)

    with pytest.raises(base.AdapterError) as info:
        await sky.adapter.publish(sky.post("hi @bob.test", sky.image_url()))

    assert type(info.value) is error
    assert (info.value.code, info.value.http_status) == (code, status)


async def test_rate_limit_wait_comes_from_ratelimit_reset(sky: Harness) -> None:
    """429 RateLimitExceeded: retry_after is the time until RateLimit-Reset (epoch seconds)."""
    sky.fake.fail("create_record", "rate_limit")

    with pytest.raises(base.RetryableError) as info:
        await sky.adapter.publish(sky.post())

    assert info.value.retry_after == pytest.approx(90, abs=1)


async def test_connect_logs_in_once_and_keeps_no_password(sky: Harness) -> None:
    """connect = one createSession; what it returns holds the session, not the app password;
    a wrong password is AuthError."""
    connected = await bluesky.connect("alice.test", "app-pass-1234", api_base=sky.fake.base_url)

    assert set(connected.credentials) == {"did", "handle", "accessJwt", "refreshJwt"}
    assert "app-pass-1234" not in str(dict(connected.credentials))
    with pytest.raises(base.AuthError) as info:
        await bluesky.connect("alice.test", "wrong", api_base=sky.fake.base_url)
    assert info.value.code == "AuthenticationRequired"


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("e\u0301" * 300, True),  # 300 graphemes, 900 bytes
        ("e\u0301" * 301, False),  # 301 graphemes
        ("👨‍👩‍👧" * 200, False),  # 200 graphemes but 3600 bytes
    ],
    ids=["300-graphemes", "301-graphemes", "over-3000-bytes"],
)
def test_validate_counts_graphemes_and_bytes(sky: Harness, text: str, ok: bool) -> None:
    """The 300-grapheme limit counts clusters, not code points; 3000 UTF-8 bytes also bind."""
    assert (sky.adapter.validate(sky.post(text)) == []) is ok


def test_validate_media_rules(sky: Harness) -> None:
    """Up to four images, or one video, never both."""

    def post(*kinds: str) -> base.PostPayload:
        media = tuple(base.MediaItem(f"https://m.example/{i}", k) for i, k in enumerate(kinds))
        return base.PostPayload("p", PAGE, "bluesky", "hi", media=media)

    assert sky.adapter.validate(post("photo", "photo", "photo", "photo")) == []
    assert sky.adapter.validate(post(*["photo"] * 5)) != []
    assert sky.adapter.validate(post("video")) == []
    assert sky.adapter.validate(post("video", "photo")) != []
