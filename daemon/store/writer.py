"""Group commit for the API's small write transactions.

Every API write (a usage count, an idempotency key, a scheduled post) is a few statements and a
commit, and on SQLite the commit is the cost: ``synchronous=FULL`` syncs the WAL on each one, and
concurrent writers queue for SQLite's single write lock in its busy handler, which sleeps. So the
requests of one instant share one transaction instead:

- :meth:`GroupWriter.run` queues a *job* (``async def job(conn) -> T``) and waits for it;
- one writer task takes every job queued so far, opens one transaction, runs each job in a
  ``SAVEPOINT`` of its own (a job that raises is rolled back alone, and its caller gets the
  exception), commits once, and only then answers the callers: a job's effects are durable when
  ``run`` returns, never before;
- if the commit fails, every job of the batch gets that error and nothing of it is kept.

A job runs on the writer's connection, one job at a time: it must be short and must not wait for
anything but that connection (never for another ``run``: that would wait for itself).

The same code serves PostgreSQL, where a batch is one round of commits instead of many.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog
from sqlalchemy import CursorResult, Executable
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = structlog.get_logger("postd.writer")
T = TypeVar("T")
Job = Callable[[AsyncConnection], Awaitable[Any]]
MAX_BATCH = 256  # jobs per transaction: bounds how long the write lock is held


@dataclass(slots=True)
class _Queued:
    job: Job
    done: asyncio.Future[Any]
    single: bool  # one statement: atomic by itself, no SAVEPOINT needed
    result: Any = None
    error: BaseException | None = field(default=None)


class GroupWriter:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._statement_atomic = engine.dialect.name == "sqlite"
        self._queue: list[_Queued] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.batches = 0  # transactions committed (tests and metrics)

    async def run(
        self, job: Callable[[AsyncConnection], Awaitable[T]], *, single: bool = False
    ) -> T:
        """Run ``job`` in the next group transaction; its result once that transaction is
        committed (or its exception: raised by the job, or by the commit). ``single``: the job
        is one statement; on SQLite a failing statement is undone by itself and the transaction
        goes on, so it needs no SAVEPOINT there (two round trips fewer). PostgreSQL aborts the
        whole transaction on any error: there every job gets its SAVEPOINT."""
        if self._closed:
            raise RuntimeError("the writer is closed")
        loop = asyncio.get_running_loop()
        queued = _Queued(job, loop.create_future(), single)
        self._queue.append(queued)
        self._wake.set()
        if self._task is None:
            self._task = loop.create_task(self._loop(), name="postd-writer")
        result: T = await asyncio.shield(queued.done)
        return result

    async def _loop(self) -> None:
        while not self._closed or self._queue:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            await self._commit(batch)

    async def _commit(self, batch: list[_Queued]) -> None:
        try:
            async with self._engine.begin() as conn:
                for queued in batch:
                    try:
                        if queued.single and self._statement_atomic:
                            queued.result = await queued.job(conn)
                            continue
                        async with conn.begin_nested():
                            queued.result = await queued.job(conn)
                    except Exception as exc:  # this job's own failure: rolled back alone
                        queued.error = exc
        except Exception as exc:  # the transaction itself failed: nothing of it is kept
            log.warning("group_commit_failed", jobs=len(batch), error=type(exc).__name__)
            for queued in batch:
                _settle(queued.done, error=exc)
            return
        self.batches += 1
        for queued in batch:
            _settle(queued.done, queued.result, queued.error)

    async def aclose(self) -> None:
        """Finish what is queued, then stop."""
        self._closed = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def _settle(
    done: asyncio.Future[Any], result: Any = None, error: BaseException | None = None
) -> None:
    if done.done():
        return
    if error is not None:
        done.set_exception(error)
    else:
        done.set_result(result)


async def write(
    owner: Any, job: Callable[[AsyncConnection], Awaitable[T]], *, single: bool = False
) -> T:
    """Run ``job`` through ``owner.writer`` (the daemon's :class:`GroupWriter`), or in a
    transaction of its own where there is none (tools, tests that build a bare owner)."""
    writer: GroupWriter | None = getattr(owner, "writer", None)
    if writer is None:
        async with owner.engine.begin() as conn:
            return await job(conn)
    return await writer.run(job, single=single)


async def execute(owner: Any, statement: Executable) -> CursorResult[Any]:
    """One statement through :func:`write`."""
    return await write(owner, lambda conn: conn.execute(statement), single=True)
