"""The adapters' :class:`adapters._progress.ProgressStore` over the ``adapter_progress`` table:
each write commits on its own, so a value is durable before the adapter's next request."""

from __future__ import annotations

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from daemon import clock as clock_mod
from daemon.store import db
from daemon.store.models import AdapterProgress


class DbProgress:
    """Progress rows keyed by (post id, key); ``put`` replaces a key's value."""

    def __init__(self, engine: AsyncEngine, clock: clock_mod.Clock) -> None:
        self._engine = engine
        self._clock = clock

    async def get(self, post_id: str, key: str) -> str | None:
        async with self._engine.connect() as conn:
            conn = await conn.execution_options(**db.single_read_options(self._engine))
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
