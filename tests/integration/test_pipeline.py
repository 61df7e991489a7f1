"""The publish pipeline against scripted platform faults: each failure class ends in the right
state, with the right attempt log and events, and never publishes twice."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from adapters import base
from daemon import services
from tests.conftest import make_settings
from tests.fakes.scripted import (
    AMBIGUOUS_AFTER,
    AMBIGUOUS_BEFORE,
    GATED,
    HANG,
    ScriptedAdapter,
)
from tests.support import run_until_idle, seed, terminal_events

Fault = base.RetryableError


async def make(
    tmp_path: Path, app_factory: Any, script: list[Any], db_url: str = "", **sections: Any
) -> Any:
    sections.setdefault("retry", {}).setdefault("inline_max_wait_seconds", 10)
    url = db_url or f"sqlite:///{tmp_path / 'postd.db'}"
    settings = make_settings(tmp_path, url, **sections)
    adapter = ScriptedAdapter(tmp_path / "platform.db", None, script)
    app = await app_factory(settings, adapters={"sandbox": adapter})
    adapter._clock = app.clock
    return app


async def one_post(app: Any, minutes: float = 15) -> str:
    seeded = await seed(
        app,
        brands=1,
        pages_per_brand=1,
        posts_per_page=1,
        start=app.clock.now() + timedelta(minutes=minutes),
        spread_seconds=0,
    )
    return seeded.posts[0]


async def record(app: Any, post_id: str) -> dict[str, Any]:
    async with app.sessions() as session:
        (found,) = [p for p in await services.list_posts(session) if p["id"] == post_id]
        return found


def outcomes(post: dict[str, Any]) -> list[str]:
    return [a["outcome"] for a in post["attempts"]]


async def test_short_transient_error_is_retried_inline(tmp_path: Path, app_factory: Any) -> None:
    """A 503 that provably did not publish is retried in the worker; both tries are logged."""
    app = await make(tmp_path, app_factory, [Fault("down", code="HTTP_503", http_status=503)])
    post_id = await one_post(app)
    await run_until_idle(app)
    post = await record(app, post_id)
    assert post["status"] == "published"
    assert outcomes(post) == ["retry", "published"]
    assert post["attempts"][0]["http_status"] == 503
    assert [a["number"] for a in post["attempts"]] == [1, 2]
    assert len(app.adapters["sandbox"].published_records()) == 1


async def test_long_retry_after_goes_back_to_scheduled(tmp_path: Path, app_factory: Any) -> None:
    """A 429 with Retry-After 600 s reschedules (not_before) instead of sleeping in a worker."""
    app = await make(
        tmp_path,
        app_factory,
        [Fault("slow down", code="RATE_LIMITED", http_status=429, retry_after=600)],
    )
    post_id = await one_post(app)
    app.clock.advance(timedelta(minutes=15))
    await app.dispatcher.drain()
    post = await record(app, post_id)
    assert post["status"] == "scheduled"
    assert post["not_before"] == "2026-01-05T09:25:00.000Z"
    assert post["last_error"]["code"] == "RATE_LIMITED"
    await run_until_idle(app)
    post = await record(app, post_id)
    assert post["status"] == "published" and post["published_at"] == "2026-01-05T09:25:00.000Z"
    assert outcomes(post) == ["retry", "published"]


async def test_permanent_error_fails_at_once_with_the_platform_code(
    tmp_path: Path, app_factory: Any
) -> None:
    """A permanent error fails the post at once with the platform's code, status and excerpt."""
    error = base.PermanentError(
        "duplicate status",
        code="DUPLICATE_CONTENT",
        http_status=403,
        excerpt='{"error":"duplicate"}',
    )
    app = await make(tmp_path, app_factory, [error])
    post_id = await one_post(app)
    await run_until_idle(app)
    post = await record(app, post_id)
    assert post["status"] == "failed"
    assert post["error"] == {"code": "DUPLICATE_CONTENT", "message": "duplicate status"}
    (attempt,) = post["attempts"]
    assert (attempt["outcome"], attempt["error_class"], attempt["http_status"]) == (
        "failed",
        "permanent",
        403,
    )
    assert attempt["excerpt"] == '{"error":"duplicate"}'
    assert dict(await terminal_events(app)) == {post_id: 1}
    assert app.adapters["sandbox"].calls == 1


async def test_auth_error_fails_and_marks_the_page(tmp_path: Path, app_factory: Any) -> None:
    """Expired credentials: the post fails AUTH_EXPIRED and the page needs re-connecting."""
    app = await make(tmp_path, app_factory, [base.AuthError("token expired", http_status=401)])
    post_id = await one_post(app)
    await run_until_idle(app)
    post = await record(app, post_id)
    assert post["status"] == "failed" and post["error"]["code"] == "AUTH_EXPIRED"
    async with app.sessions() as session:
        (page,) = (await services.status(session, app.settings, app.clock.now()))["pages"]
    assert page["status"] == "needs_reauth"


async def test_unclassified_exception_is_permanent(tmp_path: Path, app_factory: Any) -> None:
    """An exception nobody classified fails the post (ADAPTER_ERROR) rather than retrying."""
    app = await make(tmp_path, app_factory, [ValueError("unexpected shape")])
    post_id = await one_post(app)
    await run_until_idle(app)
    post = await record(app, post_id)
    assert post["status"] == "failed" and post["error"]["code"] == "ADAPTER_ERROR"
    assert app.adapters["sandbox"].calls == 1


async def test_retries_exhausted(tmp_path: Path, app_factory: Any) -> None:
    """After max_attempts transient failures the post fails with RETRIES_EXHAUSTED."""
    script = [Fault("down", code="HTTP_503", http_status=503) for _ in range(3)]
    app = await make(tmp_path, app_factory, script, retry={"max_attempts": 3})
    post_id = await one_post(app)
    await run_until_idle(app)
    post = await record(app, post_id)
    assert post["status"] == "failed" and post["error"]["code"] == "RETRIES_EXHAUSTED"
    assert outcomes(post) == ["retry", "retry", "failed"]
    assert app.adapters["sandbox"].published_records() == []


async def test_ambiguous_after_accept_is_reconciled_not_republished(
    tmp_path: Path, app_factory: Any
) -> None:
    """A 502 after the platform accepted: find_published finds it; one call, one record."""
    app = await make(tmp_path, app_factory, [AMBIGUOUS_AFTER])
    post_id = await one_post(app)
    await run_until_idle(app)
    post = await record(app, post_id)
    records = app.adapters["sandbox"].published_records()
    assert post["status"] == "published" and app.adapters["sandbox"].calls == 1
    assert [r.remote_id for r in records] == [post["remote_id"]]
    assert outcomes(post) == ["in_doubt>reconciled_published"]
    assert dict(await terminal_events(app)) == {post_id: 1}


async def test_ambiguous_that_never_landed_is_published_again(
    tmp_path: Path, app_factory: Any
) -> None:
    """A timeout where the platform has nothing: reconciliation finds nothing, it publishes once."""
    app = await make(tmp_path, app_factory, [AMBIGUOUS_BEFORE])
    post_id = await one_post(app)
    await run_until_idle(app)
    post = await record(app, post_id)
    assert post["status"] == "published" and app.adapters["sandbox"].calls == 2
    assert len(app.adapters["sandbox"].published_records()) == 1
    assert outcomes(post) == ["in_doubt>reconciled_absent", "published"]


@pytest.mark.parametrize(
    ("policy", "state", "calls"), [("fail", "failed", 1), ("retry", "published", 2)]
)
async def test_platform_that_cannot_tell_follows_the_in_doubt_policy(
    tmp_path: Path, app_factory: Any, policy: str, state: str, calls: int
) -> None:
    """When find_published is unsupported, in_doubt=fail fails PUBLISH_IN_DOUBT; retry retries."""
    app = await make(tmp_path, app_factory, [AMBIGUOUS_AFTER], publish={"in_doubt": policy})
    app.adapters["sandbox"].find_mode = "unsupported"
    post_id = await one_post(app)
    await run_until_idle(app)
    post = await record(app, post_id)
    assert post["status"] == state and app.adapters["sandbox"].calls == calls
    if policy == "fail":
        assert post["error"]["code"] == "PUBLISH_IN_DOUBT"
    assert dict(await terminal_events(app)) == {post_id: 1}


async def test_reconciliation_waits_when_the_platform_cannot_be_asked(
    tmp_path: Path, app_factory: Any
) -> None:
    """If listing fails, the post stays in doubt and is asked about again later, never re-sent."""
    app = await make(tmp_path, app_factory, [AMBIGUOUS_AFTER])
    adapter = app.adapters["sandbox"]
    adapter.find_mode = "error"
    post_id = await one_post(app)
    app.clock.advance(timedelta(minutes=15))
    await app.dispatcher.drain()
    assert (await record(app, post_id))["status"] == "publishing"
    adapter.find_mode = "platform"
    await run_until_idle(app)
    post = await record(app, post_id)
    assert post["status"] == "published" and adapter.calls == 1


async def test_catch_up_window_publishes_recent_and_fails_stale(
    tmp_path: Path, app_factory: Any
) -> None:
    """After downtime: 5 h overdue still publishes, 7 h overdue fails MISSED with post.failed."""
    app = await make(tmp_path, app_factory, [])
    stale = await one_post(app, minutes=15)
    recent = await one_post(app, minutes=15 + 120)
    app.clock.advance(timedelta(minutes=15, hours=7))
    await run_until_idle(app)
    assert (await record(app, stale))["error"]["code"] == "MISSED"
    assert (await record(app, stale))["status"] == "failed"
    assert (await record(app, recent))["status"] == "published"
    assert dict(await terminal_events(app)) == {stale: 1, recent: 1}
    assert len(app.adapters["sandbox"].published_records()) == 1


async def test_shutdown_releases_in_flight_leases_for_reconciliation(
    tmp_path: Path, app_factory: Any, clock: Any
) -> None:
    """SIGTERM path: a publish still running past the grace keeps its post in doubt; the next
    start reconciles it (nothing landed) and publishes it exactly once."""
    app = await make(tmp_path, app_factory, [HANG])
    post_id = await one_post(app)
    app.clock.advance(timedelta(minutes=15))
    result = await app.dispatcher.pass_once()
    assert result.claimed == 1
    await app.dispatcher.stop(grace=0)
    post = await record(app, post_id)
    assert post["status"] == "publishing"
    await app.close()

    settings = app.settings
    fresh = ScriptedAdapter(tmp_path / "platform.db", clock, [])
    again = await app_factory(settings, adapters={"sandbox": fresh})
    await run_until_idle(again)
    post = await record(again, post_id)
    assert post["status"] == "published"
    assert len(fresh.published_records()) == 1
    assert outcomes(post) == ["started>reconciled_absent", "published"]


async def test_platform_reported_limits_tighten_the_config(
    tmp_path: Path, app_factory: Any
) -> None:
    """The dispatcher uses the stricter of config and what the platform reports."""
    app = await make(tmp_path, app_factory, [])
    app.adapters["sandbox"].reported = base.PlatformLimits(per_hour=2, per_24h=None)
    limits = app.dispatcher.limits_for("sandbox")
    assert (limits.page.per_hour, limits.page.per_24h) == (2, 40)


async def test_slow_publish_is_not_taken_over_by_its_own_process(
    tmp_path: Path, app_factory: Any
) -> None:
    """A publish outliving its lease is neither reaped by its own process nor sent twice."""
    app = await make(tmp_path, app_factory, [GATED], scheduling={"lease_seconds": 30})
    adapter = app.adapters["sandbox"]
    post_id = await one_post(app)
    app.clock.advance(timedelta(minutes=15))
    assert (await app.dispatcher.pass_once()).claimed == 1
    app.clock.advance(120)  # the lease has expired; the call is still running
    assert (await app.dispatcher.pass_once()).reconciling == 0
    adapter.gate.set()
    await run_until_idle(app)
    post = await record(app, post_id)
    assert post["status"] == "published" and adapter.calls == 1
    assert len(adapter.published_records()) == 1
    assert outcomes(post) == ["published"]


async def test_lease_heartbeat_extends_in_flight_leases_only(
    tmp_path: Path, app_factory: Any
) -> None:
    """renew_leases pushes in-flight leases forward and makes no query when nothing is in flight."""
    app = await make(tmp_path, app_factory, [GATED], scheduling={"lease_seconds": 30})
    assert await app.dispatcher.renew_leases() == 0
    post_id = await one_post(app)
    app.clock.advance(timedelta(minutes=15))
    await app.dispatcher.pass_once()
    app.clock.advance(20)
    assert await app.dispatcher.renew_leases() == 1
    async with app.sessions() as session:
        from daemon.store.models import Post

        post = await session.get(Post, post_id)
        assert post is not None and post.lease_expires_at == app.clock.now() + timedelta(seconds=30)
    app.adapters["sandbox"].gate.set()
    await run_until_idle(app)


@pytest.mark.postgres
async def test_superseded_outcome_is_not_applied(
    tmp_path: Path, pg_database: str, app_factory: Any, clock: Any
) -> None:
    """Two processes with one instance id (PostgreSQL; SQLite allows one daemon per file): the
    older claim's late outcome does not overwrite the newer claim's state or attempt log."""
    first = await make(
        tmp_path,
        app_factory,
        [GATED],
        pg_database,
        scheduling={"lease_seconds": 30},
        dispatch={"instance_id": "node-1"},
    )
    post_id = await one_post(first)
    clock.advance(timedelta(minutes=15))
    await first.dispatcher.pass_once()
    clock.advance(60)  # first's lease expired while its call hangs
    second_adapter = ScriptedAdapter(tmp_path / "platform.db", clock, [GATED])
    second = await app_factory(
        first.settings, adapters={"sandbox": second_adapter}, owner=first.dispatcher.owner
    )
    assert (await second.dispatcher.pass_once()).reconciling == 1
    await second.dispatcher.wait_in_flight()  # absent on the platform -> rescheduled
    assert (await second.dispatcher.pass_once()).claimed == 1  # claimed again, call hangs
    first.adapters["sandbox"].gate.set()
    await first.dispatcher.drain()  # the first call lands now: its outcome is superseded
    post = await record(first, post_id)
    assert post["status"] == "publishing"
    second_adapter.gate.set()
    await run_until_idle(second)
    post = await record(second, post_id)
    assert post["status"] == "published"
    assert outcomes(post) == ["started>reconciled_absent", "published"]
    assert dict(await terminal_events(second)) == {post_id: 1}


async def test_publish_timeout_goes_in_doubt_and_reconciles(
    tmp_path: Path, app_factory: Any
) -> None:
    """A publish that never answers within publish_timeout_seconds is reconciled, not lost."""
    app = await make(tmp_path, app_factory, [HANG], dispatch={"publish_timeout_seconds": 0.05})
    post_id = await one_post(app)
    await run_until_idle(app)
    post = await record(app, post_id)
    assert post["status"] == "published" and app.adapters["sandbox"].calls == 2
    assert outcomes(post) == ["in_doubt>reconciled_absent", "published"]
    assert post["attempts"][0]["error_code"] == "PUBLISH_TIMEOUT"
