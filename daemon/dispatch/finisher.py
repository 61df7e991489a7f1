"""Group commit of publish outcomes.

Each outcome is one lifecycle transition with its outbox event; writing them one transaction per
post would make the fsync of ``synchronous=FULL`` the bottleneck. The finisher drains whatever
outcomes are waiting and commits them together; each submitter awaits its own outcome being
durable, so a page is not free again (and a publish slot not released) before its state is
written. A crash before the commit is safe: the post is still ``publishing`` under a lease and
reconciliation finds what the platform has.

The dispatcher gives the finisher a next step (``then``) that runs in the same transaction: the
claim of the posts that take the freed publish slots, so that under load a wave of publishes
costs one transaction, and one sync of the database, instead of two.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from daemon.dispatch import transitions, tuning
from daemon.dispatch.outcomes import Outcome

log = structlog.get_logger("postd.dispatch")
MAX_GROUP = 1024  # a whole wave (dispatch.concurrency is at most 1024): one commit
# A step run in the group's transaction once its outcomes are applied, given the group and work
# it may run while one of its statements executes (see transitions.claim_rows); it returns
# what to do once that transaction is committed (None: nothing).
Meanwhile = Callable[[], Awaitable[None]]
Then = Callable[[AsyncSession, Sequence[Outcome], Meanwhile], Awaitable[Callable[[], None] | None]]


class Finisher:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        owner: str,
        write_lock: asyncio.Lock,
        *,
        then: Then | None = None,
    ) -> None:
        self._sessions = sessions
        self._owner = owner
        self._write_lock = write_lock
        self._then = then
        self._queue: asyncio.Queue[tuple[Outcome, asyncio.Future[bool]]] = asyncio.Queue()
        self.committed = 0
        self.groups = 0  # groups flushed (committed or not)

    async def submit(self, outcome: Outcome) -> bool:
        """Return once the outcome is committed: True if it was applied, False if its claim had
        been superseded (raises if the commit failed)."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        await self._queue.put((outcome, future))
        return await future

    async def run(self) -> None:
        """Owned by the dispatcher: commit groups until cancelled."""
        while True:
            group = [await self._queue.get()]
            while not self._queue.empty() and len(group) < MAX_GROUP:
                group.append(self._queue.get_nowait())
            await self.flush(group)

    async def flush(self, group: Sequence[tuple[Outcome, asyncio.Future[bool]]]) -> None:
        self.groups += 1
        outcomes = [outcome for outcome, _ in group]
        try:
            lost, after = await self._write(outcomes)
        except Exception as exc:
            log.error("outcome_commit_failed", count=len(group), error=str(exc))
            for _, future in group:
                if not future.done():
                    future.set_exception(exc)
            return
        self.committed += len(group)
        for outcome in lost:
            log.warning(
                "claim_superseded",
                post_id=outcome.claimed.post_id,
                outcome=outcome.kind,
                remote_id=outcome.published.remote_id if outcome.published else None,
                detail="the post was reconciled and claimed again meanwhile; outcome not applied",
            )
        lost_ids = {id(o) for o in lost}
        for outcome, future in group:
            if not future.done():
                future.set_result(id(outcome) not in lost_ids)
        if after is not None:
            try:
                after()
            except Exception:  # what it claimed stays leased; reconciliation resolves it
                log.exception("finisher_next_step_failed")

    async def _write(
        self, outcomes: Sequence[Outcome]
    ) -> tuple[list[Outcome], Callable[[], None] | None]:
        async with self._write_lock, self._sessions() as session, session.begin():
            conn = await session.connection()
            await tuning.for_dispatch(conn)
            lock = conn.dialect.name == "postgresql"
            # The outcomes' outbox events are written last: their rows are built while the next
            # step's claim runs its UPDATE (if it claims anything), else just before the write.
            events = transitions.Events()
            lost = await transitions.apply(conn, outcomes, self._owner, lock=lock, events=events)
            await events.prepare(conn)
            after = None
            if self._then is not None:
                after = await self._then(session, outcomes, lambda: events.build(conn.dialect))
            await events.write(conn)
        return lost, after
