"""Shared fixtures: settings on a temp dir, databases (SQLite always; PostgreSQL when reachable,
and required when CI=true), and an in-process App on a FakeClock."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
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
        _drop_database(name)


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

    copied = await _copy_migrated(settings)
    app = App(settings, clock=clock, sleep=kwargs.pop("sleep", sleep), **kwargs)
    if not copied:
        await db.migrate(app.engine)
    await app.prepare()
    return app


class _Templates:
    """Databases migrated once per test session, copied for each test that starts an App: a
    copy takes a few ms where running the migrations took ~130 ms, and over a thousand tests
    start one. Only a database that is still empty is replaced (a test that set up its own
    schema, or one migrating on purpose, goes through ``db.migrate``)."""

    def __init__(self) -> None:
        self._sqlite: Path | None = None
        self._pg: str | None = None

    async def _migrated(self, url: str, base_dir: Path) -> None:
        from daemon.store import db

        engine = db.create_engine(url, base_dir)
        try:
            await db.migrate(engine)
        finally:
            await engine.dispose()

    async def sqlite(self) -> Path:
        if self._sqlite is None:
            directory = Path(tempfile.mkdtemp(prefix="postd_template_"))
            atexit.register(shutil.rmtree, directory, ignore_errors=True)
            await self._migrated(f"sqlite:///{directory / 'template.db'}", directory)
            self._sqlite = directory / "template.db"
        return self._sqlite

    async def postgresql(self) -> str:
        if self._pg is None:
            name = f"postd_tmpl_{uuid.uuid4().hex[:12]}"
            with psycopg.connect(PG_URL, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            atexit.register(_drop_database, name)
            base, _, _ = PG_URL.rpartition("/")
            await self._migrated(f"{base}/{name}", Path("."))
            self._pg = name
        return self._pg


def _drop_database(name: str) -> None:
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


_TEMPLATES = _Templates()


async def _copy_migrated(settings: config.Settings) -> bool:
    """Put a migrated copy where ``settings`` points, if that database is still empty."""
    url = settings.database.url
    if url.startswith("sqlite"):
        path = config.sqlite_path(url)
        if path is None or not path.is_absolute() or path.exists():
            return False
        shutil.copyfile(await _TEMPLATES.sqlite(), path)
        return True
    base, _, name = url.rpartition("/")
    if base != PG_URL.rpartition("/")[0] or not name.startswith("postd_t_"):
        return False
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
    if row is None or row[0] != 0:
        return False
    template = await _TEMPLATES.postgresql()
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return True


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
