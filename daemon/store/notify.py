"""Cross-process wake-ups on PostgreSQL: ``NOTIFY postd_due, '<iso instant>'`` when a post is
scheduled or moved, ``NOTIFY postd_webhooks, '<iso instant>'`` when webhook deliveries become due
(new ones, retries); every daemon LISTENs and re-arms its timers. On SQLite there is one daemon
per file and the safety sweep covers posts added by the CLI (min_lead_seconds >> sweep_seconds).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from datetime import datetime

import psycopg
import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from daemon import timefmt

CHANNEL = "postd_due"
WEBHOOKS_CHANNEL = "postd_webhooks"
log = structlog.get_logger("postd.notify")


async def due(
    session: AsyncSession | AsyncConnection, when: datetime, channel: str = CHANNEL
) -> None:
    """Tell every daemon something is due at ``when`` (delivered when the transaction commits):
    a post (``CHANNEL``) or webhook deliveries (``WEBHOOKS_CHANNEL``)."""
    bind = session.get_bind() if isinstance(session, AsyncSession) else session
    if bind.dialect.name == "postgresql":
        await session.execute(
            text("SELECT pg_notify(:channel, :when)"),
            {"channel": channel, "when": timefmt.iso(when)},
        )


async def listen(
    dsn: str,
    on_due: Callable[[datetime], None],
    stop: asyncio.Event,
    *,
    also: Mapping[str, Callable[[datetime], None]] | None = None,
) -> None:
    """Deliver every NOTIFY on ``CHANNEL`` to ``on_due`` (and on each channel of ``also`` to its
    callback) until ``stop`` is set; reconnects after failures."""
    handlers = {CHANNEL: on_due, **(also or {})}
    backoff = 1.0
    while not stop.is_set():
        try:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                for channel in handlers:
                    await conn.execute(f"LISTEN {channel}")
                backoff = 1.0
                async for note in conn.notifies():
                    when = timefmt.aware(note.payload.replace("Z", "+00:00"))
                    handler = handlers.get(note.channel)
                    if when is not None and handler is not None:
                        handler(when)
                    if stop.is_set():
                        return
        except (psycopg.Error, OSError) as exc:
            log.warning("listen_failed", error=str(exc), retry_in=backoff)
            try:
                await asyncio.wait_for(stop.wait(), timeout=backoff)
            except TimeoutError:
                backoff = min(backoff * 2, 30.0)
