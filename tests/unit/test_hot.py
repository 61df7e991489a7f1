"""daemon.store.hot: statements run on the pysqlite cursor store and read exactly what
SQLAlchemy stores and reads, and fall back to SQLAlchemy where they need its execution."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, bindparam, create_engine, func, insert, select, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from daemon import tokens
from daemon.store import hot
from daemon.store.models import Base, IdempotencyKey, Page, Post
from daemon.store.sync_sqlite import SyncConnection

NOW = datetime(2026, 5, 14, 10, 0, 0, 123456, tzinfo=UTC)
KEYS = IdempotencyKey.__table__
ROW = {
    "token_id": "t1",
    "key": "k1",
    "request_hash": "h" * 64,
    "method": "POST",
    "path": "/api/v1/posts/schedule",
    "status": None,
    "response_body": b"\x00{}",
    "response_headers": {"raw": [["content-type", "application/json"]]},
    "created_at": NOW,
    "locked_until": NOW + timedelta(seconds=30),
}


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[Connection]:
    engine = create_engine(f"sqlite:///{tmp_path / 'hot.db'}")
    Base.metadata.create_all(engine)
    with engine.connect() as connection:
        yield connection
    engine.dispose()


async def test_an_insert_stores_what_sqlalchemy_reads_back(conn: Connection) -> None:
    claim = hot.Hot(sqlite.insert(KEYS).on_conflict_do_nothing().returning(KEYS.c.key))
    sync = SyncConnection(conn)
    assert (await claim.first(sync, ROW)).key == "k1"
    assert await claim.first(sync, ROW) is None  # the conflict: no row returned
    stored = conn.execute(select(*KEYS.c)).mappings().one()
    assert dict(stored) == ROW | {"made": None, "post_id": None}


async def test_an_insert_stores_the_bytes_sqlalchemy_stores(conn: Connection) -> None:
    """Same row through both, JSON None and an aware datetime included: the same values in
    the file (``made`` None is JSON ``null`` here as there)."""
    row = ROW | {"made": None, "post_id": None}
    await hot.Hot(insert(KEYS)).run(SyncConnection(conn), row)
    conn.execute(insert(KEYS), row | {"key": "k2"})
    driver = conn.connection.dbapi_connection
    assert driver is not None
    ours, theirs = driver.execute("SELECT * FROM idempotency_keys ORDER BY key").fetchall()
    assert ours[2:] == theirs[2:] and (ours[1], theirs[1]) == ("k1", "k2")


async def test_a_select_reads_what_sqlalchemy_reads(conn: Connection) -> None:
    conn.execute(insert(KEYS), ROW)
    read = select(*KEYS.c).where(KEYS.c.token_id == bindparam("t"))
    expected = conn.execute(read, {"t": "t1"}).one()
    row = await hot.Hot(read).one(SyncConnection(conn), {"t": "t1"})
    assert tuple(row) == tuple(expected)
    assert row.created_at == NOW and row.created_at.tzinfo is not None
    assert row._asdict()["response_headers"] == ROW["response_headers"]


async def test_an_update_counts_its_rows_and_uses_literal_values(conn: Connection) -> None:
    conn.execute(insert(KEYS), ROW)
    store = hot.Hot(
        update(KEYS)
        .where(KEYS.c.key == bindparam("k"), KEYS.c.status.is_(None))
        .values(status=bindparam("s"), locked_until=None)
    )
    sync = SyncConnection(conn)
    assert await store.run(sync, {"k": "k1", "s": 201}) == 1
    assert await store.run(sync, {"k": "k1", "s": 500}) == 0  # status is no longer NULL
    assert conn.execute(select(KEYS.c.status, KEYS.c.locked_until)).one() == (201, None)


async def test_a_missing_parameter_is_an_error_not_a_null(conn: Connection) -> None:
    read = hot.Hot(select(KEYS.c.key).where(KEYS.c.token_id == bindparam("t")))
    with pytest.raises(KeyError):
        await read.all(SyncConnection(conn), {})


async def test_an_insert_leaving_a_python_default_runs_through_sqlalchemy(
    conn: Connection,
) -> None:
    """An insert that leaves a column with a Python-side default to SQLAlchemy is not compiled
    ahead: it still runs, through SQLAlchemy, which fills the default."""
    sync = SyncConnection(conn)
    without_headers = {k: v for k, v in ROW.items() if k != "response_headers"} | {"key": "k2"}
    add = hot.Hot(insert(KEYS))
    assert await add.run(sync, without_headers) == 1
    assert list(add._plans.values()) == [None]
    assert conn.execute(select(KEYS.c.response_headers).where(KEYS.c.key == "k2")).scalar() == {}


async def test_an_in_list_gets_a_plan_per_length(conn: Connection) -> None:
    """An expanding parameter (IN list) is rendered per list length, its values bound through
    their type; an empty list matches nothing, as through SQLAlchemy."""
    for n in range(3):
        conn.execute(insert(KEYS), ROW | {"token_id": f"t{n}", "created_at": NOW + timedelta(n)})
    among = hot.Hot(
        select(KEYS.c.token_id)
        .where(KEYS.c.token_id.in_(bindparam("ts", expanding=True)))
        .where(KEYS.c.created_at >= bindparam("since"))
        .order_by(KEYS.c.token_id)
    )
    sync = SyncConnection(conn)

    async def tokens_of(ts: list[str], since: datetime = NOW) -> list[str]:
        return [r.token_id for r in await among.all(sync, {"ts": ts, "since": since})]

    assert await tokens_of(["t0", "t2", "tx"]) == ["t0", "t2"]
    assert await tokens_of(["t1"]) == ["t1"]
    assert await tokens_of(["t0", "t1", "t2"], NOW + timedelta(1)) == ["t1", "t2"]
    assert await tokens_of([]) == []
    assert all(plan is not None for plan in among._plans.values())
    assert {key[2] for key in among._plans} == {(3,), (1,), (0,)}
    constant = hot.Hot(
        select(KEYS.c.token_id)
        .where(KEYS.c.token_id.in_(["t0", "t1"]), KEYS.c.key.in_(bindparam("ks", expanding=True)))
        .order_by(KEYS.c.token_id)
    )
    got = await constant.all(sync, {"ks": ["k1", "k9"]})
    assert [r.token_id for r in got] == ["t0", "t1"]
    assert list(constant._plans) == [("sqlite", (), (2,))]


async def test_a_constant_rendered_at_execution_is_rendered_once(conn: Connection) -> None:
    """The token lookup's ``group_concat(..., ' ')`` separator is a literal-execute parameter:
    it is rendered into the plan's SQL, and the statement runs on the cursor."""
    plan, lists = hot._compile(tokens._AUTH.statement, (), conn.dialect, {})
    assert plan is not None and "group_concat(brands.id, ' ')" in plan.sql and lists == ()
    assert [key for key, *_ in plan.binds] == ["digest"]


async def test_other_connections_run_the_statement_through_sqlalchemy(conn: Connection) -> None:
    """Anything but SyncReads (here an ORM session) gets an ordinary execute."""
    conn.execute(insert(KEYS), ROW)
    count = hot.Hot(select(func.count()).select_from(KEYS))

    class Async:
        def __init__(self, session: Session) -> None:
            self.session = session

        async def execute(self, statement: Any, params: Any = None) -> Any:
            return self.session.execute(statement, params)

    with Session(conn) as session:
        assert (await count.one(Async(session), {}))[0] == 1
    assert count._plans == {}


def test_detached_objects_read_like_loaded_ones() -> None:
    page = hot.detached(Page, {"id": "p1", "brand_id": "b1", "platform": "sandbox"})
    assert (page.id, page.brand_id, page.platform, page.name) == ("p1", "b1", "sandbox", None)
    post = hot.detached(Post, {"id": "x", "due_at": NOW})
    assert post.due_at == NOW and post.message is None


async def test_driver_errors_are_raised_as_sqlalchemy_raises_them(conn: Connection) -> None:
    conn.execute(insert(KEYS), ROW)
    add = hot.Hot(insert(KEYS))
    with pytest.raises(IntegrityError, match="UNIQUE"):
        await add.run(SyncConnection(conn), ROW)


async def test_the_driver_follows_a_replaced_connection(conn: Connection) -> None:
    """After SQLAlchemy replaces the connection beneath (invalidated, e.g. by a disconnect),
    hot statements run on the new one, not on the closed one."""
    sync = SyncConnection(conn)
    before = sync.driver
    conn.invalidate()
    conn.rollback()
    count = hot.Hot(select(func.count()).select_from(KEYS))
    assert (await count.one(sync, {}))[0] == 0
    assert sync.driver is not before
