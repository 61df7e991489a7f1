"""The adapter contract: every implementation passes the same cases; the error tree is stable.

To add an adapter, append a factory to ``ADAPTER_FACTORIES``: it gets a temp directory and a
FakeClock and returns an adapter that can publish with no network (mock its transport).
"""

from __future__ import annotations

import pickle
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from adapters import base, sandbox
from daemon.clock import FakeClock

AdapterFactory = Callable[[Path, FakeClock], base.Adapter]


def _sandbox(tmp_path: Path, clock: FakeClock) -> base.Adapter:
    return sandbox.SandboxAdapter(tmp_path / "sandbox.db", clock)


ADAPTER_FACTORIES: list[AdapterFactory] = [_sandbox]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=ADAPTER_FACTORIES, ids=lambda factory: factory.__name__.strip("_"))
async def adapter(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[base.Adapter]:
    built: base.Adapter = request.param(tmp_path, clock)
    yield built
    await built.aclose()


def _post(adapter: base.Adapter, message: str | None = "Contract test post") -> base.PostPayload:
    return base.PostPayload(
        post_id="post_1", page_id="page_1", platform=adapter.platform, message=message
    )


# --- every adapter --------------------------------------------------------------------------


async def test_is_an_adapter(adapter: base.Adapter) -> None:
    """The implementation satisfies the runtime-checkable Adapter protocol."""
    assert isinstance(adapter, base.Adapter)
    assert isinstance(adapter.platform, str)
    assert adapter.platform


async def test_publish_then_find_published_returns_the_same_remote_id(
    adapter: base.Adapter, clock: FakeClock
) -> None:
    """What publish returned, find_published finds again by content."""
    since = clock.now() - timedelta(minutes=1)
    published = await adapter.publish(_post(adapter))

    found = await adapter.find_published(_post(adapter), since)

    assert found is not None
    assert found.remote_id == published.remote_id
    assert published.published_at.utcoffset() == timedelta(0)


async def test_find_published_ignores_excluded_remote_ids(
    adapter: base.Adapter, clock: FakeClock
) -> None:
    """A remote id already attributed elsewhere is never returned."""
    since = clock.now() - timedelta(minutes=1)
    published = await adapter.publish(_post(adapter))

    found = await adapter.find_published(_post(adapter), since, frozenset({published.remote_id}))

    assert found is None


async def test_validate_rejects_an_empty_post(adapter: base.Adapter) -> None:
    """A post with neither text nor media is refused, with a reason."""
    assert adapter.validate(_post(adapter, message=None)) != []


async def test_validate_accepts_a_plain_text_post(adapter: base.Adapter) -> None:
    """A short text post is publishable."""
    assert adapter.validate(_post(adapter)) == []


async def test_limits_is_platform_limits(adapter: base.Adapter) -> None:
    """limits() answers without I/O, with unknowns as None."""
    assert isinstance(adapter.limits(), base.PlatformLimits)


# --- the error tree -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (base.RetryableError(), "retryable"),
        (base.AmbiguousError(), "ambiguous"),
        (base.PermanentError(), "permanent"),
        (base.AuthError(), "auth"),
        (base.UnsupportedAction(), "unsupported"),
        (base.AdapterError(), "unknown"),
        (TimeoutError(), "unknown"),
    ],
)
def test_error_class_maps_each_error_type(error: BaseException, expected: str) -> None:
    """error_class names the attempt log's class; unclassified errors are 'unknown'."""
    assert base.error_class(error) == expected


@pytest.mark.parametrize(
    ("error_type", "code"),
    [
        (base.AdapterError, "ADAPTER_ERROR"),
        (base.RetryableError, "TRANSIENT"),
        (base.AmbiguousError, "AMBIGUOUS"),
        (base.PermanentError, "PERMANENT"),
        (base.AuthError, "AUTH_EXPIRED"),
        (base.UnsupportedAction, "UNSUPPORTED"),
    ],
)
def test_each_error_has_a_default_code(error_type: type[base.AdapterError], code: str) -> None:
    """Without a code the class default is used, and the message defaults to it."""
    error = error_type()

    assert (error.code, error.http_status, error.excerpt) == (code, None, None)
    assert str(error) == code


def test_error_context_travels_as_attributes() -> None:
    """Keyword arguments land on attributes; the excerpt is cut to 500 characters."""
    error = base.RetryableError(
        "slow down", code="RATE_LIMITED", retry_after=30, http_status=429, excerpt="x" * 900
    )

    assert str(error) == "slow down"
    assert (error.code, error.retry_after, error.http_status) == ("RATE_LIMITED", 30.0, 429)
    assert error.excerpt == "x" * 500


def test_retry_after_accepts_timedelta_and_never_goes_negative() -> None:
    """retry_after is seconds as a float, clamped at zero."""
    assert base.RetryableError(retry_after=timedelta(minutes=2)).retry_after == 120.0
    assert base.RetryableError(retry_after=-3).retry_after == 0.0
    assert base.RetryableError().retry_after is None


def test_errors_survive_pickling() -> None:
    """Errors keep their attributes across a process boundary."""
    error = base.AuthError("token revoked", code="OAUTH_190", http_status=401, excerpt="{}")

    copy = pickle.loads(pickle.dumps(error))

    assert type(copy) is base.AuthError
    assert (copy.code, copy.http_status, copy.excerpt, str(copy)) == (
        "OAUTH_190",
        401,
        "{}",
        "token revoked",
    )


# --- values ---------------------------------------------------------------------------------


def test_fingerprint_normalizes_whitespace_and_includes_media() -> None:
    """Same text modulo whitespace and same media give one fingerprint; media changes it."""

    def post(message: str | None, *urls: str) -> base.PostPayload:
        media = tuple(base.MediaItem(url, "photo") for url in urls)
        return base.PostPayload("p", "pg", "sandbox", message, media=media)

    assert post("  hello \n\t world ").fingerprint() == post("hello world").fingerprint()
    assert post("hello world", "https://a").fingerprint() != post("hello world").fingerprint()
    assert post(None, "https://a", "https://b").fingerprint() != (
        post(None, "https://b", "https://a").fingerprint()
    )
    assert post(None).fingerprint() == post("").fingerprint()
    assert post("hello").fingerprint() == (
        "05b73c42e5487b4c5ce4819cfa9a463d689223f140d20b781f00c3fde3d3c31b"
    )


def test_payload_repr_hides_credentials() -> None:
    """Credentials never show up in a repr (and so never in a log line)."""
    post = base.PostPayload("p", "pg", "sandbox", "hi", credentials={"token": "s3cret"})

    assert "s3cret" not in repr(post)


def test_published_at_is_normalized_to_utc() -> None:
    """Published accepts any aware time, stores UTC, and refuses naive times."""
    paris = datetime(2026, 1, 5, 10, 0, tzinfo=timezone(timedelta(hours=1)))

    assert base.Published("r", None, paris).published_at == datetime(2026, 1, 5, 9, tzinfo=UTC)
    with pytest.raises(ValueError, match="timezone-aware"):
        base.Published("r", None, datetime(2026, 1, 5, 9))
