"""The YouTube adapter in front of its loopback fake, for the contract suite (conftest.py) and
test_youtube.py: credentials as the connect flow stores them, progress in memory, videos served
by the fake and fetched through the daemon's own fetcher."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from adapters import _progress, base, youtube, youtube_oauth
from daemon.clock import FakeClock
from tests.contract.conftest import PAGE, TIMEOUTS, Harness, MemoryCredentials, fetcher
from tests.fakes import youtube as fake_yt

# An MP4 ("ftyp" at offset 4) of a given size; small ones fit one chunk.
MP4_HEAD = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom"


def video_bytes(size: int = 4096) -> bytes:
    body = bytes(i % 251 for i in range(max(size - len(MP4_HEAD), 0)))
    return MP4_HEAD + body


def credentials_for(fake: fake_yt.FakeYouTube, channel: dict[str, Any]) -> dict[str, str]:
    """What ``page connect youtube`` stores for ``channel`` (a fresh token pair)."""
    issued = fake.issue(channel)
    creds = youtube_oauth.token_credentials(issued, fake.now())
    return {**creds, "channel_id": channel["id"], "channel_title": channel["title"]}


def adapter_for(
    fake: fake_yt.FakeYouTube,
    store: Any,
    progress: _progress.ProgressStore,
    clock: FakeClock,
    **options: Any,
) -> youtube.YouTubeAdapter:
    return youtube.YouTubeAdapter(
        store,
        progress,
        now=clock.now,
        app=youtube_oauth.OAuthApp(fake_yt.CLIENT_ID, fake_yt.CLIENT_SECRET),
        fetch_media=fetcher(),
        api_base=fake.base_url,
        timeouts=TIMEOUTS,
        **{"chunk_bytes": youtube.CHUNK_UNIT, **options},
    )


@dataclass
class YouTubeHarness(Harness):
    """A Harness whose posts carry a video unless given media (YouTube has no text posts),
    whose comments and texts come from the YouTube fake."""

    progress: _progress.MemoryProgress = field(default_factory=_progress.MemoryProgress)

    @property
    def yt(self) -> fake_yt.FakeYouTube:
        assert isinstance(self.fake, fake_yt.FakeYouTube)
        return self.fake

    def video_url(self, name: str = "clip.mp4", size: int = 4096) -> str:
        return self.yt.serve_file(name, video_bytes(size), "video/mp4")

    def image_url(self) -> str:  # the contract's "image post" is a video here
        return self.video_url()

    def post(
        self, message: str | None = "Hello from postd", *media: str, post_id: str = "post_1"
    ) -> base.PostPayload:
        urls = media or (self.video_url(),)
        items = tuple(base.MediaItem(url, "video") for url in urls)
        return base.PostPayload(post_id, PAGE, self.platform, message, media=items)

    def text_post(self, message: str, post_id: str = "post_1") -> base.PostPayload:
        return base.PostPayload(post_id, PAGE, self.platform, message)

    def someone_comments(self, remote_id: str, text: str) -> str:
        return str(self.yt.add_comment(remote_id, text, self.yt.bob)["id"])

    def published_texts(self) -> list[str]:
        return self.yt.descriptions()

    @contextlib.asynccontextmanager
    async def second_process(self, **options: Any) -> AsyncIterator[youtube.YouTubeAdapter]:
        """Another adapter on the same stores, as after a daemon restart (nothing cached)."""
        adapter = adapter_for(self.yt, self.store, self.progress, self.clock, **options)
        try:
            yield adapter
        finally:
            await adapter.aclose()


async def youtube_harness(clock: FakeClock, **options: Any) -> YouTubeHarness:
    fake = fake_yt.FakeYouTube(clock.now)
    await fake.start()
    store = MemoryCredentials({PAGE: credentials_for(fake, fake.alice)})
    progress = _progress.MemoryProgress()
    adapter = adapter_for(fake, store, progress, clock, **options)
    return YouTubeHarness("youtube", adapter, clock, fake, store, progress=progress)
