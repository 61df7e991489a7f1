"""Operations endpoints: /healthz, /readyz (names the failing check), /metrics."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from tests.conftest import make_settings
from tests.support import run_until_idle, seed


def client(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app.http)
    return httpx.AsyncClient(transport=transport, base_url="http://postd.test")


async def test_readyz_follows_scheduler_and_dispatcher_tick(
    tmp_path: Path, app_factory: Any
) -> None:
    """/readyz is 503 until the scheduler runs and the tick is fresh; stale tick -> 503 again."""
    settings = make_settings(
        tmp_path, f"sqlite:///{tmp_path / 'p.db'}", scheduling={"sweep_seconds": 30}
    )
    app = await app_factory(settings)
    async with client(app) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        body = (await http.get("/readyz")).json()
        assert body["checks"] == {
            "database": "ok",
            "scheduler": "not running",
            "dispatcher": "no tick yet",
        }
        app.scheduler = AsyncIOScheduler(timezone="UTC")
        app.scheduler.start(paused=True)
        try:
            await app.sweep()
            response = await http.get("/readyz")
            assert response.status_code == 200, response.text
            app.clock.advance(61)
            response = await http.get("/readyz")
            assert response.status_code == 503
            assert response.json()["checks"]["dispatcher"] == "last tick 61 s ago (limit 60 s)"
            await app.sweep()
            assert (await http.get("/readyz")).status_code == 200
        finally:
            app.scheduler.shutdown(wait=False)


async def test_readyz_names_an_unreachable_database(tmp_path: Path, app_factory: Any) -> None:
    """With the database gone, /readyz is 503 and says the database check fails."""
    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'p.db'}")
    app = await app_factory(settings)
    await app.engine.dispose()
    (tmp_path / "p.db").rename(tmp_path / "moved.db")
    (tmp_path / "p.db").mkdir()  # a directory where the file was: connections fail
    async with client(app) as http:
        response = await http.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["database"].startswith("failing")


async def test_metrics_expose_states_latency_lateness_deferrals_errors(
    tmp_path: Path, app_factory: Any
) -> None:
    """/metrics has posts by state, publish latency, lateness, deferrals and adapter errors."""
    settings = make_settings(
        tmp_path,
        f"sqlite:///{tmp_path / 'p.db'}",
        guardrails={"sandbox": {"per_hour": 1, "per_24h": 5}},
        sandbox={"failure_rate": 0.5, "seed": 3},
    )
    app = await app_factory(settings)
    await seed(
        app,
        brands=1,
        pages_per_brand=1,
        posts_per_page=3,
        start=app.clock.now() + timedelta(minutes=1),
        spread_seconds=0,
    )
    await run_until_idle(app)
    async with client(app) as http:
        text = (await http.get("/metrics")).text
    assert 'postd_posts{state="published"} 3.0' in text
    assert 'postd_guardrail_deferrals_total{reason="page_per_hour"}' in text
    assert "postd_publish_duration_seconds_count" in text
    assert "postd_publish_lateness_seconds_bucket" in text
    assert 'postd_adapter_errors_total{error_class="retryable",platform="sandbox"}' in text


async def test_wake_runs_a_sweep_that_finds_a_due_post(tmp_path: Path, app_factory: Any) -> None:
    """POST /wake (what the CLI sends on SQLite) sweeps now: a due post wakes the dispatcher."""
    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'p.db'}")
    app = await app_factory(settings)
    await seed(
        app,
        brands=1,
        pages_per_brand=1,
        posts_per_page=1,
        start=app.clock.now() + timedelta(minutes=1),
        spread_seconds=0,
    )
    woken: list[bool] = []
    app.dispatcher.wake = lambda: woken.append(True)
    async with client(app) as http:
        assert (await http.post("/wake")).status_code == 202
        await app._sweep_requested
        assert woken == [] and app.dispatcher.last_tick == app.clock.now()
        app.clock.advance(61)
        assert (await http.post("/wake")).status_code == 202
        await app._sweep_requested
    assert woken == [True]
