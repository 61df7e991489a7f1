"""The API's group commit (daemon/store/writer.py): concurrent jobs share one transaction, a
failing job is rolled back alone, and nothing is answered before its commit."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from daemon.store import db
from daemon.store.writer import GroupWriter


@pytest.fixture(params=["sync", "async"])
def make(request: pytest.FixtureRequest) -> Callable[[str], Any]:
    """The writer's engine: sync on SQLite (as the daemon builds it), or SQLAlchemy's async
    one (as on PostgreSQL)."""
    if request.param == "sync":
        return db.create_sync_engine
    return db.create_engine


@pytest.fixture
async def engine(tmp_path: Path):  # type: ignore[no-untyped-def]
    engine = db.create_engine(f"sqlite:///{tmp_path / 'w.db'}")
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE t (n INTEGER PRIMARY KEY)"))
    yield engine
    await engine.dispose()


async def rows(engine) -> list[int]:  # type: ignore[no-untyped-def]
    async with engine.connect() as conn:
        return [n for (n,) in await conn.execute(text("SELECT n FROM t ORDER BY n"))]


def inserting(n: int):  # type: ignore[no-untyped-def]
    async def job(conn: AsyncConnection) -> int:
        await conn.execute(text("INSERT INTO t (n) VALUES (:n)"), {"n": n})
        return n

    return job


async def test_concurrent_jobs_share_a_commit(engine, make) -> None:  # type: ignore[no-untyped-def]
    writer = GroupWriter(lambda: make(str(engine.url)))
    results = await asyncio.gather(*(writer.run(inserting(n)) for n in range(50)))
    assert results == list(range(50))
    assert await rows(engine) == list(range(50))
    assert writer.batches <= 2  # all queued in one loop turn: one transaction (two at most)
    await writer.aclose()


async def test_a_failing_job_is_rolled_back_alone(engine, make) -> None:  # type: ignore[no-untyped-def]
    writer = GroupWriter(lambda: make(str(engine.url)))

    async def half_then_fail(conn: AsyncConnection) -> None:
        await conn.execute(text("INSERT INTO t (n) VALUES (100)"))
        raise ValueError("refused")

    outcome = await asyncio.gather(
        writer.run(inserting(1)),
        writer.run(half_then_fail),
        writer.run(inserting(2)),
        return_exceptions=True,
    )
    assert outcome[0] == 1 and outcome[2] == 2
    assert isinstance(outcome[1], ValueError)
    assert await rows(engine) == [1, 2]  # not 100
    await writer.aclose()


async def test_a_lone_failing_job_keeps_nothing(engine, make) -> None:  # type: ignore[no-untyped-def]
    """A batch of one runs without a SAVEPOINT: its failure still keeps none of its writes, its
    caller gets its own exception, and the writer goes on."""
    writer = GroupWriter(lambda: make(str(engine.url)))

    async def half_then_fail(conn: AsyncConnection) -> None:
        await conn.execute(text("INSERT INTO t (n) VALUES (100)"))
        raise ValueError("refused")

    with pytest.raises(ValueError, match="refused"):
        await writer.run(half_then_fail)
    assert await writer.run(inserting(5)) == 5
    assert await rows(engine) == [5]  # not 100
    assert writer.batches == 1
    await writer.aclose()


async def test_a_duplicate_key_fails_only_its_job(engine, make) -> None:  # type: ignore[no-untyped-def]
    writer = GroupWriter(lambda: make(str(engine.url)))
    outcome = await asyncio.gather(
        writer.run(inserting(7)), writer.run(inserting(7)), return_exceptions=True
    )
    assert outcome[0] == 7 and isinstance(outcome[1], Exception)
    assert await rows(engine) == [7]
    await writer.aclose()


async def test_a_failing_single_statement_fails_alone(engine, make) -> None:  # type: ignore[no-untyped-def]
    """Single-statement jobs run without a SAVEPOINT on SQLite; a failing one still fails
    alone (SQLite undoes the statement, not the transaction)."""
    writer = GroupWriter(lambda: make(str(engine.url)))
    insert = "INSERT INTO t (n) VALUES (:n)"

    def single(n: int):  # type: ignore[no-untyped-def]
        return lambda conn: conn.execute(text(insert), {"n": n})

    outcome = await asyncio.gather(
        writer.run(single(3), single=True),
        writer.run(single(3), single=True),
        writer.run(single(4), single=True),
        return_exceptions=True,
    )
    assert isinstance(outcome[1], Exception) and not isinstance(outcome[0], Exception)
    assert await rows(engine) == [3, 4]
    await writer.aclose()


async def test_answers_come_after_the_commit(engine, make) -> None:  # type: ignore[no-untyped-def]
    """When run() returns, another connection sees the write."""
    writer = GroupWriter(lambda: make(str(engine.url)))
    for n in range(3):
        await writer.run(inserting(n))
        assert n in await rows(engine)
    assert writer.batches == 3
    await writer.aclose()


async def test_closed_writer_refuses(engine, make) -> None:  # type: ignore[no-untyped-def]
    writer = GroupWriter(lambda: make(str(engine.url)))
    await writer.run(inserting(1))
    await writer.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await writer.run(inserting(2))


async def test_no_database_fails_the_jobs_instead_of_hanging(
    tmp_path: Path, make: Callable[[str], Any]
) -> None:
    """The writer cannot connect (a directory that does not exist): each job gets the error;
    once the database is reachable, the next job goes through."""
    missing = tmp_path / "not-yet" / "w.db"
    writer = GroupWriter(lambda: make(f"sqlite:///{missing}"))

    async def create(conn: AsyncConnection) -> int:
        await conn.execute(text("CREATE TABLE IF NOT EXISTS t (n INTEGER PRIMARY KEY)"))
        await conn.execute(text("INSERT INTO t (n) VALUES (1)"))
        return 1

    with pytest.raises(Exception, match="unable to open database file"):
        await asyncio.wait_for(writer.run(create), 10)
    missing.parent.mkdir()
    assert await asyncio.wait_for(writer.run(create), 10) == 1
    await writer.aclose()
