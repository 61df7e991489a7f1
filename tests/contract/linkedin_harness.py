"""The LinkedIn adapter in front of its loopback fake, for the contract suite (conftest.py) and
test_linkedin.py: credentials as the connect flow stores them, progress in memory, polls
through an injected sleep."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from adapters import _progress, linkedin, linkedin_auth
from daemon.clock import FakeClock
from tests.contract.conftest import PAGE, TIMEOUTS, Harness, MemoryCredentials, Slept, fetcher
from tests.fakes import linkedin as fake_li


@dataclass
class LinkedInHarness(Harness):
    progress: _progress.MemoryProgress = field(default_factory=_progress.MemoryProgress)
    slept: Slept | None = None

    @property
    def li(self) -> fake_li.FakeLinkedIn:
        assert isinstance(self.fake, fake_li.FakeLinkedIn)
        return self.fake

    def someone_comments(self, remote_id: str, text: str) -> str:
        return self.li.add_comment(remote_id, text, self.li.bob)

    def published_texts(self) -> list[str]:
        return self.li.root_texts()


def credentials_for(fake: fake_li.FakeLinkedIn, member: dict[str, Any]) -> dict[str, str]:
    """What ``page connect linkedin`` stores for ``member`` (fresh tokens from the fake)."""
    creds = linkedin_auth.token_credentials(fake.issue(member), fake.now())
    return {**creds, "author": member["urn"], "name": member["name"]}


def adapter_for(
    fake: fake_li.FakeLinkedIn, store: Any, clock: FakeClock, **options: Any
) -> linkedin.LinkedInAdapter:
    return linkedin.LinkedInAdapter(
        store,
        options.pop("progress", None) or _progress.MemoryProgress(),
        now=clock.now,
        app=linkedin_auth.OAuthApp(fake_li.CLIENT_ID, fake_li.CLIENT_SECRET),
        fetch_media=fetcher(),
        api_base=fake.base_url + "/rest",
        timeouts=TIMEOUTS,
        **options,
    )


async def linkedin_harness(clock: FakeClock, **fake_options: Any) -> LinkedInHarness:
    fake = fake_li.FakeLinkedIn(clock.now, **fake_options)
    await fake.start()
    store = MemoryCredentials({PAGE: credentials_for(fake, fake.alice)})
    progress, slept = _progress.MemoryProgress(), Slept(clock)
    adapter = adapter_for(
        fake,
        store,
        clock,
        progress=progress,
        sleep=slept,
        media_poll_seconds=1.0,
        media_poll_max_seconds=5.0,
    )
    return LinkedInHarness("linkedin", adapter, clock, fake, store, progress=progress, slept=slept)
