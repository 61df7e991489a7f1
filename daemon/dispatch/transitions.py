"""Store-side transitions of the lifecycle: each writes the post's new state together with its
outbox event and attempt row in the caller's transaction (no event without its state change).

The dispatcher's hot path works on *rows* (a post's column values, read by :data:`POST_COLUMNS`)
rather than ORM objects: a transition is a pure function from a row to the values it changes, and
a batch of changes is written with one statement per shape (``executemany``). Loading, tracking
and flushing ORM objects cost several times what the publish itself costs.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, event, func, insert, literal, select, update
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from adapters import base
from daemon import lifecycle
from daemon.dispatch import plan, rawsql
from daemon.dispatch.outcomes import ClaimedPost, Outcome, TryRecord
from daemon.store.models import Brand, OutboxEvent, Page, Post, PublishAttempt

NEVER_RETRY = timedelta(hours=24)

Row = dict[str, Any]

POSTS = cast(Table, Post.__table__)
ATTEMPTS = cast(Table, PublishAttempt.__table__)
PAGES = cast(Table, Page.__table__)
OUTBOX = cast(Table, OutboxEvent.__table__)
OUTBOX_COLUMNS = ("event", "post_id", "user_id", "brand_id", "created_at", "payload")
STARTED_COLUMNS = ("post_id", "number", "instance", "started_at", "outcome")
VIEW_FIELDS = tuple(f.name for f in dataclasses.fields(lifecycle.PostView))
# What a claim, a transition and an event need of a post.
POST_COLUMNS = tuple(
    POSTS.c[name]
    for name in (
        *VIEW_FIELDS,
        "due_at",
        "attempts",
        "first_attempt_at",
        "options",
        "lease_owner",
    )
)


def row_of(post: Post) -> Row:
    """An ORM post's values as a row (for the paths that still load objects)."""
    return {column.key: getattr(post, column.key) for column in POST_COLUMNS}


def view_of(row: Mapping[str, Any]) -> lifecycle.PostView:
    values = {name: row[name] for name in VIEW_FIELDS}
    values["media"] = list(row["media"] or [])
    return lifecycle.PostView(**values)


def view(post: Post) -> lifecycle.PostView:
    return view_of(row_of(post))


async def update_rows(
    conn: AsyncConnection, table: Any, changes: Sequence[tuple[Any, Row]]
) -> None:
    """Write ``(primary key, {column: value})`` pairs: one executemany per set of columns."""
    shapes: dict[tuple[str, ...], list[tuple[Any, ...]]] = defaultdict(list)
    for key, values in changes:
        # Changes made by the same code list their columns in the same order: no sort needed
        # (a different order only costs another statement).
        shapes[tuple(values)].append((*values.values(), key))
    for names, rows in shapes.items():
        await rawsql.update_many(conn, table, names, rows)


class Events:
    """The outbox events of one transaction, written together by :meth:`write` (one query for
    the brands' owners, one multi-row insert) before the transaction commits.

    Their rows (payloads, JSON, driver parameters) are pure Python work: :meth:`build` makes
    them ahead of :meth:`write`, once :meth:`prepare` has read the owners, so that a caller can
    run it while the connection executes another statement of the transaction."""

    BUILD_CHUNK = 64  # events built between two yields to the loop (see build)

    def __init__(self) -> None:
        self._pending: list[tuple[str, lifecycle.PostView, datetime]] = []
        self._owners: dict[str, str | None] | None = None
        self._built: rawsql.Prepared | None = None

    def emit(self, row: Mapping[str, Any], now: datetime) -> None:
        """Record the event of the post's (terminal) state, as it is now."""
        self._pending.append((lifecycle.EVENT_FOR_STATE[row["state"]], view_of(row), now))
        self._built = None

    async def prepare(self, conn: AsyncConnection) -> None:
        """Read the owners of the events' brands (the one query the rows need)."""
        if not self._pending:
            self._owners = {}
            return
        brands = Brand.__table__
        brand_ids = sorted({v.brand_id for _, v, _ in self._pending})
        self._owners = {
            bid: owner
            for bid, owner in await conn.execute(
                select(brands.c.id, brands.c.owner_id).where(brands.c.id.in_(brand_ids))
            )
        }

    async def build(self, dialect: Dialect) -> None:
        """Make the insert's driver parameters (after :meth:`prepare`). Yields to the loop
        every :attr:`BUILD_CHUNK` events, so that a statement started just before makes its
        way to the driver meanwhile."""
        owners = self._owners
        assert owners is not None, "Events.prepare() first"
        rows: list[tuple[Any, ...]] = []
        for start in range(0, len(self._pending), self.BUILD_CHUNK):
            if start:
                await asyncio.sleep(0)
            rows.extend(
                (
                    event,
                    v.id,
                    owners.get(v.brand_id),
                    v.brand_id,
                    now,
                    lifecycle.event_payload(event, v, owners.get(v.brand_id), now),
                )
                for event, v, now in self._pending[start : start + self.BUILD_CHUNK]
            )
        self._built = rawsql.prepare_insert(dialect, OUTBOX, OUTBOX_COLUMNS, rows)

    async def write(self, conn: AsyncConnection) -> int:
        if not self._pending:
            return 0
        if self._owners is None:
            await self.prepare(conn)
        if self._built is None:
            await self.build(conn.dialect)
        assert self._built is not None
        await self._built.run(conn)
        written = len(self._pending)
        self._pending.clear()
        self._owners, self._built = None, None
        return written


# -- transitions: pure, row in, changed values out ------------------------------------------------


def deferred(row: Mapping[str, Any], action: plan.Defer, now: datetime) -> Row:
    lifecycle.check(row["state"], lifecycle.SCHEDULED)
    not_before = action.not_before or now + NEVER_RETRY
    return {
        "not_before": not_before,
        "due_at": max(row["scheduled_at"], not_before),
        "defer_reason": f"{action.code}: {action.reason}",
        "updated_at": now,
    }


def missed(row: Mapping[str, Any], action: plan.Miss, now: datetime) -> Row:
    lifecycle.check(row["state"], lifecycle.FAILED)
    return {
        "state": lifecycle.FAILED,
        "error_code": lifecycle.MISSED,
        "error_message": (
            f"overdue by {action.overdue_seconds} s, past the catch-up window: not published"
        ),
        "updated_at": now,
    }


def claiming(row: Mapping[str, Any], now: datetime, owner: str, until: datetime) -> Row:
    """What a claim changes (:func:`claim_rows` writes the same as one statement)."""
    lifecycle.check(row["state"], lifecycle.PUBLISHING)
    return {
        "state": lifecycle.PUBLISHING,
        "lease_owner": owner,
        "lease_expires_at": until,
        "attempts": row["attempts"] + 1,
        "counted_at": now,
        "first_attempt_at": row["first_attempt_at"] or now,
        "updated_at": now,
    }


REPORTED_PRECISION = timedelta(seconds=1)


def counted_at(outcome: Outcome) -> datetime:
    """When a publish counts in the guardrail windows: never before the platform may count it.
    Platforms report whole seconds at best (Graph's ``created_time``), the real instant being up
    to a second later; counting at the reported second would let the next publish on the page
    land inside the platform's own window. So: the later of the reported time and postd's
    receipt of the answer; for a publish found by reconciliation (answered long after), the
    reported time plus that second."""
    assert outcome.published is not None
    reported = outcome.published.published_at
    if outcome.attempt_outcome == "published":
        return max(reported, outcome.finished_at)
    return min(reported + REPORTED_PRECISION, max(reported, outcome.finished_at))


def finished(row: Mapping[str, Any], outcome: Outcome) -> Row:
    """What a publish outcome changes on its post."""
    now = outcome.finished_at
    if outcome.kind == "in_doubt":
        # Stays publishing and counted; when the lease ends, reconciliation takes it over
        # (at once after an ambiguous publish, later when the platform could not be asked).
        return {
            "updated_at": now,
            "lease_expires_at": outcome.not_before or now,
            "error_code": outcome.code,
            "error_message": outcome.message,
        }
    changes: Row = {"updated_at": now, "lease_owner": None, "lease_expires_at": None}
    if outcome.kind == "published" and outcome.published is not None:
        lifecycle.check(row["state"], lifecycle.PUBLISHED)
        changes.update(
            state=lifecycle.PUBLISHED,
            remote_id=outcome.published.remote_id,
            permalink=outcome.published.permalink,
            published_at=outcome.published.published_at,
            counted_at=counted_at(outcome),
            error_code=None,
            error_message=None,
            defer_reason=None,
        )
        if outcome.first_comment_status is not None:
            # A failed first comment leaves the post published; why is in the error fields.
            changes["first_comment_status"] = outcome.first_comment_status
            if outcome.first_comment_status != "posted":
                changes.update(error_code=outcome.code, error_message=outcome.message)
    elif outcome.kind in ("reschedule", "release"):
        lifecycle.check(row["state"], lifecycle.SCHEDULED)
        not_before = outcome.not_before or now
        changes.update(
            state=lifecycle.SCHEDULED,
            not_before=not_before,
            due_at=max(row["scheduled_at"], not_before),
            counted_at=None,
            error_code=outcome.code,
            error_message=outcome.message,
            defer_reason=outcome.message,
        )
        if outcome.kind == "release":
            changes["attempts"] = max(row["attempts"] - 1, 0)
    else:
        lifecycle.check(row["state"], lifecycle.FAILED)
        changes.update(
            state=lifecycle.FAILED, error_code=outcome.code, error_message=outcome.message
        )
        if not outcome.keep_counted:
            changes["counted_at"] = None
    return changes


# -- claims -------------------------------------------------------------------------------------


async def external_ids(conn: AsyncConnection, page_ids: set[str]) -> dict[str, str | None]:
    if not page_ids:
        return {}
    stmt = select(PAGES.c.id, PAGES.c.external_id).where(PAGES.c.id.in_(sorted(page_ids)))
    return {pid: ext for pid, ext in await conn.execute(stmt)}


def payload(row: Mapping[str, Any], external_id: str | None) -> base.PostPayload:
    media = tuple(
        base.MediaItem(
            url=str(m.get("src") or m.get("url")),
            kind=str(m.get("type", "photo")),
            mime_type=m.get("mime_type"),
        )
        for m in (row["media"] or [])
    )
    return base.PostPayload(
        post_id=row["id"],
        page_id=row["page_id"],
        platform=row["platform"],
        message=row["message"],
        media=media,
        first_comment=row["first_comment"],
        options=dict(row["options"] or {}),
        page_external_id=external_id,
    )


def claimed(
    row: Mapping[str, Any],
    attempt_id: int,
    started_at: datetime,
    external_id: str | None,
    *,
    reconcile: bool = False,
) -> ClaimedPost:
    return ClaimedPost(
        post_id=row["id"],
        page_id=row["page_id"],
        brand_id=row["brand_id"],
        platform=row["platform"],
        scheduled_at=row["scheduled_at"],
        due_at=row["due_at"],
        attempts=row["attempts"],
        attempt_id=attempt_id,
        attempt_started_at=started_at,
        first_attempt_at=row["first_attempt_at"] or started_at,
        payload=payload(row, external_id),
        reconcile=reconcile,
        row=row,  # the caller's own: not changed after the claim
    )


async def claim_rows(
    conn: AsyncConnection,
    rows: Sequence[Row],
    *,
    now: datetime,
    owner: str,
    until: datetime,
    meanwhile: Callable[[], Awaitable[None]] | None = None,
) -> list[ClaimedPost]:
    """Claim ``rows`` (scheduled, decided publishable): publishing under ``owner``'s lease until
    ``until``, one attempt row each. ``meanwhile``: work that does not use the connection, run
    while the posts' UPDATE executes (one statement: on SQLite the driver's thread runs it
    without the GIL, so the loop's Python work and SQLite's proceed side by side)."""
    if not rows:
        return []
    for row in rows:
        row.update(claiming(row, now, owner, until))
    # The same changes as one statement: they differ only by the post's own counters.
    claiming_update = conn.execute(
        update(POSTS)
        .where(POSTS.c.id.in_([row["id"] for row in rows]))
        .values(
            state=lifecycle.PUBLISHING,
            lease_owner=owner,
            lease_expires_at=until,
            attempts=POSTS.c.attempts + 1,
            counted_at=now,
            first_attempt_at=func.coalesce(
                POSTS.c.first_attempt_at, literal(now, POSTS.c.first_attempt_at.type)
            ),
            updated_at=now,
        )
    )
    if meanwhile is None:
        await claiming_update
    else:
        await _alongside(conn, claiming_update, meanwhile)
    started = [(row["id"], row["attempts"], owner, now, "started") for row in rows]
    # One executemany (RETURNING in parameter order would cost one statement per row on
    # SQLite), then the new rows' ids: the newest attempt of each post is the one just written.
    await rawsql.insert_many(conn, ATTEMPTS, STARTED_COLUMNS, started)
    attempt_ids = await latest_attempts(conn, [row["id"] for row in rows])
    pages = await external_ids(conn, {row["page_id"] for row in rows})
    return [claimed(row, attempt_ids[row["id"]], now, pages.get(row["page_id"])) for row in rows]


async def _alongside(
    conn: AsyncConnection, statement: Awaitable[Any], meanwhile: Callable[[], Awaitable[None]]
) -> None:
    """Await ``statement`` (one statement on ``conn``) and run ``meanwhile`` once the statement
    has been handed to the driver: started earlier, the loop's busy Python would hold back the
    driver thread's steps up to it (each waits for the GIL)."""
    handed = asyncio.Event()

    def on_execute(*_args: Any) -> None:
        handed.set()

    sync_conn = conn.sync_connection
    assert sync_conn is not None
    event.listen(sync_conn, "before_cursor_execute", on_execute, once=True)
    running = asyncio.ensure_future(statement)
    waiting = asyncio.ensure_future(handed.wait())
    try:
        await asyncio.wait((running, waiting), return_when=asyncio.FIRST_COMPLETED)
        await meanwhile()
    finally:
        waiting.cancel()
        event.remove(sync_conn, "before_cursor_execute", on_execute)  # (fired or not)
        await running


async def latest_attempts(conn: AsyncConnection, post_ids: Iterable[str]) -> dict[str, int]:
    """The id of each post's newest attempt row."""
    stmt = (
        select(ATTEMPTS.c.post_id, func.max(ATTEMPTS.c.id))
        .where(ATTEMPTS.c.post_id.in_(sorted(post_ids)))
        .group_by(ATTEMPTS.c.post_id)
    )
    return {pid: aid for pid, aid in await conn.execute(stmt)}


# -- outcomes -----------------------------------------------------------------------------------


def _tried(tried: TryRecord, outcome: str) -> Row:
    return {
        "finished_at": tried.finished_at,
        "outcome": outcome,
        "error_class": tried.error_class,
        "error_code": tried.error_code,
        "http_status": tried.http_status,
        "excerpt": (tried.excerpt or "")[:500] or None,
        "duration_ms": max(int((tried.finished_at - tried.started_at).total_seconds() * 1000), 0),
    }


def _final_try(outcome: Outcome) -> TryRecord:
    return TryRecord(
        started_at=outcome.started_at or outcome.claimed.attempt_started_at,
        finished_at=outcome.finished_at,
        error_class=outcome.error_class,
        error_code=outcome.code if outcome.kind != "published" else None,
        http_status=outcome.http_status,
        excerpt=outcome.excerpt,
    )


class _AttemptLog:
    """The attempt-log writes of one group of outcomes."""

    def __init__(self, in_doubt: Mapping[int, Row]) -> None:
        self._in_doubt = in_doubt  # the attempts being reconciled: outcome, finished_at
        self.updates: list[tuple[int, Row]] = []
        self.inserts: list[Row] = []

    def record(self, outcome: Outcome, owner: str) -> int | None:
        """Log the outcome's tries; return the post's new attempt count (None: unchanged).

        The claim's row takes the first try, later (inline) tries get new rows. A reconciled
        attempt keeps what is known of it and adds how it was resolved.
        """
        attempt_id = outcome.claimed.attempt_id
        if outcome.claimed.reconcile:
            known = self._in_doubt[attempt_id]
            self.updates.append(
                (
                    attempt_id,
                    {
                        "outcome": f"{known['outcome']}>{outcome.attempt_outcome}"[:32],
                        "finished_at": known["finished_at"] or outcome.finished_at,
                    },
                )
            )
            return None
        tries = [*outcome.extra_tries, _final_try(outcome)]
        labels = ["retry"] * len(outcome.extra_tries) + [outcome.attempt_outcome]
        self.updates.append((attempt_id, _tried(tries[0], labels[0])))
        number = outcome.claimed.attempts
        for offset, (tried, label) in enumerate(zip(tries[1:], labels[1:], strict=True), 1):
            self.inserts.append(
                {
                    "post_id": outcome.claimed.post_id,
                    "number": number + offset,
                    "instance": owner,
                    "started_at": tried.started_at,
                    **_tried(tried, label),
                }
            )
        return number + len(tries) - 1 if outcome.extra_tries else None

    async def write(self, conn: AsyncConnection) -> None:
        await update_rows(conn, ATTEMPTS, self.updates)
        if self.inserts:
            await conn.execute(insert(ATTEMPTS), self.inserts)


async def apply(
    conn: AsyncConnection,
    outcomes: Sequence[Outcome],
    owner: str,
    *,
    lock: bool = False,
    events: Events | None = None,
) -> list[Outcome]:
    """Apply finished publishes. An outcome applies only to the claim it came from: the post is
    still publishing under this instance's lease *and* its latest attempt is the outcome's. Others
    (the post was reconciled and claimed again meanwhile) are skipped and returned.

    ``events``: collect the outbox events there, for the caller to write before it commits
    (default: written here)."""
    ids = sorted({o.claimed.post_id for o in outcomes})
    fence = select(POSTS.c.id, POSTS.c.state, POSTS.c.lease_owner).where(POSTS.c.id.in_(ids))
    if lock:
        fence = fence.with_for_update()
    current = {pid: (state, owner) for pid, state, owner in await conn.execute(fence)}
    latest = await latest_attempts(conn, current)
    in_doubt_ids = [o.claimed.attempt_id for o in outcomes if o.claimed.reconcile]
    in_doubt: dict[int, Row] = {}
    if in_doubt_ids:
        stmt = select(ATTEMPTS.c.id, ATTEMPTS.c.outcome, ATTEMPTS.c.finished_at).where(
            ATTEMPTS.c.id.in_(in_doubt_ids)
        )
        in_doubt = {r.id: dict(r._mapping) for r in await conn.execute(stmt)}
    lost: list[Outcome] = []
    log = _AttemptLog(in_doubt)
    own_events = events is None
    events = Events() if events is None else events
    post_changes: list[tuple[str, Row]] = []
    reauth: list[tuple[str, Row]] = []
    for outcome in outcomes:
        post_id = outcome.claimed.post_id
        if (
            current.get(post_id) != (lifecycle.PUBLISHING, owner)
            or latest.get(post_id) != outcome.claimed.attempt_id
        ):
            lost.append(outcome)
            continue
        row = {**outcome.claimed.row, "state": lifecycle.PUBLISHING, "lease_owner": owner}
        attempts = log.record(outcome, owner)  # inline retries add tries to the count
        if attempts is not None:
            row["attempts"] = attempts
        changes = finished(row, outcome)
        if attempts is not None:
            changes.setdefault("attempts", attempts)
        row.update(changes)
        post_changes.append((row["id"], changes))
        if outcome.page_needs_reauth:
            reauth.append(
                (row["page_id"], {"status": "needs_reauth", "status_reason": outcome.message})
            )
        if row["state"] in lifecycle.EVENT_FOR_STATE and "state" in changes:
            events.emit(row, outcome.finished_at)
    await update_rows(conn, POSTS, post_changes)
    await log.write(conn)
    await update_rows(conn, PAGES, reauth)
    if own_events:
        await events.write(conn)
    return lost
