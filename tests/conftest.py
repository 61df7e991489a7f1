"""Shared fixtures: settings on a temp dir, databases (SQLite always; PostgreSQL when reachable,
and required when CI=true), and an in-process App on a FakeClock."""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from daemon import config
from daemon.clock import FakeClock


def pytest_configure(config: pytest.Config) -> None:
    """Quiet structlog in tests (warnings and errors only), in the same JSON format as prod."""
    from daemon import logs
    from daemon.config import LoggingSettings

    logs.configure(LoggingSettings(level="warning", format="json"))


PG_URL = os.environ.get("POSTD_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() == "true"


def _pg_reachable() -> str | None:
    try:
        with psycopg.connect(PG_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}".strip()


@functools.cache
def pg_problem() -> str | None:
    """Why PostgreSQL cannot be used (None when it can); probed once per session."""
    return _pg_reachable()


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for one test; its URL. Fails in CI when unreachable."""
    problem = pg_problem()
    if problem:
        if IN_CI:
            pytest.fail(f"CI=true but PostgreSQL at {PG_URL} is unreachable: {problem}")
        pytest.skip(f"PostgreSQL not reachable at {PG_URL} ({problem}); set POSTD_TEST_PG_URL")
    name = f"postd_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = PG_URL.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The database URL of a test that runs on both backends."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'postd.db'}"
    url: str = request.getfixturevalue("pg_database")
    return url


def make_settings(tmp_path: Path, db_url: str, **sections: dict[str, Any]) -> config.Settings:
    """Settings for tests: the given database, sandbox state in tmp_path, overrides by section."""
    raw: dict[str, Any] = {
        "database": {"url": db_url},
        "sandbox": {"state_path": str(tmp_path / "sandbox.db"), "latency_ms": 0},
        "retry": {"inline_max_wait_seconds": 0},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return config.Settings.model_validate({**raw, "base_dir": tmp_path})


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def fake_sleep(clock: FakeClock) -> Any:
    async def sleep(seconds: float) -> None:
        clock.advance(seconds)

    return sleep


async def started_app(settings: config.Settings, clock: FakeClock, **kwargs: Any) -> Any:
    """An App on ``settings`` migrated and prepared (no timers, no HTTP): tests drive it."""
    from daemon.app import App
    from daemon.store import db

    async def sleep(seconds: float) -> None:
        clock.advance(seconds)

    app = App(settings, clock=clock, sleep=kwargs.pop("sleep", sleep), **kwargs)
    await db.migrate(app.engine)
    await app.prepare()
    return app


@pytest.fixture
async def app_factory(clock: FakeClock) -> AsyncIterator[Any]:
    made: list[Any] = []

    async def factory(settings: config.Settings, **kwargs: Any) -> Any:
        app = await started_app(settings, kwargs.pop("clock", clock), **kwargs)
        made.append(app)
        return app

    yield factory
    for app in made:
        await app.dispatcher.stop(0)
        await app.close()
