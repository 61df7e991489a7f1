"""The TikTok adapter in front of its loopback fake, for the contract suite (conftest.py) and
test_tiktok.py: credentials as the connect flow stores them, progress in memory, polls through
an injected sleep, small chunks so that a 10 kB video goes in two."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from adapters import _progress, base, tiktok, tiktok_api
from daemon.clock import FakeClock
from tests.contract.conftest import PAGE, TIMEOUTS, Harness, MemoryCredentials, Slept, fetcher
from tests.fakes import tiktok as fake_tiktok

JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 64
CHUNK = 4096
MIN_CHUNK = 2048


def credentials_for(fake: fake_tiktok.FakeTikTok) -> dict[str, str]:
    """What ``page connect tiktok`` stores (a fresh token pair from the fake)."""
    creds = tiktok_api.token_credentials(fake.issue(), fake.now())
    return {**creds, "display_name": "Alice"}


@dataclass
class TikTokHarness(Harness):
    """A Harness whose posts carry a video unless given media (TikTok has no text-only
    posts), public by default so that they are listed; photos are JPEG."""

    progress: _progress.MemoryProgress = field(default_factory=_progress.MemoryProgress)
    slept: Slept | None = None

    @property
    def tiktok(self) -> fake_tiktok.FakeTikTok:
        assert isinstance(self.fake, fake_tiktok.FakeTikTok)
        return self.fake

    def video_url(self, name: str = "clip.mp4", seconds: int = 12, size: int = 10_000) -> str:
        return self.tiktok.serve_file(name, fake_tiktok.make_mp4(seconds, size), "video/mp4")

    def image_url(self) -> str:
        return self.tiktok.serve_file("cat.jpg", JPEG, "image/jpeg")

    def post(
        self,
        message: str | None = "Hello from postd",
        *media: str,
        post_id: str = "post_1",
        privacy: str = "PUBLIC_TO_EVERYONE",
        **settings: Any,
    ) -> base.PostPayload:
        items = tuple(
            base.MediaItem(url, "video" if url.endswith(".mp4") else "photo") for url in media
        ) or (base.MediaItem(self.video_url(), "video"),)
        options = {"tiktok_settings": {"privacy_level": privacy, **settings}}
        return base.PostPayload(post_id, PAGE, "tiktok", message, media=items, options=options)

    def text_post(self, message: str, post_id: str = "post_1") -> base.PostPayload:
        return base.PostPayload(post_id, PAGE, "tiktok", message)

    def published_texts(self) -> list[str]:
        return self.tiktok.posted_titles()


def adapter_for(
    fake: fake_tiktok.FakeTikTok,
    store: Any,
    progress: _progress.ProgressStore,
    clock: FakeClock,
    sleep: Slept,
    **options: Any,
) -> tiktok.TikTokAdapter:
    return tiktok.TikTokAdapter(
        store,
        progress,
        now=clock.now,
        app=tiktok_api.OAuthApp(fake_tiktok.CLIENT_KEY, fake_tiktok.CLIENT_SECRET),
        fetch_media=fetcher(),
        api_base=fake.base_url,
        timeouts=TIMEOUTS,
        sleep=sleep,
        media_poll_seconds=1.0,
        media_poll_max_seconds=5.0,
        chunk_bytes=CHUNK,
        min_chunk_bytes=MIN_CHUNK,
        public_media_only=False,
        **options,
    )


async def tiktok_harness(clock: FakeClock, **fake_options: Any) -> TikTokHarness:
    fake = fake_tiktok.FakeTikTok(clock.now, **fake_options)
    await fake.start()
    store = MemoryCredentials({PAGE: credentials_for(fake)})
    progress, slept = _progress.MemoryProgress(), Slept(clock)
    adapter = adapter_for(fake, store, progress, clock, slept)
    return TikTokHarness("tiktok", adapter, clock, fake, store, progress=progress, slept=slept)
