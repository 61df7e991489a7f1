"""The adapters' :class:`adapters._progress.ProgressStore` over the ``adapter_progress`` table:
each write commits on its own, so a value is durable before the adapter's next request."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from daemon import clock as clock_mod
from daemon import lifecycle
from daemon.store import db
from daemon.store.models import AdapterProgress, Post

# Kept this long after their post ended (published, failed, cancelled): what an operator may
# want to read when asking why a post went out as it did.
RETENTION = timedelta(days=7)


class DbProgress:
    """Progress rows keyed by (post id, key); ``put`` replaces a key's value."""

    def __init__(self, engine: AsyncEngine, clock: clock_mod.Clock) -> None:
        self._engine = engine
        self._clock = clock

    async def get(self, post_id: str, key: str) -> str | None:
        async with db.single_read(self._engine) as conn:
            row = await conn.execute(
                select(AdapterProgress.value).where(
                    AdapterProgress.post_id == post_id, AdapterProgress.key == key
                )
            )
            return row.scalar_one_or_none()

    async def put(self, post_id: str, key: str, value: str) -> None:
        now = self._clock.now()
        mine = (AdapterProgress.post_id == post_id) & (AdapterProgress.key == key)
        async with self._engine.begin() as conn:
            changed = await conn.execute(
                update(AdapterProgress).where(mine).values(value=value, updated_at=now)
            )
            if changed.rowcount == 0:
                await conn.execute(
                    insert(AdapterProgress).values(
                        post_id=post_id, key=key, value=value, updated_at=now
                    )
                )

    async def delete(self, post_id: str, key: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                delete(AdapterProgress).where(
                    AdapterProgress.post_id == post_id, AdapterProgress.key == key
                )
            )


async def purge(session: AsyncSession, now: datetime, keep: timedelta = RETENTION) -> int:
    """Delete the progress of posts that ended more than ``keep`` ago (a post still scheduled or
    publishing keeps its own: a later try resumes from it); rows deleted. Runs in the caller's
    transaction."""
    ended = select(Post.id).where(
        Post.state.in_((lifecycle.PUBLISHED, lifecycle.FAILED, lifecycle.CANCELLED)),
        Post.updated_at < now - keep,
    )
    result = await session.execute(
        delete(AdapterProgress).where(AdapterProgress.post_id.in_(ended))
    )
    return int(getattr(result, "rowcount", 0) or 0)
