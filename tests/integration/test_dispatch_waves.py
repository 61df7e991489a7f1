"""Under load the finisher claims the next wave in the transaction that records the last one."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from daemon.dispatch import claim, finisher
from tests.conftest import make_settings
from tests.support import run_until_idle, seed, states, terminal_events


def spy_claims(monkeypatch: pytest.MonkeyPatch, *, fail_in_finisher: bool = False) -> list[Any]:
    """Record (who claimed, how many) for each claim that found posts; optionally make the
    finisher's claims fail."""
    calls: list[Any] = []
    writing = [False]
    real_claim, real_write = claim.claim, finisher.Finisher._write

    async def spied_claim(*args: Any, **kwargs: Any) -> claim.ClaimResult:
        who = "finisher" if writing[0] else "pump"
        if fail_in_finisher and writing[0]:
            raise RuntimeError("claim failed")
        result = await real_claim(*args, **kwargs)
        if result.claimed:
            calls.append((who, len(result.claimed)))
        return result

    async def spied_write(self: finisher.Finisher, outcomes: Any) -> Any:
        writing[0] = True
        try:
            return await real_write(self, outcomes)
        finally:
            writing[0] = False

    monkeypatch.setattr(claim, "claim", spied_claim)
    monkeypatch.setattr(finisher.Finisher, "_write", spied_write)
    return calls


async def twelve_posts(tmp_path: Path, db_url: str, app_factory: Any) -> tuple[Any, list[str]]:
    settings = make_settings(tmp_path, db_url, dispatch={"concurrency": 4, "batch_size": 50})
    app = await app_factory(settings)
    seeded = await seed(
        app,
        brands=1,
        pages_per_brand=12,
        posts_per_page=1,
        start=app.clock.now() + timedelta(minutes=5),
        spread_seconds=0,
    )
    app.clock.advance(timedelta(minutes=5))
    return app, seeded.posts


async def test_finisher_claims_the_freed_slots_in_its_transaction(
    tmp_path: Path, db_url: str, app_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the first wave, each wave is claimed by the finisher as it records the last."""
    calls = spy_claims(monkeypatch)
    app, posts = await twelve_posts(tmp_path, db_url, app_factory)

    await run_until_idle(app)

    assert await states(app) == Counter({"published": 12})
    assert calls == [("pump", 4), ("finisher", 4), ("finisher", 4)]
    events = await terminal_events(app)
    assert set(events) == set(posts) and set(events.values()) == {1}


async def test_failed_claim_in_the_finisher_keeps_the_outcomes(
    tmp_path: Path, db_url: str, app_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim that fails in the finisher's transaction loses no outcome; the pump claims."""
    calls = spy_claims(monkeypatch, fail_in_finisher=True)
    app, posts = await twelve_posts(tmp_path, db_url, app_factory)

    with capture_logs() as logs:
        await run_until_idle(app)

    assert await states(app) == Counter({"published": 12})
    assert calls == [("pump", 4), ("pump", 4), ("pump", 4)]
    assert "dispatch_claim_failed" in [entry["event"] for entry in logs]
    events = await terminal_events(app)
    assert set(events) == set(posts) and set(events.values()) == {1}
