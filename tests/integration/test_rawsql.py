"""The dispatcher's raw executemany stores values as SQLAlchemy's own statements do."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select

from daemon.dispatch import rawsql, transitions
from tests.conftest import make_settings

CREATED = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)
PAYLOAD = {"event": "post.published", "data": {"post": {"id": "p1", "media": []}}}


async def test_insert_and_update_many_match_sqlalchemy(
    tmp_path: Path, db_url: str, app_factory: Any
) -> None:
    """Rows written raw read back (and sort) exactly like rows SQLAlchemy wrote."""
    app = await app_factory(make_settings(tmp_path, db_url))
    outbox = transitions.OUTBOX
    async with app.engine.begin() as conn:
        await conn.execute(
            insert(outbox),
            [{"event": "e", "post_id": "a", "created_at": CREATED, "payload": PAYLOAD}],
        )
        await rawsql.insert_many(
            conn,
            outbox,
            ("event", "post_id", "created_at", "payload"),
            [("e", "b", CREATED, PAYLOAD), ("e", "c", CREATED, {"x": [1]})],
        )
        ids = {
            post_id: row_id
            for row_id, post_id in await conn.execute(select(outbox.c.id, outbox.c.post_id))
        }
        later = datetime(2026, 3, 2, tzinfo=UTC)
        await rawsql.update_many(conn, outbox, ("event", "created_at"), [("f", later, ids["c"])])
    async with app.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(outbox.c.post_id, outbox.c.event, outbox.c.created_at, outbox.c.payload)
                .where(outbox.c.created_at == CREATED)
                .order_by(outbox.c.post_id)
            )
        ).all()
        moved = (
            await conn.execute(
                select(outbox.c.event, outbox.c.created_at).where(outbox.c.id == ids["c"])
            )
        ).one()
    assert [tuple(r) for r in rows] == [
        ("a", "e", CREATED, PAYLOAD),
        ("b", "e", CREATED, PAYLOAD),
    ]
    assert tuple(moved) == ("f", later)
