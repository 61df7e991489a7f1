"""Cross-process wake-ups on PostgreSQL: ``NOTIFY postd_due, '<iso instant>'`` when a post is
scheduled or moved; every daemon LISTENs and re-arms its timer. On SQLite there is one daemon per
file and the safety sweep covers posts added by the CLI (min_lead_seconds >> sweep_seconds).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime

import psycopg
import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from daemon import timefmt

CHANNEL = "postd_due"
log = structlog.get_logger("postd.notify")


async def due(session: AsyncSession, when: datetime) -> None:
    """Tell every daemon a post is due at ``when`` (delivered when the transaction commits)."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(
            text("SELECT pg_notify(:channel, :when)"),
            {"channel": CHANNEL, "when": timefmt.iso(when)},
        )


async def listen(dsn: str, on_due: Callable[[datetime], None], stop: asyncio.Event) -> None:
    """Deliver every NOTIFY to ``on_due`` until ``stop`` is set; reconnects after failures."""
    backoff = 1.0
    while not stop.is_set():
        try:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                await conn.execute(f"LISTEN {CHANNEL}")
                backoff = 1.0
                async for note in conn.notifies():
                    when = timefmt.aware(note.payload.replace("Z", "+00:00"))
                    if when is not None:
                        on_due(when)
                    if stop.is_set():
                        return
        except (psycopg.Error, OSError) as exc:
            log.warning("listen_failed", error=str(exc), retry_in=backoff)
            try:
                await asyncio.wait_for(stop.wait(), timeout=backoff)
            except TimeoutError:
                backoff = min(backoff * 2, 30.0)
