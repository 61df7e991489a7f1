"""Sync SQLite connections behind the part of SQLAlchemy's async interface postd's queries
and group-writer jobs use.

On a SQLite file a statement is tens of microseconds, and SQLAlchemy's async layer (a greenlet
switch, the driver adapter, a buffered result) cost ~100 µs more than the statement, three or
four times per API request (``bench/README.md``, API round four). Where blocking the awaiting
thread is safe, postd therefore drives a plain pysqlite connection and awaits nothing:

- the API's one-statement reads on the event loop (:func:`daemon.store.db.reading`): a WAL
  reader never waits for a lock, so the loop never waits for another connection;
- the group writer's connection (:mod:`daemon.store.writer`), on a thread of its own that has
  nothing else to do while its statement runs.

The engines are built in :mod:`daemon.store.db` (``create_sync_reads``,
``create_sync_engine``), with the same pragmas and ``BEGIN IMMEDIATE`` as the async ones.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, Protocol

from sqlalchemy.engine import Connection


class Reads(Protocol):
    """What a read needs of a connection: an AsyncConnection, an AsyncSession or a
    :class:`SyncReads`."""

    async def execute(self, statement: Any, parameters: Any = None) -> Any: ...

    async def scalars(self, statement: Any, parameters: Any = None) -> Any: ...


class SyncReads:
    """A sync connection behind the async interface the queries use: each call runs to the end
    before it returns, on the awaiting thread."""

    __slots__ = ("_conn",)

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    @property
    def driver(self) -> Any:
        """The pysqlite connection itself, for statements that skip SQLAlchemy
        (daemon/store/hot.py): on it they run in the same transaction, if one is open. Looked up
        each time: the group writer keeps its connection for its life, and should SQLAlchemy
        replace the one beneath (after a disconnect), this follows."""
        return self._conn.connection.dbapi_connection

    @property
    def sync(self) -> Connection:
        return self._conn

    async def execute(self, statement: Any, parameters: Any = None) -> Any:
        return self._conn.execute(statement, parameters)

    async def scalars(self, statement: Any, parameters: Any = None) -> Any:
        return self._conn.scalars(statement, parameters)


class SyncConnection(SyncReads):
    """:class:`SyncReads` that also writes: what the group writer's jobs and its transaction
    loop use of an AsyncConnection (``daemon/store/writer.py``), for its SQLite connection on a
    thread of its own, where a statement may block."""

    __slots__ = ()

    @property
    def dialect(self) -> Any:
        return self._conn.dialect

    async def exec_driver_sql(self, statement: str) -> None:
        """A statement without parameters or rows (the group writer's ``SAVEPOINT``, ``RELEASE``
        and ``ROLLBACK TO``), straight on the driver: through SQLAlchemy each cost an execution
        context, several times a job."""
        self.driver.execute(statement)

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncIterator[None]:
        with self._conn.begin():
            yield

    async def rollback(self) -> None:
        self._conn.rollback()
