"""The database: one async engine for SQLite or PostgreSQL, migrations, and the schema check.

SQLite runs in WAL mode with ``synchronous=FULL`` (NORMAL can lose a "published" mark on power
loss, which would become a repost) and every transaction starts with ``BEGIN IMMEDIATE`` so a
writer never has to upgrade a read lock (which WAL answers with SQLITE_BUSY_SNAPSHOT). PostgreSQL
uses psycopg 3 and ``FOR UPDATE SKIP LOCKED`` for claims (see :mod:`daemon.store.repo`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

import sqlalchemy
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool

from daemon import config as config_mod
from daemon.errors import ConfigError, InstanceLockError, NotMigratedError
from daemon.store import inline_sqlite
from daemon.store.sync_sqlite import Reads, SyncReads


def async_url(url: str, base_dir: Path) -> str:
    """Normalise a configured URL to the async driver postd uses, resolving relative paths."""
    if url.startswith("sqlite"):
        path = config_mod.sqlite_path(url)
        if path is None:
            return "sqlite+aiosqlite:///:memory:"
        if not path.is_absolute():
            path = (base_dir / path).resolve()
        return f"sqlite+aiosqlite:///{path}"
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    if url.startswith("postgresql+"):
        raise ConfigError("database.url", "use postgresql:// (postd drives it with psycopg 3)")
    raise ConfigError("database.url", "must be a sqlite:/// or postgresql:// URL")


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" hook below issue BEGIN itself (the driver's implicit BEGIN is
    # DEFERRED); these pragmas are per connection.
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    if conn.get_execution_options().get(NO_BEGIN):
        return  # a single read statement: SQLite runs it in its own implicit transaction
    conn.exec_driver_sql("BEGIN IMMEDIATE")


NO_BEGIN = "postd_single_read"


def _sqlite_begin_sync(conn: Connection) -> None:
    """:func:`_sqlite_begin` for a sync pysqlite connection: the ``BEGIN IMMEDIATE`` straight
    on the driver (through SQLAlchemy it cost an execution context per transaction)."""
    if conn.get_execution_options().get(NO_BEGIN):
        return
    driver = conn.connection.dbapi_connection
    assert driver is not None
    driver.execute("BEGIN IMMEDIATE")


# Engines whose connections run inline (create_engine(inline=True)), and the read engines
# (create_read_engine), by their sync engine.
_INLINE: weakref.WeakSet[Any] = weakref.WeakSet()
_READ_ONLY: weakref.WeakSet[Any] = weakref.WeakSet()


def single_read_options(engine: AsyncEngine) -> dict[str, Any]:
    """Execution options for one read-only statement with no transaction around it: no BEGIN on
    SQLite (so no write lock), autocommit on PostgreSQL (no BEGIN/ROLLBACK round trips). This is
    what keeps an idle daemon at one statement per sweep."""
    if engine.dialect.name == "sqlite":
        return {NO_BEGIN: True}
    return {"isolation_level": "AUTOCOMMIT"}


def create_engine(
    url: str,
    base_dir: Path = Path("."),
    *,
    pool_size: int = 10,
    inline: bool = False,
    reset_on_return: bool = True,
) -> AsyncEngine:
    """An engine on the configured database. ``inline`` (SQLite only): its connections run
    each call on the awaiting thread instead of a thread of their own
    (:mod:`daemon.store.inline_sqlite`), for a loop that may block."""
    full = async_url(url, base_dir)
    if full.startswith("sqlite"):
        if ":memory:" in full:
            engine = create_async_engine(full, poolclass=NullPool)
        else:
            # Room for every request in flight to hold a connection: a checkout beyond the pool
            # and its overflow waits, and an overflow connection is closed when given back.
            extra: dict[str, Any] = {"pool_size": pool_size, "max_overflow": 6 * pool_size}
            if not reset_on_return:
                extra["pool_reset_on_return"] = None
            if inline:
                extra["async_creator"] = inline_sqlite.creator(full.partition(":///")[2])
            engine = create_async_engine(full, **extra)
            if inline:
                _INLINE.add(engine.sync_engine)
        event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    # No pre-ping: it is a round trip per checkout. A connection that died with the server fails
    # one statement, is invalidated by the pool, and the next attempt reconnects.
    return create_async_engine(full, pool_size=pool_size, max_overflow=pool_size)


def _sqlite_read_only(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA query_only=ON")
    cursor.close()


def create_read_engine(url: str, base_dir: Path = Path(".")) -> AsyncEngine | None:
    """The API's reads on a SQLite file: inline, read-only connections (None elsewhere: use the
    main engine).

    A WAL reader never waits for a lock, so running its statements on the daemon's loop cannot
    stall it behind a writer; what it saves is the round trips to a driver thread (several per
    statement), which cost more than the statements. ``query_only`` makes a write through it an
    error rather than a lock wait on the loop."""
    full = async_url(url, base_dir)
    if not full.startswith("sqlite") or ":memory:" in full:
        return None
    # Nothing to roll back when a connection goes back to the pool: it never began anything.
    engine = create_engine(url, base_dir, inline=True, reset_on_return=False)
    event.listen(engine.sync_engine, "connect", _sqlite_read_only)
    _READ_ONLY.add(engine.sync_engine)
    # Never a BEGIN (IMMEDIATE would take the write lock): each statement is its own implicit
    # read transaction, as with single_read_options() on the main engine.
    event.remove(engine.sync_engine, "begin", _sqlite_begin)
    return engine


def _sync_sqlite(url: str, base_dir: Path, **pool: Any) -> Engine | None:
    """A pysqlite engine on the configured SQLite file (None elsewhere, or in memory)."""
    full = async_url(url, base_dir)
    if not full.startswith("sqlite") or ":memory:" in full:
        return None
    return sqlalchemy.create_engine(
        full.replace("sqlite+aiosqlite://", "sqlite://", 1),
        connect_args={"check_same_thread": False},  # dispose() may run on another thread
        **pool,
    )


def create_sync_engine(
    url: str, base_dir: Path = Path("."), *, pool_size: int = 1
) -> Engine | None:
    """A sync engine on a SQLite file with postd's pragmas and ``BEGIN IMMEDIATE`` (None
    elsewhere), for :class:`daemon.store.sync_sqlite.SyncConnection`."""
    engine = _sync_sqlite(url, base_dir, pool_size=pool_size, max_overflow=16 * pool_size)
    if engine is not None:
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_begin_sync)
    return engine


def create_sync_reads(url: str, base_dir: Path = Path(".")) -> Engine | None:
    """A sync engine of read-only connections on a SQLite file, for :class:`SyncReads` (None
    elsewhere). No transaction: each statement is its own implicit read transaction (pysqlite
    with ``isolation_level=None`` never BEGINs), so nothing to roll back on return either."""
    engine = _sync_sqlite(url, base_dir, pool_size=4, max_overflow=64, pool_reset_on_return=None)
    if engine is not None:  # the async read engine's connect hooks (create_read_engine)
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "connect", _sqlite_read_only)
    return engine


@contextlib.asynccontextmanager
async def _sync_reading(engine: Engine, snapshot: bool) -> AsyncIterator[Reads]:
    with engine.connect() as conn:
        reads = SyncReads(conn)
        if not snapshot:
            yield reads
            return
        # One read transaction, on the driver's connection (SQLAlchemy's would cost more than
        # the statements): the block's statements see one snapshot, and SQLite validates the
        # connection's page cache once instead of before each statement, which re-reads every
        # page after each commit of the group writer (~130 µs a statement, bench/README.md).
        driver = reads.driver
        driver.execute("BEGIN")
        try:
            yield reads
        finally:
            driver.execute("ROLLBACK")


def read_engine(owner: Any) -> AsyncEngine:
    """The engine for reads with no transaction: ``owner``'s read engine where it has one
    (:func:`create_read_engine`), else its engine."""
    engine: AsyncEngine = getattr(owner, "read_engine", None) or owner.engine
    return engine


def is_inline(engine: AsyncEngine) -> bool:
    return engine.sync_engine in _INLINE


@contextlib.asynccontextmanager
async def single_read(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection of ``engine`` for reads with no transaction around them
    (:func:`single_read_options`; a read engine needs none, it never BEGINs), given back when
    the block ends."""
    conn = await engine.connect()
    try:
        if engine.sync_engine not in _READ_ONLY:
            conn = await conn.execution_options(**single_read_options(engine))
        yield conn
    finally:
        await closing(engine, conn)


def reading(owner: Any, *, snapshot: bool = False) -> contextlib.AbstractAsyncContextManager[Reads]:
    """A connection for reads with no transaction: ``owner``'s :class:`SyncReads` on a SQLite
    file (its ``sync_reads`` engine, :func:`create_sync_reads`), else :func:`single_read` on
    its :func:`read_engine`. ``snapshot`` (SQLite; for a block of several statements): one
    read transaction around them all, so they see one state of the database."""
    sync: Engine | None = getattr(owner, "sync_reads", None)
    if sync is not None:
        return _sync_reading(sync, snapshot)
    return single_read(read_engine(owner))


async def closing(engine: AsyncEngine, resource: AsyncConnection | AsyncSession) -> None:
    """Close a connection or session of ``engine``. SQLAlchemy's ``async with`` closes through
    a new task under ``asyncio.shield`` (so a cancelled caller still returns the connection);
    an inline connection closes without ever suspending, so it is closed here directly: the
    task cost more than the read, and while it waited its turn the connection stayed out of
    the pool, so 64 requests in flight kept opening overflow connections (and their pragmas)
    and closing them again."""
    if is_inline(engine):
        await resource.close()
    else:
        await _shielded_close(resource)


async def _shielded_close(resource: AsyncConnection | AsyncSession) -> None:
    await resource.__aexit__(None, None, None)


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[Any]:
    return async_sessionmaker(engine, expire_on_commit=False)


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


def _alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
    return cfg


def _upgrade(conn: Connection) -> None:
    cfg = _alembic_config()
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, "head")


def _revisions(conn: Connection) -> tuple[str | None, str | None]:
    current = MigrationContext.configure(conn).get_current_revision()
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    return current, head


def _sqlite_revision(path: Path) -> str | None:
    # Read-only, through the stdlib: checking must not create the file or switch it to WAL.
    if not path.exists():
        raise NotMigratedError(f"database file {path} does not exist: run `postd migrate` first")
    try:
        with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as conn:
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.OperationalError:
        return None
    return None if row is None else str(row[0])


async def migrate(engine: AsyncEngine) -> tuple[str | None, str | None]:
    """Upgrade the schema to head; returns (revision before, head)."""
    async with engine.connect() as conn:
        before, _ = await conn.run_sync(_revisions)
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)
    async with engine.connect() as conn:
        _, head = await conn.run_sync(_revisions)
    return before, head


async def require_migrated(engine: AsyncEngine) -> None:
    """Raise NotMigratedError unless the schema is at the code's head revision.

    A SQLite file that does not exist is not created by this check."""
    database = engine.url.database
    if engine.dialect.name == "sqlite" and database and database != ":memory:":
        current = _sqlite_revision(Path(database))
        head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    else:
        async with engine.connect() as conn:
            current, head = await conn.run_sync(_revisions)
    if current != head:
        where = "not initialised" if current is None else f"at revision {current}"
        raise NotMigratedError(
            f"database is {where}, this postd needs revision {head}: run `postd migrate` first"
        )


class InstanceLock:
    """An exclusive lock file beside a SQLite database: one daemon per SQLite file.

    SQLite is the single-instance backend (scale out on PostgreSQL), so while this lock is held
    every lease in the database belongs to a dead process and can be reconciled at once.
    """

    def __init__(self, db_path: Path) -> None:
        self.path = db_path.with_name(db_path.name + ".lock")
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise InstanceLockError(
                f"another postd is running on this SQLite database (lock {self.path})"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None
