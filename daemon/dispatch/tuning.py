"""Per-connection SQLite settings for the connections the dispatcher writes through.

A burst wave touches a thousand or so pages of ``posts`` and its indexes (the page and brand
indexes at random), far more than SQLite's default 2 MiB page cache holds, so every statement
read them again from the OS; and each wave's commit crossed the default 1,000-page WAL
autocheckpoint, so nearly every commit also copied the WAL into the database file and synced it
(about as long again as the commit's own sync). Neither setting changes what a commit
guarantees: each still syncs its WAL frames (``synchronous=FULL``) before it returns, and a
checkpoint only moves committed frames.

Applied once per DBAPI connection (the pool keeps the mark in the connection's ``info``), on
SQLite only; the other connections of the engine keep SQLite's defaults.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncConnection

MARK = "postd_dispatch_tuned"
PRAGMAS = (
    # At most 16 MiB of pages, allocated as they are read (the burst benchmark's 20,000-post
    # database is 40 MB).
    "PRAGMA cache_size=-16384",
    # Checkpoint every ~40 MB of WAL instead of every 4 MB: a page rewritten by many waves is
    # copied once. The WAL stays bounded; readers look pages up in its hash index.
    "PRAGMA wal_autocheckpoint=10000",
)


async def for_dispatch(conn: AsyncConnection) -> None:
    """Give ``conn`` (in a transaction or not) the dispatcher's settings, once per connection."""
    if conn.dialect.name != "sqlite":
        return
    info = conn.info
    if info.get(MARK):
        return
    for pragma in PRAGMAS:
        await conn.exec_driver_sql(pragma)
    info[MARK] = True
