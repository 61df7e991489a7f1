"""The X adapter in front of its loopback fake, for the contract suite (conftest.py) and
test_x.py: credentials as the connect flow stores them, in memory."""

from __future__ import annotations

from typing import Any

from adapters import x
from daemon.clock import FakeClock
from tests.fakes import x as fake_x

VIDEO_CHUNK = 4096  # small chunks: the 10,000-byte test MP4 goes in three appends


def credentials_for(fake: fake_x.FakeX, user: dict[str, Any]) -> dict[str, str]:
    """What ``page connect x`` stores for ``user`` (a fresh token pair from the fake)."""
    issued = fake.issue(user)
    creds = x.token_credentials(issued, fake.now())
    return {**creds, "user_id": user["id"], "username": user["username"]}


def adapter_for(fake: fake_x.FakeX, store: Any, clock: FakeClock, **options: Any) -> x.XAdapter:
    from tests.contract.conftest import TIMEOUTS, Slept, fetcher

    defaults: dict[str, Any] = {
        "sleep": Slept(clock),  # media-processing polls: recorded, the fake clock moves
        "media_poll_seconds": 1.0,
        "media_poll_max_seconds": 30.0,
        "video_chunk_bytes": VIDEO_CHUNK,
    }
    return x.XAdapter(
        store,
        now=clock.now,
        app=x.OAuthApp(fake_x.CLIENT_ID, fake_x.CLIENT_SECRET),
        fetch_media=fetcher(),
        api_base=fake.base_url,
        timeouts=TIMEOUTS,
        **(defaults | options),
    )
