"""Wake the deliverer when a transaction that wrote outbox events is over.

The dispatcher writes events in its own transactions (with their state changes); it knows
nothing of webhooks. This watches the engine instead: a connection that executes an INSERT into
``outbox_events`` is marked, and when it goes back to the pool (after its commit or rollback,
never before) the callback runs. A rolled-back transaction only costs a pass that finds nothing.
Waking *after* the commit matters on PostgreSQL: a pass that ran before it would not see the rows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

MARK = "postd_outbox_written"
INSERT_PREFIX = "INSERT INTO outbox_events"


def install(engine: AsyncEngine, on_commit: Callable[[], None]) -> Callable[[], None]:
    """Call ``on_commit`` whenever a connection that inserted outbox rows is released; returns
    a function that removes the hooks."""
    sync_engine = engine.sync_engine

    def after_execute(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.startswith(INSERT_PREFIX):
            conn.info[MARK] = True

    def checkin(_dbapi_conn: Any, record: Any) -> None:
        if record is not None and record.info.pop(MARK, False):
            on_commit()

    event.listen(sync_engine, "after_cursor_execute", after_execute)
    event.listen(sync_engine.pool, "checkin", checkin)

    def remove() -> None:
        if event.contains(sync_engine, "after_cursor_execute", after_execute):
            event.remove(sync_engine, "after_cursor_execute", after_execute)
        if event.contains(sync_engine.pool, "checkin", checkin):
            event.remove(sync_engine.pool, "checkin", checkin)

    return remove
