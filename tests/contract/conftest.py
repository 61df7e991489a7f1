"""Harnesses that put every adapter in front of its platform: the sandbox as is, Mastodon and
Bluesky in front of their loopback fakes, with credentials in memory and media fetched from the
fake through the daemon's own (SSRF-guarded) fetcher, loopback allowed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from adapters import _http, base, bluesky, mastodon, sandbox
from daemon import netguard
from daemon.app import MediaFetcher
from daemon.clock import FakeClock
from tests.fakes._server import FakePlatform
from tests.fakes.bluesky import FakeBluesky
from tests.fakes.mastodon import FakeMastodon
from tests.fakes.tiktok import make_mp4
from tests.fakes.x import FakeX  # X (issue 5)

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
PAGE = "page_1"
TIMEOUTS = _http.Timeouts(connect=2, read=0.5, write=2, pool=2)


class MemoryCredentials:
    """A credential store in memory; counts saves."""

    def __init__(self, pages: Mapping[str, Mapping[str, str]] | None = None) -> None:
        self.pages = {k: dict(v) for k, v in (pages or {}).items()}
        self.saved: list[tuple[str, dict[str, str]]] = []

    async def load(self, page_id: str) -> Mapping[str, str]:
        if page_id not in self.pages:
            raise base.AuthError("not connected", code="NOT_CONNECTED")
        return dict(self.pages[page_id])

    async def save(self, page_id: str, credentials: Mapping[str, str]) -> None:
        self.pages[page_id] = dict(credentials)
        self.saved.append((page_id, dict(credentials)))


def fetcher() -> MediaFetcher:
    return MediaFetcher(netguard.Policy(allow_loopback=True, allow_http=True), 5)


class Slept:
    """An injected sleep that only records (and moves the fake clock)."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock, self.waits = clock, list[float]()

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.clock.advance(seconds)


@dataclass
class Harness:
    """One adapter and its platform, seen the same way by the contract tests."""

    platform: str
    adapter: Any
    clock: FakeClock
    fake: FakePlatform | None = None
    store: MemoryCredentials = field(default_factory=MemoryCredentials)
    sandbox: sandbox.SandboxAdapter | None = None

    def post(
        self, message: str | None = "Hello from postd", *media: str, post_id: str = "post_1"
    ) -> base.PostPayload:
        items = tuple(base.MediaItem(url, "photo") for url in media)
        return base.PostPayload(post_id, PAGE, self.platform, message, media=items)

    def image_url(self) -> str:
        if self.fake is None:
            return "https://media.example/cat.png"
        return self.fake.serve_file("cat.png", PNG, "image/png")

    def video_url(self) -> str:
        """A short MP4 (12 s) served by the platform's fake (fetched or pulled from there)."""
        if self.fake is None:
            return "https://media.example/clip.mp4"
        return self.fake.serve_file("clip.mp4", make_mp4(12, 10_000), "video/mp4")

    def video_post(self, message: str = "A clip", post_id: str = "post_1") -> base.PostPayload:
        item = base.MediaItem(self.video_url(), "video", "video/mp4")
        return base.PostPayload(post_id, PAGE, self.platform, message, media=(item,))

    def mark(self) -> int:
        return len(self.fake.requests) if self.fake else 0

    def routes(self, since: int = 0) -> list[str]:
        """Route names the adapter called since ``mark`` (media downloads left out)."""
        if self.fake is None:
            return []
        return [r.route for r in self.fake.requests[since:] if r.route != "file"]

    def someone_comments(self, remote_id: str, text: str) -> str:
        if isinstance(self.fake, FakeMastodon):
            bob = self.fake.add_account("token-bob", "bob", "Bob")
            return str(self.fake.add_reply(remote_id, text, bob)["id"])
        if isinstance(self.fake, FakeBluesky):
            return str(self.fake.add_reply(remote_id, text, "bob.test")["uri"])
        if isinstance(self.fake, FakeX):  # X (issue 5)
            return str(self.fake.add_reply(remote_id, text, self.fake.bob)["id"])
        assert self.sandbox is not None
        return self.sandbox.add_comment(remote_id, text).id

    def published_texts(self) -> list[str]:
        if isinstance(self.fake, FakeMastodon):
            return [s["_text"] for s in self.fake.statuses if s["in_reply_to_id"] is None]
        if isinstance(self.fake, FakeBluesky):
            return [r["value"]["text"] for r in self.fake.records if "reply" not in r["value"]]
        if isinstance(self.fake, FakeX):  # X (issue 5)
            return self.fake.root_texts()
        assert self.sandbox is not None
        return [r.message or "" for r in self.sandbox.published_records()]


async def mastodon_harness(clock: FakeClock, **fake_options: Any) -> Harness:
    fake = FakeMastodon(clock.now, **fake_options)
    await fake.start()
    store = MemoryCredentials(
        {
            PAGE: {
                "instance": fake.base_url,
                "access_token": "token-alice",
                "account_id": fake.alice["id"],
                "acct": "alice",
            }
        }
    )
    adapter = mastodon.MastodonAdapter(
        store,
        now=clock.now,
        fetch_media=fetcher(),
        timeouts=TIMEOUTS,
        sleep=Slept(clock),
        media_poll_seconds=1.0,
        media_poll_max_seconds=5.0,
    )
    return Harness("mastodon", adapter, clock, fake, store)


async def bluesky_harness(clock: FakeClock, **fake_options: Any) -> Harness:
    fake = FakeBluesky(clock.now, **fake_options)
    await fake.start()
    connected = await bluesky.connect("alice.test", "app-pass-1234", api_base=fake.base_url)
    fake.requests.clear()  # the login is the CLI's, not the adapter's
    store = MemoryCredentials({PAGE: connected.credentials})
    adapter = bluesky.BlueskyAdapter(
        store, now=clock.now, fetch_media=fetcher(), api_base=fake.base_url, timeouts=TIMEOUTS
    )
    return Harness("bluesky", adapter, clock, fake, store)


# --- X (issue 5) ------------------------------------------------------------------------------


async def x_harness(clock: FakeClock) -> Harness:
    from tests.contract import x_harness as xh

    fake = FakeX(clock.now)
    await fake.start()
    store = MemoryCredentials({PAGE: xh.credentials_for(fake, fake.alice)})
    return Harness("twitter", xh.adapter_for(fake, store, clock), clock, fake, store)


@pytest.fixture
async def xh(clock: FakeClock) -> AsyncIterator[Harness]:
    harness = await x_harness(clock)
    yield harness
    await _close(harness)
    assert isinstance(harness.fake, FakeX)
    assert harness.fake.violations == []  # every request conformed to X's OpenAPI document


# --- end X (issue 5) --------------------------------------------------------------------------


# --- Facebook and Instagram (Graph, issue 5) ---------------------------------------------------


@pytest.fixture
async def fb(clock: FakeClock) -> AsyncIterator[Harness]:
    from tests.contract import graph_harness

    harness = await graph_harness.facebook_harness(clock)
    yield harness
    await _close(harness)


@pytest.fixture
async def ig(clock: FakeClock) -> AsyncIterator[Harness]:
    from tests.contract import graph_harness

    harness = await graph_harness.instagram_harness(clock)
    yield harness
    await _close(harness)


# --- end Facebook and Instagram (Graph, issue 5) -----------------------------------------------


# --- LinkedIn (issue 5) ------------------------------------------------------------------------


@pytest.fixture
async def li(clock: FakeClock) -> AsyncIterator[Harness]:
    from tests.contract import linkedin_harness

    harness = await linkedin_harness.linkedin_harness(clock)
    yield harness
    await _close(harness)
    assert harness.fake is not None
    assert getattr(harness.fake, "violations", []) == []  # every /rest call was versioned


# --- end LinkedIn (issue 5) --------------------------------------------------------------------


# --- TikTok (issue 5) --------------------------------------------------------------------------


@pytest.fixture
async def tt(clock: FakeClock) -> AsyncIterator[Harness]:
    from tests.contract import tiktok_harness

    harness = await tiktok_harness.tiktok_harness(clock)
    yield harness
    await _close(harness)
    assert getattr(harness.fake, "violations", None) == []  # every request as TikTok documents


# --- end TikTok (issue 5) ----------------------------------------------------------------------


# --- YouTube (issue 5) -------------------------------------------------------------------------


@pytest.fixture
async def yt(clock: FakeClock) -> AsyncIterator[Harness]:
    from tests.contract import youtube_harness

    harness = await youtube_harness.youtube_harness(clock)
    yield harness
    await _close(harness)
    assert getattr(harness.fake, "violations", None) == []  # every upload as Google documents


# --- end YouTube (issue 5) ---------------------------------------------------------------------


def sandbox_harness(tmp_path: Path, clock: FakeClock) -> Harness:
    adapter = sandbox.SandboxAdapter(tmp_path / "sandbox.db", clock)
    return Harness("sandbox", adapter, clock, sandbox=adapter)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def _close(harness: Harness) -> None:
    await harness.adapter.aclose()
    if harness.fake is not None:
        await harness.fake.stop()


@pytest.fixture
async def masto(clock: FakeClock) -> AsyncIterator[Harness]:
    harness = await mastodon_harness(clock)
    yield harness
    await _close(harness)


@pytest.fixture
async def sky(clock: FakeClock) -> AsyncIterator[Harness]:
    harness = await bluesky_harness(clock)
    yield harness
    await _close(harness)


@pytest.fixture(
    params=[
        "sandbox",
        "mastodon",
        "bluesky",
        "twitter",
        "facebook",
        "instagram",
        "linkedin",  # LinkedIn (issue 5)
        "tiktok",  # TikTok (issue 5)
        "youtube",  # YouTube (issue 5)
    ]
)
async def harness(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[Harness]:
    if request.param == "sandbox":
        made = sandbox_harness(tmp_path, clock)
    elif request.param == "mastodon":
        made = await mastodon_harness(clock)
    elif request.param == "twitter":  # X (issue 5)
        made = await x_harness(clock)
    elif request.param in ("facebook", "instagram"):  # Graph (issue 5)
        from tests.contract import graph_harness

        made = await graph_harness.HARNESSES[request.param](clock)
    elif request.param == "linkedin":  # LinkedIn (issue 5)
        from tests.contract import linkedin_harness

        made = await linkedin_harness.linkedin_harness(clock)
    elif request.param == "tiktok":  # TikTok (issue 5)
        from tests.contract import tiktok_harness

        made = await tiktok_harness.tiktok_harness(clock)
    elif request.param == "youtube":  # YouTube (issue 5)
        from tests.contract import youtube_harness

        made = await youtube_harness.youtube_harness(clock)
    else:
        made = await bluesky_harness(clock)
    yield made
    await _close(made)
    if isinstance(made.fake, FakeX):  # X (issue 5): every request conformed to the OpenAPI doc
        assert made.fake.violations == []
    if made.platform == "linkedin":  # LinkedIn (issue 5): every /rest call was versioned
        assert getattr(made.fake, "violations", None) == []
    if made.platform == "youtube":  # YouTube (issue 5): every upload as Google documents
        assert getattr(made.fake, "violations", None) == []
