"""Group commit for the API's small write transactions, on a thread of its own.

Every API write (a usage count, an idempotency key, a scheduled post) is a few statements and a
commit, and on SQLite the commit is the cost: ``synchronous=FULL`` syncs the WAL on each one, and
concurrent writers queue for SQLite's single write lock in its busy handler, which sleeps. So the
requests of one instant share one transaction instead:

- :meth:`GroupWriter.run` queues a *job* (``async def job(conn) -> T``) and waits for it;
- one writer takes every job queued so far, opens one transaction, runs each job in a
  ``SAVEPOINT`` of its own (a job that raises is rolled back alone, and its caller gets the
  exception), commits once, and only then answers the callers: a job's effects are durable when
  ``run`` returns, never before;
- if the commit fails, every job of the batch gets that error and nothing of it is kept.

The writer runs on its own thread, with its own event loop and its own engine (one connection):
each statement of a job is a round trip to the database driver, and on the daemon's loop every
such round trip would wait behind all the HTTP work of that moment (measured: 17 ms per
``BEGIN`` at 60 requests/s). A job therefore runs on the writer's loop: it may use only its
connection and plain values (no asyncio object of the daemon's loop), must be short, and must
never wait for another ``run``.

The same code serves PostgreSQL, where a batch is one round of commits instead of many.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import structlog
from sqlalchemy import CursorResult, Engine, Executable
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from daemon.store.sync_sqlite import SyncConnection

log = structlog.get_logger("postd.writer")
T = TypeVar("T")
Job = Callable[[AsyncConnection], Awaitable[Any]]
MAX_BATCH = 256  # jobs per transaction: bounds how long the write lock is held
_SAVEPOINT, _ROLLBACK_TO, _RELEASE = (
    "SAVEPOINT postd_job",
    "ROLLBACK TO SAVEPOINT postd_job",
    "RELEASE SAVEPOINT postd_job",
)


@dataclass(slots=True)
class _Queued:
    job: Job
    done: asyncio.Future[Any]  # of the caller's loop
    single: bool  # one statement: atomic by itself, no SAVEPOINT needed (SQLite)
    result: Any = None
    error: BaseException | None = field(default=None)


class GroupWriter:
    """See the module docstring. ``make_engine`` builds the writer's own engine, on its thread:
    an AsyncEngine, or on a SQLite file a sync one (:func:`daemon.store.db.create_sync_engine`;
    its connection is driven through :class:`daemon.store.sync_sqlite.SyncConnection`, without
    SQLAlchemy's async layer, which cost more than the statements)."""

    def __init__(self, make_engine: Callable[[], AsyncEngine | Engine]) -> None:
        self._make_engine = make_engine
        self._queue: list[_Queued] = []
        self._lock = threading.Lock()  # guards _queue and _closed between the two threads
        self._closed = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None  # of the writer's loop
        self._waiting = False  # the writer waits for jobs: the next one must wake it
        self._started = threading.Event()
        self._stopped: asyncio.Future[None] | None = None
        self.batches = 0  # transactions committed (tests and metrics)

    async def run(
        self, job: Callable[[AsyncConnection], Awaitable[T]], *, single: bool = False
    ) -> T:
        """Run ``job`` in the next group transaction; its result once that transaction is
        committed (or its exception: raised by the job, or by the commit). ``single``: the job
        is one statement; on SQLite a failing statement is undone by itself and the transaction
        goes on, so it needs no SAVEPOINT there (two round trips fewer). PostgreSQL aborts the
        whole transaction on any error: there every job gets its SAVEPOINT."""
        queued = _Queued(job, asyncio.get_running_loop().create_future(), single)
        loop = self._start()
        with self._lock:
            if self._closed:
                raise RuntimeError("the writer is closed")
            self._queue.append(queued)
            # A busy writer looks at the queue before it waits again: wake it only when it
            # waits (each wake-up is a cross-thread write and a GIL hand-off).
            wake, self._waiting = self._waiting, False
        if wake:
            loop.call_soon_threadsafe(self._poke)
        result: T = await asyncio.shield(queued.done)
        return result

    def _start(self) -> asyncio.AbstractEventLoop:
        if self._thread is None:
            self._thread = threading.Thread(target=self._main, name="postd-writer", daemon=True)
            self._thread.start()
            self._started.wait()
        assert self._loop is not None
        return self._loop

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        finally:
            loop.close()

    async def _serve(self) -> None:
        self._wake = asyncio.Event()
        engine = self._make_engine()
        self._started.set()
        try:
            while True:
                try:
                    if isinstance(engine, Engine):
                        with engine.connect() as sync:
                            await self._drain(cast(AsyncConnection, SyncConnection(sync)))
                    else:
                        async with engine.connect() as conn:
                            await self._drain(conn)
                    return
                except Exception as exc:  # no connection: every waiting job gets the error
                    log.error("writer_connection_failed", error=type(exc).__name__)
                    with self._lock:
                        failed, self._queue = self._queue, []
                    for queued in failed:
                        queued.error = exc
                    _answer_all(failed)
                    if not await self._next_jobs():
                        return  # closed: nothing more will come
        finally:
            if isinstance(engine, Engine):
                engine.dispose()
            else:
                await engine.dispose()

    async def _next_jobs(self) -> bool:
        """Wait until a job is queued (True) or the writer is closed with none left (False)."""
        assert self._wake is not None
        while True:
            with self._lock:
                if self._queue:
                    return True
                if self._closed:
                    return False
                self._wake.clear()
                self._waiting = True
            await self._wake.wait()

    async def _drain(self, conn: AsyncConnection) -> None:
        """Commit batches as jobs come, until the writer is closed and nothing is queued."""
        while await self._next_jobs():
            with self._lock:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            await self._commit(conn, batch)

    async def _commit(self, conn: AsyncConnection, batch: list[_Queued]) -> None:
        if len(batch) == 1:
            await self._commit_alone(conn, batch[0])
            return
        statement_atomic = conn.dialect.name == "sqlite"
        try:
            async with conn.begin():
                for queued in batch:
                    if queued.single and statement_atomic:
                        try:
                            queued.result = await queued.job(conn)
                        except Exception as exc:  # undone by SQLite alone
                            queued.error = exc
                        continue
                    try:
                        queued.result = await isolated(conn, queued.job)
                    except Exception as exc:  # this job's own failure: rolled back alone
                        queued.error = exc
        except Exception as exc:  # the transaction itself failed: nothing of it is kept
            log.warning("group_commit_failed", jobs=len(batch), error=type(exc).__name__)
            for queued in batch:
                queued.result, queued.error = None, exc
            _answer_all(batch)
            with contextlib.suppress(Exception):
                await conn.rollback()
            return
        self.batches += 1
        _answer_all(batch)

    async def _commit_alone(self, conn: AsyncConnection, queued: _Queued) -> None:
        """A batch of one job needs no SAVEPOINT (two statements fewer, and at a few hundred
        requests a second most batches are of one or two jobs): its failure rolls back the
        whole transaction, which holds nothing else."""
        ran = False
        try:
            async with conn.begin():
                queued.result = await queued.job(conn)
                ran = True
        except Exception as exc:  # the job's own failure, or the commit's
            if ran:
                log.warning("group_commit_failed", jobs=1, error=type(exc).__name__)
            queued.result, queued.error = None, exc
            with contextlib.suppress(Exception):
                await conn.rollback()
        else:
            self.batches += 1
        _answer_all([queued])

    async def aclose(self) -> None:
        """Finish what is queued, then stop the thread."""
        with self._lock:
            self._closed = True
        if self._thread is None:
            return
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # its loop already ended
            self._loop.call_soon_threadsafe(self._poke)
        await asyncio.to_thread(self._thread.join)
        self._thread = None


async def isolated(conn: AsyncConnection, job: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    """Run ``job`` in a SAVEPOINT of ``conn``'s transaction: if it raises, what it did is
    rolled back (and the exception re-raised) while the transaction goes on. The SAVEPOINT is
    plain SQL: SQLAlchemy's begin_nested() cost more than the jobs themselves (see
    bench/README.md), and nothing here needs its bookkeeping."""
    await conn.exec_driver_sql(_SAVEPOINT)
    try:
        result = await job(conn)
    except BaseException:
        await conn.exec_driver_sql(_ROLLBACK_TO)
        await conn.exec_driver_sql(_RELEASE)
        raise
    await conn.exec_driver_sql(_RELEASE)
    return result


def _answer_all(batch: list[_Queued]) -> None:
    """Settle every job of ``batch`` with its result or error: one hand-off per caller loop."""
    loops: dict[asyncio.AbstractEventLoop, list[_Queued]] = {}
    for queued in batch:
        loops.setdefault(queued.done.get_loop(), []).append(queued)
    for loop, jobs in loops.items():

        def settle(jobs: list[_Queued] = jobs) -> None:
            for queued in jobs:
                if queued.done.done():
                    continue
                if queued.error is not None:
                    queued.done.set_exception(queued.error)
                else:
                    queued.done.set_result(queued.result)

        with contextlib.suppress(RuntimeError):  # the caller's loop is gone: nobody to answer
            loop.call_soon_threadsafe(settle)


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


async def execute(
    owner: Any, statement: Executable, params: dict[str, Any] | None = None
) -> CursorResult[Any]:
    """One statement (with ``params``) through :func:`write`."""
    return await write(owner, lambda conn: conn.execute(statement, params), single=True)
