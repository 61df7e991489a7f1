"""db.reading(): the API's one-statement reads (a sync read-only connection on a SQLite file,
SQLAlchemy's async connection elsewhere) see what is committed, never what is not, and cannot
write."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from daemon.store import db
from daemon.store.models import User
from tests.conftest import make_settings

COUNT = select(func.count()).select_from(User)


async def add_user(conn: Any, email: str) -> None:
    await conn.execute(
        User.__table__.insert().values(
            id=f"u_{email}", email=email, tier="free", created_at=datetime(2026, 1, 1, tzinfo=UTC)
        )
    )


async def test_reads_see_each_commit_and_nothing_uncommitted(
    app_factory: Any, tmp_path: Path, db_url: str
) -> None:
    app = await app_factory(make_settings(tmp_path, db_url))
    assert (app.sync_reads is not None) == db_url.startswith("sqlite")
    async with db.reading(app) as conn:
        assert (await conn.execute(COUNT)).scalar_one() == 0
    async with app.engine.begin() as writing:
        await add_user(writing, "a@example.com")
        async with db.reading(app) as conn:  # the write lock is held: the read neither waits
            assert (await conn.execute(COUNT)).scalar_one() == 0  # nor sees the open write
    async with db.reading(app) as conn:
        assert (await conn.execute(COUNT)).scalar_one() == 1
        emails = list(await conn.scalars(select(User.email)))
    assert emails == ["a@example.com"]


async def test_a_sqlite_read_connection_refuses_to_write(app_factory: Any, tmp_path: Path) -> None:
    app = await app_factory(make_settings(tmp_path, f"sqlite:///{tmp_path / 'postd.db'}"))
    async with db.reading(app) as conn:
        with pytest.raises(OperationalError, match="readonly"):
            await add_user(conn, "b@example.com")
    async with db.reading(app) as conn:
        assert (await conn.execute(COUNT)).scalar_one() == 0


async def test_a_snapshot_block_reads_one_state_of_the_database(
    app_factory: Any, tmp_path: Path
) -> None:
    """db.reading(snapshot=True) on SQLite: a commit made while the block runs is not seen by
    its later statements (one read transaction), and is seen by the next block; the connection
    goes back to the pool with no transaction open, so it sees later commits too."""
    app = await app_factory(make_settings(tmp_path, f"sqlite:///{tmp_path / 'postd.db'}"))
    async with db.reading(app, snapshot=True) as conn:
        assert (await conn.execute(COUNT)).scalar_one() == 0
        async with app.engine.begin() as writing:
            await add_user(writing, "c@example.com")
        assert (await conn.execute(COUNT)).scalar_one() == 0
    for _ in range(3):  # whichever pooled connection comes back
        async with db.reading(app) as conn:
            assert (await conn.execute(COUNT)).scalar_one() == 1
    with pytest.raises(RuntimeError, match="inside"):
        async with db.reading(app, snapshot=True) as conn:
            raise RuntimeError("inside")
    async with app.engine.begin() as writing:  # no read transaction was left open
        await add_user(writing, "d@example.com")
    async with db.reading(app, snapshot=True) as conn:
        assert (await conn.execute(COUNT)).scalar_one() == 2
