"""The dispatcher writes through connections with its own SQLite settings (dispatch/tuning.py)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection

from daemon.dispatch import transitions, tuning
from daemon.store import db
from tests.conftest import make_settings
from tests.support import run_until_idle, seed, states


async def _pragma(conn: AsyncConnection, name: str) -> int:
    return int((await conn.exec_driver_sql(f"PRAGMA {name}")).scalar_one())


async def test_outcomes_are_written_through_a_tuned_connection(
    tmp_path: Path, db_url: str, app_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each finisher transaction runs on a connection with the larger cache and the rarer
    checkpoint (SQLite), and the posts are published as before."""
    seen: list[tuple[int, int] | None] = []
    real_apply = transitions.apply

    async def spied_apply(conn: AsyncConnection, *args: Any, **kwargs: Any) -> Any:
        if conn.dialect.name == "sqlite":
            seen.append(
                (await _pragma(conn, "cache_size"), await _pragma(conn, "wal_autocheckpoint"))
            )
        else:
            seen.append(None)
        return await real_apply(conn, *args, **kwargs)

    monkeypatch.setattr(transitions, "apply", spied_apply)
    settings = make_settings(tmp_path, db_url, dispatch={"concurrency": 4, "batch_size": 50})
    app = await app_factory(settings)
    await seed(
        app,
        brands=1,
        pages_per_brand=8,
        posts_per_page=1,
        start=app.clock.now(),
        spread_seconds=0,
    )

    await run_until_idle(app)

    assert await states(app) == Counter({"published": 8})
    assert seen, "no outcome was applied"
    if db_url.startswith("sqlite"):
        assert set(seen) == {(-16384, 10000)}
    else:
        assert set(seen) == {None}


async def test_settings_are_applied_once_per_connection(tmp_path: Path, db_url: str) -> None:
    """Two calls on one connection: the pragmas run once (SQLite), never on PostgreSQL."""
    engine = db.create_engine(db_url, tmp_path)
    statements: list[str] = []

    def record(*args: Any) -> None:
        if args[2].startswith("PRAGMA"):  # (not the BEGIN that the first statement brings)
            statements.append(args[2])

    try:
        async with engine.connect() as conn:
            event.listen(conn.sync_connection, "before_cursor_execute", record)
            await tuning.for_dispatch(conn)
            await tuning.for_dispatch(conn)
            event.remove(conn.sync_connection, "before_cursor_execute", record)
            if db_url.startswith("sqlite"):
                assert await _pragma(conn, "cache_size") == -16384
    finally:
        await engine.dispose()
    assert statements == (list(tuning.PRAGMAS) if db_url.startswith("sqlite") else [])
