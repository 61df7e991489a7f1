"""The sandbox platform: durable records, reconciliation, simulated faults, comments."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path

import pytest

from adapters import base, sandbox
from daemon.clock import FakeClock
from daemon.config import SandboxSettings

MakeSandbox = Callable[..., sandbox.SandboxAdapter]


def _post(
    post_id: str = "post_1",
    message: str | None = "Hello from the sandbox",
    *,
    page_id: str = "page_1",
    media: tuple[base.MediaItem, ...] = (),
) -> base.PostPayload:
    return base.PostPayload(
        post_id=post_id, page_id=page_id, platform="sandbox", message=message, media=media
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def state_path(tmp_path: Path) -> Path:
    return tmp_path / "sandbox.db"


@pytest.fixture
async def make_sandbox(state_path: Path, clock: FakeClock) -> AsyncIterator[MakeSandbox]:
    opened: list[sandbox.SandboxAdapter] = []

    def make(**kwargs: object) -> sandbox.SandboxAdapter:
        adapter = sandbox.SandboxAdapter(state_path, clock, **kwargs)  # type: ignore[arg-type]
        opened.append(adapter)
        return adapter

    yield make
    for adapter in opened:
        await adapter.aclose()


async def test_publish_is_durable_across_instances(
    make_sandbox: MakeSandbox, clock: FakeClock
) -> None:
    """A publish is committed before it returns: another adapter on the same file sees it."""
    published = await make_sandbox().publish(_post())

    records = make_sandbox().published_records()

    assert [(r.remote_id, r.post_ref, r.page_id) for r in records] == [
        (published.remote_id, "post_1", "page_1")
    ]
    assert records[0].published_at == clock.now() == published.published_at
    assert records[0].fingerprint == _post().fingerprint()
    assert records[0].message == "Hello from the sandbox"


async def test_publish_returns_sandbox_ids_and_permalink(make_sandbox: MakeSandbox) -> None:
    """Remote ids look like sbx_<16 hex> and the permalink names the page and the id."""
    published = await make_sandbox().publish(_post())

    assert published.remote_id.startswith("sbx_")
    assert len(published.remote_id) == 20
    int(published.remote_id[4:], 16)
    assert published.permalink == f"https://sandbox.postd.invalid/page_1/{published.remote_id}"


async def test_records_are_ordered_by_published_at(
    make_sandbox: MakeSandbox, clock: FakeClock
) -> None:
    """published_records lists posts oldest first, optionally for one page."""
    adapter = make_sandbox()
    first = await adapter.publish(_post("a"))
    clock.advance(5)
    second = await adapter.publish(_post("b", page_id="page_2"))

    assert [r.remote_id for r in adapter.published_records()] == [
        first.remote_id,
        second.remote_id,
    ]
    assert [r.post_ref for r in adapter.published_records(page_id="page_2")] == ["b"]


async def test_find_published_matches_by_fingerprint_not_post_id(
    make_sandbox: MakeSandbox, clock: FakeClock
) -> None:
    """find_published finds the same content (whitespace-normalized) whatever the post id."""
    adapter = make_sandbox()
    published = await adapter.publish(_post("original", "Hello   from the\nsandbox "))

    found = await adapter.find_published(
        _post("someone_else", "Hello from the sandbox"), since=clock.now()
    )

    assert found == published
    assert await adapter.find_published(_post(message="Other text"), since=clock.now()) is None


async def test_find_published_is_scoped_to_the_page(
    make_sandbox: MakeSandbox, clock: FakeClock
) -> None:
    """A post with the same content on another page is not a match."""
    adapter = make_sandbox()
    await adapter.publish(_post(page_id="page_1"))

    assert await adapter.find_published(_post(page_id="page_2"), since=clock.now()) is None


async def test_find_published_honours_since(make_sandbox: MakeSandbox, clock: FakeClock) -> None:
    """Posts published before `since` are ignored; one published exactly at `since` matches."""
    adapter = make_sandbox()
    published_at = clock.now()
    await adapter.publish(_post())

    assert await adapter.find_published(_post(), since=published_at) is not None
    later = published_at + timedelta(microseconds=1)
    assert await adapter.find_published(_post(), since=later) is None


async def test_find_published_skips_excluded_remote_ids(
    make_sandbox: MakeSandbox, clock: FakeClock
) -> None:
    """Remote ids already attributed to other posts are skipped; the next match is returned."""
    adapter = make_sandbox()
    since = clock.now()
    first = await adapter.publish(_post("a"))
    clock.advance(60)
    second = await adapter.publish(_post("b"))

    assert await adapter.find_published(_post("b"), since) == first
    assert await adapter.find_published(_post("b"), since, frozenset({first.remote_id})) == second
    both = frozenset({first.remote_id, second.remote_id})
    assert await adapter.find_published(_post("b"), since, both) is None


async def test_find_published_rejects_naive_since(make_sandbox: MakeSandbox) -> None:
    """A naive `since` is a programming error, not a silent timezone guess."""
    with pytest.raises(ValueError, match="timezone-aware"):
        await make_sandbox().find_published(_post(), since=FakeClock().now().replace(tzinfo=None))


async def test_rate_limit_gives_429_with_time_until_a_slot_frees(
    make_sandbox: MakeSandbox, clock: FakeClock
) -> None:
    """Over rate_limit_per_minute calls on a page in 60 s: RATE_LIMITED, 429, exact retry_after."""
    adapter = make_sandbox(rate_limit_per_minute=2)
    await adapter.publish(_post("a"))
    clock.advance(10)
    await adapter.publish(_post("b"))
    clock.advance(15)

    with pytest.raises(base.RetryableError) as caught:
        await adapter.publish(_post("c"))

    assert caught.value.code == "RATE_LIMITED"
    assert caught.value.http_status == 429
    assert caught.value.retry_after == pytest.approx(35)
    assert len(adapter.published_records()) == 2


async def test_rate_limit_slot_frees_after_retry_after(
    make_sandbox: MakeSandbox, clock: FakeClock
) -> None:
    """Waiting exactly retry_after seconds is enough; rejected calls do not use up slots."""
    adapter = make_sandbox(rate_limit_per_minute=1)
    await adapter.publish(_post("a"))
    clock.advance(20)
    with pytest.raises(base.RetryableError) as caught:
        await adapter.publish(_post("b"))
    assert caught.value.retry_after is not None

    clock.advance(caught.value.retry_after)

    await adapter.publish(_post("b"))
    assert [r.post_ref for r in adapter.published_records()] == ["a", "b"]


async def test_rate_limit_is_per_page(make_sandbox: MakeSandbox) -> None:
    """One page at its limit does not block another page."""
    adapter = make_sandbox(rate_limit_per_minute=1)
    await adapter.publish(_post("a", page_id="page_1"))

    await adapter.publish(_post("b", page_id="page_2"))

    with pytest.raises(base.RetryableError):
        await adapter.publish(_post("c", page_id="page_1"))


async def test_rate_limit_holds_across_instances(make_sandbox: MakeSandbox) -> None:
    """Two adapters on one state file share the page's rate window."""
    await make_sandbox(rate_limit_per_minute=1).publish(_post("a"))

    with pytest.raises(base.RetryableError, match="too many"):
        await make_sandbox(rate_limit_per_minute=1).publish(_post("b"))


async def test_one_group_commit_answers_each_call_its_own_way(
    make_sandbox: MakeSandbox,
) -> None:
    """Calls of one loop iteration share a commit; a refused call does not sink the others."""
    adapter = make_sandbox(rate_limit_per_minute=1)

    answers = await asyncio.gather(
        adapter.publish(_post("a")),
        adapter.publish(_post("b")),  # same page, over the limit
        adapter.publish(_post("c", page_id="page_2")),
        return_exceptions=True,
    )

    assert isinstance(answers[0], base.Published)
    assert isinstance(answers[1], base.RetryableError)
    assert isinstance(answers[2], base.Published)
    records = {r.post_ref: r.remote_id for r in adapter.published_records()}
    assert records == {"a": answers[0].remote_id, "c": answers[2].remote_id}


async def test_remote_id_collision_draws_another_id(
    make_sandbox: MakeSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A taken remote id is drawn again; each call gets the id its record was stored under."""
    adapter = make_sandbox()
    first = await adapter.publish(_post("a"))
    draws = iter([first.remote_id, "sbx_fresh1", first.remote_id, "sbx_fresh2"])
    monkeypatch.setattr(sandbox, "_remote_id", lambda: next(draws))

    b, c = await asyncio.gather(adapter.publish(_post("b")), adapter.publish(_post("c")))

    assert {b.remote_id, c.remote_id} == {"sbx_fresh1", "sbx_fresh2"}
    records = {r.post_ref: r.remote_id for r in adapter.published_records()}
    assert records == {"a": first.remote_id, "b": b.remote_id, "c": c.remote_id}


async def test_failure_rate_one_raises_retryable_and_records_nothing(
    make_sandbox: MakeSandbox,
) -> None:
    """failure_rate=1: every call is a 503 that provably did not take effect."""
    adapter = make_sandbox(failure_rate=1.0, seed=7)

    with pytest.raises(base.RetryableError) as caught:
        await adapter.publish(_post())

    assert caught.value.code == "SANDBOX_UNAVAILABLE"
    assert caught.value.http_status == 503
    assert caught.value.retry_after is None
    assert adapter.published_records() == []


async def test_ambiguous_rate_one_records_and_raises(
    make_sandbox: MakeSandbox, clock: FakeClock
) -> None:
    """ambiguous_rate=1: the post goes out, the caller gets a 502, find_published finds it."""
    adapter = make_sandbox(ambiguous_rate=1.0, seed=7)

    with pytest.raises(base.AmbiguousError) as caught:
        await adapter.publish(_post())

    assert caught.value.http_status == 502
    [record] = adapter.published_records()
    found = await adapter.find_published(_post(), since=clock.now())
    assert found is not None
    assert found.remote_id == record.remote_id


async def test_seeded_failures_are_reproducible(tmp_path: Path, clock: FakeClock) -> None:
    """The same seed gives the same sequence of simulated outcomes."""

    async def outcomes(path: Path) -> list[str]:
        adapter = sandbox.SandboxAdapter(path, clock, failure_rate=0.5, seed=42)
        result = []
        for index in range(20):
            try:
                await adapter.publish(_post(f"p{index}", f"message {index}"))
                result.append("ok")
            except base.RetryableError:
                result.append("fail")
        await adapter.aclose()
        return result

    first = await outcomes(tmp_path / "one.db")

    assert first == await outcomes(tmp_path / "two.db")
    assert {"ok", "fail"} == set(first)


@pytest.mark.parametrize(
    ("marker", "error", "code"),
    [
        ("[sandbox:reject]", base.PermanentError, "SANDBOX_REJECTED"),
        ("[sandbox:auth]", base.AuthError, "AUTH_EXPIRED"),
    ],
)
async def test_markers_force_errors_before_anything_else(
    make_sandbox: MakeSandbox, marker: str, error: type[base.AdapterError], code: str
) -> None:
    """Markers raise their error deterministically, even with faults on, and record nothing."""
    adapter = make_sandbox(failure_rate=1.0, rate_limit_per_minute=1)

    with pytest.raises(error) as caught:
        await adapter.publish(_post(message=f"please {marker} this"))

    assert type(caught.value) is error
    assert caught.value.code == code
    assert adapter.published_records() == []


async def test_invalid_post_is_a_permanent_error(make_sandbox: MakeSandbox) -> None:
    """Publishing what validate() refuses fails permanently with SANDBOX_INVALID."""
    with pytest.raises(base.PermanentError) as caught:
        await make_sandbox().publish(_post(message="   "))

    assert caught.value.code == "SANDBOX_INVALID"


async def test_comments_round_trip(make_sandbox: MakeSandbox, clock: FakeClock) -> None:
    """post_comment, add_comment and reply_to_comment are listed back oldest first."""
    adapter = make_sandbox()
    post = _post()
    remote_id = (await adapter.publish(post)).remote_id
    mine = await adapter.post_comment(post, remote_id, "First!")
    clock.advance(1)
    theirs = adapter.add_comment(remote_id, "Nice post", author_name="Ada", author_username="ada")
    clock.advance(1)
    reply = await adapter.reply_to_comment(post, theirs.id, "Thanks Ada")

    comments = await adapter.list_comments(post, remote_id)

    assert comments == [mine, theirs, reply]
    assert reply.parent_id == theirs.id
    assert reply.post_remote_id == remote_id
    assert mine.author_username == "page_1"
    assert await adapter.list_comments(post, remote_id, since=reply.created_at) == [reply]
    assert await make_sandbox().list_comments(post, remote_id) == comments


async def test_comment_on_unknown_post_is_not_found(make_sandbox: MakeSandbox) -> None:
    """Commenting on a post the page never published is a permanent 404."""
    with pytest.raises(base.PermanentError) as caught:
        await make_sandbox().post_comment(_post(), "sbx_0000000000000000", "hi")

    assert (caught.value.code, caught.value.http_status) == ("SANDBOX_NOT_FOUND", 404)


async def test_reply_to_unknown_comment_is_not_found(make_sandbox: MakeSandbox) -> None:
    """Replying to a comment that does not exist is a permanent 404."""
    with pytest.raises(base.PermanentError, match="no comment"):
        await make_sandbox().reply_to_comment(_post(), "sbxc_missing", "hi")


async def test_reject_marker_applies_to_comments(make_sandbox: MakeSandbox) -> None:
    """A first comment can be forced to fail while its post stays published."""
    adapter = make_sandbox()
    remote_id = (await adapter.publish(_post())).remote_id

    with pytest.raises(base.PermanentError):
        await adapter.post_comment(_post(), remote_id, "[sandbox:reject]")

    assert await adapter.list_comments(_post(), remote_id) == []
    assert len(adapter.published_records()) == 1


@pytest.mark.parametrize(
    ("post", "problem"),
    [
        (_post(message=None), "message or media"),
        (_post(message=" \n "), "message or media"),
        (_post(message="x" * 5001), "5001 characters"),
        (_post(media=(base.MediaItem("https://x.invalid/a.gif", "gif"),)), "not photo or video"),
    ],
)
async def test_validate_reports_problems(
    make_sandbox: MakeSandbox, post: base.PostPayload, problem: str
) -> None:
    """validate names what makes a post unpublishable."""
    problems = make_sandbox().validate(post)

    assert len(problems) == 1
    assert problem in problems[0]


@pytest.mark.parametrize(
    "post",
    [
        _post(message="x" * 5000),
        _post(message=None, media=(base.MediaItem("https://x.invalid/a.jpg", "photo"),)),
    ],
)
async def test_validate_accepts_publishable_posts(
    make_sandbox: MakeSandbox, post: base.PostPayload
) -> None:
    """A 5000-character message, or media alone, is publishable."""
    assert make_sandbox().validate(post) == []


async def test_refresh_credentials_and_limits(make_sandbox: MakeSandbox) -> None:
    """Credentials come back unchanged; the sandbox reports no limits of its own."""
    adapter = make_sandbox()

    assert await adapter.refresh_credentials({"token": "t"}) == {"token": "t"}
    assert adapter.limits() == base.PlatformLimits()


async def test_state_file_uses_wal(make_sandbox: MakeSandbox, state_path: Path) -> None:
    """The state file is in WAL mode, so a record survives the process being killed."""
    make_sandbox()

    with sqlite3.connect(state_path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_from_settings_uses_the_config_section(state_path: Path, clock: FakeClock) -> None:
    """from_settings carries the [sandbox] knobs over (here: every call fails)."""
    settings = SandboxSettings(latency_ms=0, failure_rate=1.0, seed=3)
    adapter = sandbox.SandboxAdapter.from_settings(settings, state_path, clock)

    with pytest.raises(base.RetryableError):
        await adapter.publish(_post())
    await adapter.aclose()


async def test_closed_adapter_refuses_calls(make_sandbox: MakeSandbox) -> None:
    """After close() calls fail loudly; closing twice is fine."""
    adapter = make_sandbox()
    adapter.close()
    await adapter.aclose()

    with pytest.raises(RuntimeError, match="closed"):
        await adapter.publish(_post())
