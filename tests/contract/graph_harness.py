"""Facebook Pages and Instagram in front of the one Graph fake, for the contract suite
(conftest.py), test_facebook.py and test_instagram.py: credentials in memory, progress in memory,
polls through an injected sleep, private (loopback) media URLs allowed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from adapters import _progress, base, facebook, instagram
from daemon.clock import FakeClock
from tests.contract.conftest import PAGE, TIMEOUTS, Harness, MemoryCredentials, Slept
from tests.fakes import graph


@dataclass
class GraphHarness(Harness):
    """A Harness whose Instagram posts carry a photo unless given media (there are no
    text-only Instagram posts), and whose comments and texts come from the Graph fake."""

    progress: _progress.MemoryProgress = field(default_factory=_progress.MemoryProgress)
    slept: Slept | None = None

    @property
    def graph(self) -> graph.FakeGraph:
        assert isinstance(self.fake, graph.FakeGraph)
        return self.fake

    def post(
        self, message: str | None = "Hello from postd", *media: str, post_id: str = "post_1"
    ) -> base.PostPayload:
        if self.platform == "instagram" and not media:
            media = (self.image_url(),)
        return super().post(message, *media, post_id=post_id)

    def text_post(self, message: str, post_id: str = "post_1") -> base.PostPayload:
        return base.PostPayload(post_id, PAGE, self.platform, message)

    def someone_comments(self, remote_id: str, text: str) -> str:
        return self.graph.add_comment(remote_id, text)

    def published_texts(self) -> list[str]:
        return self.graph.root_texts(self.platform)


async def facebook_harness(clock: FakeClock, **fake_options: Any) -> GraphHarness:
    fake = graph.FakeGraph(clock.now, **fake_options)
    await fake.start()
    store = MemoryCredentials({PAGE: {"access_token": graph.PAGE_TOKEN, "page_id": graph.PAGE_ID}})
    slept = Slept(clock)
    adapter = facebook.FacebookAdapter(
        store,
        now=clock.now,
        api_base=fake.base_url + graph.PREFIX,
        timeouts=TIMEOUTS,
        public_media_only=False,
        sleep=slept,
        media_poll_seconds=1.0,
        media_poll_max_seconds=5.0,
    )
    return GraphHarness("facebook", adapter, clock, fake, store, slept=slept)


async def instagram_harness(clock: FakeClock, **fake_options: Any) -> GraphHarness:
    fake = graph.FakeGraph(clock.now, **fake_options)
    await fake.start()
    store = MemoryCredentials(
        {PAGE: {"access_token": graph.IG_TOKEN, "ig_user_id": graph.IG_USER_ID}}
    )
    progress, slept = _progress.MemoryProgress(), Slept(clock)
    adapter = instagram.InstagramAdapter(
        store,
        progress,
        now=clock.now,
        api_base=fake.base_url + graph.PREFIX,
        timeouts=TIMEOUTS,
        sleep=slept,
        media_poll_seconds=1.0,
        media_poll_max_seconds=5.0,
        public_media_only=False,
    )
    return GraphHarness("instagram", adapter, clock, fake, store, progress=progress, slept=slept)


HARNESSES = {"facebook": facebook_harness, "instagram": instagram_harness}
