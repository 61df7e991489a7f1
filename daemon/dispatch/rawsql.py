"""The dispatcher's hot ``executemany`` statements, without SQLAlchemy's per-row parameter work.

For each row of an ``executemany`` SQLAlchemy builds a dict of every bind parameter, then the
driver's parameters through each type's bind processor: on a group of a few hundred outcomes that
cost more than the statements themselves. Here a statement is compiled once per dialect and each
row, a tuple of values in the caller's column order, becomes the driver's parameters in one pass
through the same bind processors, so values are stored exactly as SQLAlchemy would store them.
The statement still runs through the connection (``exec_driver_sql``): same transaction, same
engine events.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from sqlalchemy import Table, bindparam, insert, update
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import ClauseElement

Processor = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class _Plan:
    sql: str
    order: tuple[int, ...]  # per placeholder, its value's index in a row
    procs: tuple[tuple[int, Processor], ...]  # per placeholder that has one, its bind processor
    keys: tuple[str, ...] | None  # the driver's parameter names (None: positional)

    def params(self, rows: Sequence[Sequence[Any]]) -> list[Any]:
        """The driver's parameters of each row."""
        pick, procs = itemgetter(*self.order), self.procs
        out: list[Any] = []
        for row in rows:
            values = list(pick(row)) if len(self.order) > 1 else [row[self.order[0]]]
            for at, proc in procs:
                values[at] = proc(values[at])
            if self.keys is None:
                out.append(tuple(values))
            else:
                out.append(dict(zip(self.keys, values, strict=True)))
        return out


_plans: dict[tuple[Hashable, str, str], _Plan] = {}


def _compile(stmt: ClauseElement, names: Sequence[str], dialect: Dialect) -> _Plan:
    compiled: Any = stmt.compile(dialect=dialect)
    order = list(compiled.positiontup) if compiled.positional else list(compiled.binds)
    procs = []
    for at, name in enumerate(order):
        proc = compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
        if proc is not None:
            procs.append((at, proc))
    keys = None
    if not compiled.positional:
        keys = tuple(compiled.escaped_bind_names.get(name, name) for name in order)
    return _Plan(compiled.string, tuple(names.index(name) for name in order), tuple(procs), keys)


def _plan(
    dialect: Dialect, key: Hashable, build: Callable[[], ClauseElement], names: Sequence[str]
) -> _Plan:
    cache_key = (key, dialect.name, dialect.paramstyle)
    plan = _plans.get(cache_key)
    if plan is None:
        plan = _plans[cache_key] = _compile(build(), names, dialect)
    return plan


async def executemany(
    conn: AsyncConnection,
    key: Hashable,
    build: Callable[[], ClauseElement],
    names: Sequence[str],
    rows: Sequence[Sequence[Any]],
) -> None:
    """Run ``build()`` (cached under ``key``), whose bind parameters are ``names``, once per
    row; each row gives the values of ``names`` in that order."""
    if not rows:
        return
    plan = _plan(conn.dialect, key, build, names)
    await conn.exec_driver_sql(plan.sql, plan.params(rows))


@dataclass(frozen=True, slots=True)
class Prepared:
    """An ``executemany`` whose driver parameters are already made (see :func:`prepare_insert`)."""

    sql: str
    params: list[Any]

    async def run(self, conn: AsyncConnection) -> None:
        if self.params:
            await conn.exec_driver_sql(self.sql, self.params)


def _insert(table: Table, names: tuple[str, ...]) -> tuple[Hashable, Callable[[], ClauseElement]]:
    def build() -> ClauseElement:
        return insert(table).values({c: bindparam(c, type_=table.c[c].type) for c in names})

    return ("insert", table.name, names), build


def prepare_insert(
    dialect: Dialect, table: Table, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> Prepared:
    """:func:`insert_many`'s statement and driver parameters, made now and run later (pure
    Python work: it can be done while the connection runs another statement)."""
    names = tuple(columns)
    plan = _plan(dialect, *_insert(table, names), names)
    return Prepared(plan.sql, plan.params(rows))


async def insert_many(
    conn: AsyncConnection, table: Table, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    """Insert rows, each the values of ``columns`` in that order."""
    names = tuple(columns)
    await executemany(conn, *_insert(table, names), names, rows)


async def update_many(
    conn: AsyncConnection, table: Table, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    """Update rows by primary key ``id``: each row gives the values of ``columns`` in that
    order, then the key."""
    names = (*(f"v_{c}" for c in columns), "k_id")

    def build() -> ClauseElement:
        return (
            update(table)
            .where(table.c.id == bindparam("k_id", type_=table.c.id.type))
            .values({c: bindparam(f"v_{c}", type_=table.c[c].type) for c in columns})
        )

    await executemany(conn, ("update", table.name, tuple(columns)), build, names, rows)
