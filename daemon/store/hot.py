"""The API's hot statements, run on SQLite's sync connections without SQLAlchemy's execution.

A schedule runs about seven one-row statements (the token, the page, the guardrail counts, the
idempotency key, the monthly count, the post), a list of pending posts one more. On a SQLite
file each takes ~10 µs in the driver,
and SQLAlchemy's execution around it (the compiled-cache lookup, an execution context, the
parameters' dict, the result's metadata and fetch strategy) took ~40-70 µs more (measured with
``bench/api_asgi.py``'s database). A :class:`Hot` statement is compiled once per dialect; on a
:class:`~daemon.store.sync_sqlite.SyncReads` or ``SyncConnection`` it goes straight to the
pysqlite cursor, its parameters and result values through the same bind and result processors
SQLAlchemy would use, so values are stored and read exactly as SQLAlchemy stores and reads them.
On any other connection (PostgreSQL, the async engines) it is an ordinary ``execute``.

Only statements that need nothing of SQLAlchemy's execution can be hot: no Python-side column
defaults to compute (:class:`Hot` checks when it compiles, and runs anything else through
SQLAlchemy). An ``IN`` list (an expanding parameter) gets a plan per list length. A row is a
named tuple on the fast path and SQLAlchemy's ``Row`` otherwise: use attributes, indexes or
``_asdict()``.

:func:`detached` builds an ORM object from a row without the ORM's attribute events, for objects
that are only read (a ~20 µs constructor becomes ~2 µs).
"""

from __future__ import annotations

import sqlite3
from collections import namedtuple
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement

from daemon.store.sync_sqlite import SyncReads

Processor = Callable[[Any], Any]
M = TypeVar("M")
_REQUIRED = object()  # a bind parameter the caller must give
_configured: set[type] = set()  # mapped classes whose mappers are configured (detached)


@dataclass(frozen=True, slots=True)
class _Plan:
    sql: str
    # per placeholder: its parameter's key (None: a constant, the default), default, processor,
    # and index in it (an IN list's)
    binds: tuple[tuple[str | None, Any, Processor | None, int | None], ...]
    row: Any  # the named tuple of a result row (None: no result columns)
    procs: tuple[tuple[int, Processor], ...]  # per result column that has one, its processor

    def parameters(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        out = []
        for key, default, proc, index in self.binds:
            if key is None:
                value = default
            elif default is _REQUIRED:
                value = params[key] if index is None else params[key][index]
            else:
                value = params.get(key, default)
            out.append(value if proc is None else proc(value))
        return tuple(out)

    def rows(self, raw: list[tuple[Any, ...]]) -> list[Any]:
        make, procs = self.row._make, self.procs
        if not procs:
            return [make(r) for r in raw]
        out = []
        for r in raw:
            values = list(r)
            for at, proc in procs:
                values[at] = proc(values[at])
            out.append(make(values))
        return out


def _compile(
    statement: ClauseElement, keys: tuple[str, ...], dialect: Dialect, params: Mapping[str, Any]
) -> tuple[_Plan | None, tuple[str, ...]]:
    """The statement's plan for ``params``, and the keys of its IN lists (whose lengths the plan
    is for); None when it needs SQLAlchemy's execution."""
    compiled: Any = statement.compile(dialect=dialect, column_keys=list(keys) or None)
    if not compiled.positional:
        return None, ()
    if getattr(compiled, "insert_prefetch", None) or getattr(compiled, "update_prefetch", None):
        return None, ()  # Python-side column defaults, computed by SQLAlchemy's execution
    # The caller's IN lists (a constant one, like ``state IN ('a', 'b')``, has its values)
    lists = tuple(sorted(b.key for b in compiled.post_compile_params if b.required))
    sql, order = compiled.string, compiled.positiontup
    # an IN list's placeholder: its bind and its index in the list
    expanded_from: dict[str, tuple[Any, int]] = {}
    if compiled.post_compile_params or compiled.literal_execute_params:  # render now, once
        given = {compiled.bind_names[b]: None for b in compiled.binds.values() if b.required}
        given |= {
            compiled.bind_names[b]: params[b.key]
            for b in compiled.post_compile_params
            if b.required
        }
        expanded = compiled.construct_expanded_state(given)
        sql, order = expanded.statement, expanded.positiontup
        by_key = {b.key: b for b in compiled.binds.values()}
        for key, names in expanded.parameter_expansion.items():
            bind = compiled.binds[key] if key in compiled.binds else by_key[key]
            expanded_from |= {name: (bind, at) for at, name in enumerate(names)}
    binds = []
    for name in order:
        bind, index = expanded_from[name] if name in expanded_from else (compiled.binds[name], None)
        key = bind.key
        proc = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if index is None:
            default = _REQUIRED if bind.required else bind.effective_value
        elif bind.required:  # the caller's list
            default = _REQUIRED
        else:  # a constant list: its value, whatever the caller passes
            key, default, index = None, bind.effective_value[index], None
        binds.append((key, default, proc, index))
    columns = compiled._result_columns
    row = _row_type(tuple(c.keyname for c in columns)) if columns else None
    procs = []
    if columns:
        for at, column in enumerate(columns):
            proc = column.type.dialect_impl(dialect).result_processor(dialect, None)
            if proc is not None:
                procs.append((at, proc))
    return _Plan(sql, tuple(binds), row, tuple(procs)), lists


def _row_type(names: tuple[str, ...]) -> Any:
    return namedtuple("HotRow", names, rename=True)


class Hot:
    """A statement run as the module says; build it once (module level), run it often."""

    __slots__ = ("_lists", "_plans", "statement")

    def __init__(self, statement: Any) -> None:
        self.statement = statement
        self._plans: dict[tuple[Any, ...], _Plan | None] = {}
        self._lists: tuple[str, ...] | None = None  # its IN lists' keys, once compiled

    def _plan(self, conn: SyncReads, params: Mapping[str, Any]) -> _Plan | None:
        dialect = conn.sync.dialect
        # An INSERT's columns are its parameters' keys; other statements name their binds.
        keys = tuple(params) if getattr(self.statement, "is_insert", False) else ()
        lengths = () if not self._lists else tuple(len(params[k]) for k in self._lists)
        cache_key = (dialect.name, keys, lengths)
        try:
            return self._plans[cache_key]
        except KeyError:
            plan, self._lists = _compile(self.statement, keys, dialect, params)
            lengths = tuple(len(params[k]) for k in self._lists)
            self._plans[(dialect.name, keys, lengths)] = plan
            return plan

    async def _raw(self, conn: Any, params: Mapping[str, Any]) -> tuple[_Plan, Any] | None:
        if not isinstance(conn, SyncReads):
            return None
        plan = self._plan(conn, params)
        if plan is None:
            return None
        parameters = plan.parameters(params)
        try:
            return plan, conn.driver.execute(plan.sql, parameters)
        except sqlite3.Error as exc:  # raised as SQLAlchemy raises it (IntegrityError, ...)
            raise DBAPIError.instance(plan.sql, parameters, exc, sqlite3.Error) from exc

    async def all(self, conn: Any, params: Mapping[str, Any]) -> list[Any]:
        """Every result row."""
        got = await self._raw(conn, params)
        if got is None:
            return list((await conn.execute(self.statement, params)).all())
        plan, cursor = got
        return plan.rows(cursor.fetchall())

    async def first(self, conn: Any, params: Mapping[str, Any]) -> Any:
        """The first result row, or None."""
        got = await self._raw(conn, params)
        if got is None:
            return (await conn.execute(self.statement, params)).first()
        plan, cursor = got
        raw = cursor.fetchall()  # all: a RETURNING statement finishes only once read through
        return plan.rows(raw[:1])[0] if raw else None

    async def one(self, conn: Any, params: Mapping[str, Any]) -> Any:
        """The one result row (a bug when there is none)."""
        row = await self.first(conn, params)
        if row is None:
            raise LookupError("a Hot.one() statement returned no row")
        return row

    async def run(self, conn: Any, params: Mapping[str, Any]) -> int:
        """Run a statement without result rows; the rows it changed."""
        got = await self._raw(conn, params)
        if got is None:
            return int((await conn.execute(self.statement, params)).rowcount)
        return int(got[1].rowcount)


def detached(cls: type[M], values: Mapping[str, Any]) -> M:
    """An instance of the mapped class ``cls`` holding ``values``, as the ORM's loader would
    make it but in no session: to read, not to add to a session."""
    if cls not in _configured:  # the ORM sets up its attributes on first use: do that first
        sa_inspect(cls)._check_configure()
        _configured.add(cls)
    obj: M = cls._sa_class_manager.new_instance()  # type: ignore[attr-defined]
    obj.__dict__.update(values)
    return obj
