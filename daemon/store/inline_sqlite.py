"""An aiosqlite connection that runs each call on the calling thread, for SQLAlchemy's
``sqlite+aiosqlite`` dialect.

aiosqlite gives every connection a thread of its own and sends it each call (``cursor()``,
``execute``, ``fetchall``, ``close``, ...) through a queue, answering through
``call_soon_threadsafe``. A call is microseconds of SQLite work, but each hand-off is a futex
wake-up, a self-pipe write and read, and a GIL transfer between two threads; one API schedule
made about 100 of them, and they cost more CPU than everything else the request did (measured:
8 ms of 20 ms per schedule on the group writer's thread alone, see ``bench/README.md``).

:class:`InlineConnection` keeps aiosqlite's interface (the one the dialect adapts) but runs each
call where it is awaited. That blocks the awaiting event loop for the call, so it is only for
a loop that may block:

- the group writer's (:mod:`daemon.store.writer`), which runs on a thread of its own and has
  nothing else to do while its statement runs;
- read-only connections in WAL mode, which never wait for a lock (see
  :func:`daemon.store.db.create_read_engine`).

A connection whose ``BEGIN IMMEDIATE`` can wait for another connection of the same loop must
not be inline: the busy handler would sleep on the loop that the lock holder needs to finish.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from typing import Any

import aiosqlite


class _InlineQueue:
    """Stands in for aiosqlite's queue to its worker thread. SQLAlchemy's dialect sets
    ``isolation_level`` by queueing a call there directly: run it at once instead."""

    def put_nowait(self, item: tuple[asyncio.Future[Any] | None, Callable[[], Any]]) -> None:
        future, function = item
        try:
            result = function()
        except BaseException as exc:  # handed to the awaiting caller, as the thread would
            if future is None:
                raise
            future.set_exception(exc)
        else:
            if future is not None:
                future.set_result(result)


class InlineConnection(aiosqlite.Connection):
    """See the module docstring. Its worker thread is never started."""

    def __init__(self, connector: Callable[[], sqlite3.Connection]) -> None:
        super().__init__(connector, iter_chunk_size=64)
        self._tx = _InlineQueue()  # type: ignore[assignment]

    async def _execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self._running or self._connection is None:
            raise ValueError("Connection closed")
        return fn(*args, **kwargs)

    async def _connect(self) -> InlineConnection:
        if self._connection is None:
            self._connection = self._connector()
        return self

    def __await__(self) -> Any:
        return self._connect().__await__()

    def stop(self) -> None:
        self._running = False
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def creator(path: str) -> Callable[[], Any]:
    """An ``async_creator`` for :func:`sqlalchemy.ext.asyncio.create_async_engine`."""

    async def connect() -> InlineConnection:
        # check_same_thread off: the pool may close a connection from another thread at
        # dispose; no two threads ever use one at the same time.
        connection = InlineConnection(
            lambda: sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        )
        return await connection._connect()

    return connect
