"""The sandbox: a simulated platform, so postd runs end to end with no credentials.

It keeps a durable record of what it "published" in its own SQLite file (WAL, synchronous=NORMAL:
a record survives ``kill -9`` of the process; it is committed before :meth:`SandboxAdapter.publish`
returns). Several processes may share one file: each transaction takes SQLite's write lock first, so
rate limits hold across them.

Behaviour tests can rely on:

- ``"[sandbox:reject]"`` in a message raises :class:`~adapters.base.PermanentError`
  (``SANDBOX_REJECTED``), ``"[sandbox:auth]"`` raises :class:`~adapters.base.AuthError`; for posts
  and comments alike, before anything is recorded and whatever the random settings.
- ``rate_limit_per_minute`` > 0: a publish call beyond that many admitted calls on a page within
  the last 60 s of clock time raises ``RetryableError(code="RATE_LIMITED", http_status=429)``
  with ``retry_after`` = seconds until a slot frees.
- ``failure_rate``: that fraction of admitted publish calls raises ``RetryableError(code=
  "SANDBOX_UNAVAILABLE", http_status=503)`` and records nothing.
- ``ambiguous_rate``: that fraction of publish calls records the post, then raises
  :class:`~adapters.base.AmbiguousError` (``http_status=502``).
- Latency (``latency_ms`` ± up to ``latency_jitter_ms``) applies to ``publish`` only, half before
  and half after the record is committed, so a crash or cancellation can land on either side.
  With no latency nothing sleeps.
- ``find_published`` matches by fingerprint only (``post_ref`` is kept for test audits alone) and
  never raises :class:`~adapters.base.UnsupportedAction`.

The database calls are short, local and run inline on the event loop; that keeps the sandbox fast
enough for the benchmark tests.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapters import base

if TYPE_CHECKING:
    from daemon import clock as clocks
    from daemon import config

MAX_MESSAGE_CHARS = 5000
MEDIA_KINDS = frozenset({"photo", "video"})
REJECT_MARKER = "[sandbox:reject]"
AUTH_MARKER = "[sandbox:auth]"
RATE_WINDOW_SECONDS = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS published (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    remote_id TEXT NOT NULL UNIQUE,
    page_id TEXT NOT NULL,
    post_ref TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    message TEXT,
    media TEXT NOT NULL,
    published_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS published_lookup ON published (page_id, fingerprint, published_at);
CREATE TABLE IF NOT EXISTS comments (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    post_remote_id TEXT NOT NULL,
    parent_id TEXT,
    message TEXT NOT NULL,
    author_name TEXT,
    author_username TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS comments_by_post ON comments (post_remote_id, created_at);
CREATE TABLE IF NOT EXISTS publish_calls (page_id TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS publish_calls_by_page ON publish_calls (page_id, at);
"""


@dataclass(frozen=True, slots=True)
class SandboxRecord:
    """One post the sandbox published, for test audits."""

    remote_id: str
    page_id: str
    post_ref: str  # postd's post id; never used to find a post
    fingerprint: str
    message: str | None
    published_at: datetime


def _iso(when: datetime) -> str:
    # Fixed width (always microseconds, always +00:00) so text order is time order.
    return when.astimezone(UTC).isoformat(timespec="microseconds")


def _aware(when: datetime, name: str) -> datetime:
    if when.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware")
    return when


def _permalink(page_id: str, remote_id: str) -> str:
    return f"https://sandbox.postd.invalid/{page_id}/{remote_id}"


def _check_markers(text: str | None) -> None:
    if text and AUTH_MARKER in text:
        raise base.AuthError("sandbox: credentials revoked", http_status=401, excerpt=text)
    if text and REJECT_MARKER in text:
        raise base.PermanentError(
            "sandbox: post rejected", code="SANDBOX_REJECTED", http_status=400, excerpt=text
        )


class SandboxAdapter:
    """The simulated platform ``"sandbox"``; implements :class:`adapters.base.Adapter`."""

    platform: str = "sandbox"

    def __init__(
        self,
        state_path: Path,
        clock: clocks.Clock,
        *,
        latency_ms: float = 0.0,
        latency_jitter_ms: float = 0.0,
        failure_rate: float = 0.0,
        ambiguous_rate: float = 0.0,
        rate_limit_per_minute: int = 0,
        seed: int | None = None,
    ) -> None:
        self._clock = clock
        self._latency_ms = latency_ms
        self._jitter_ms = latency_jitter_ms
        self._failure_rate = failure_rate
        self._ambiguous_rate = ambiguous_rate
        self._rate_limit = rate_limit_per_minute
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._pending: dict[
            asyncio.AbstractEventLoop,
            list[tuple[base.PostPayload, bool, asyncio.Future[base.Published]]],
        ] = {}
        Path(state_path).parent.mkdir(parents=True, exist_ok=True)
        self._db: sqlite3.Connection | None = sqlite3.connect(
            state_path, timeout=30.0, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        # A burst's groups would cross SQLite's default 1,000-page autocheckpoint every few
        # groups, each checkpoint copying and syncing on the caller's loop; every ~40 MB of WAL
        # instead. What a commit guarantees is the same (WAL, synchronous=NORMAL).
        self._db.execute("PRAGMA wal_autocheckpoint=10000")
        with self._transaction() as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)

    @classmethod
    def from_settings(
        cls, settings: config.SandboxSettings, state_path: Path, clock: clocks.Clock
    ) -> SandboxAdapter:
        """Build from the ``[sandbox]`` config section (its own ``state_path`` is resolved by the
        caller and passed in)."""
        return cls(
            state_path,
            clock,
            latency_ms=settings.latency_ms,
            latency_jitter_ms=settings.latency_jitter_ms,
            failure_rate=settings.failure_rate,
            ambiguous_rate=settings.ambiguous_rate,
            rate_limit_per_minute=settings.rate_limit_per_minute,
            seed=settings.seed,
        )

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, IMMEDIATE so no other process interleaves a read-then-write."""
        with self._lock:
            if self._db is None:
                raise RuntimeError("SandboxAdapter is closed")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # --- publishing ---------------------------------------------------------------------------

    async def publish(self, post: base.PostPayload) -> base.Published:
        problems = self.validate(post)
        if problems:
            raise base.PermanentError("; ".join(problems), code="SANDBOX_INVALID", http_status=400)
        _check_markers(post.message)
        latency = self._draw_latency()
        fails = self._draw(self._failure_rate)
        ambiguous = self._draw(self._ambiguous_rate)
        if latency:
            await asyncio.sleep(latency / 2)
        published = await self._record(post, fails=fails)
        if latency:
            await asyncio.sleep(latency / 2)
        if ambiguous:
            raise base.AmbiguousError(
                "sandbox: bad gateway after the post was accepted",
                http_status=502,
                excerpt="502 Bad Gateway",
            )
        return published

    def _draw(self, rate: float) -> bool:
        return rate > 0 and self._random.random() < rate

    def _draw_latency(self) -> float:
        """Seconds to simulate, or 0.0."""
        if self._latency_ms <= 0 and self._jitter_ms <= 0:
            return 0.0
        jitter = self._random.uniform(-self._jitter_ms, self._jitter_ms) if self._jitter_ms else 0.0
        return max(0.0, self._latency_ms + jitter) / 1000.0

    async def _record(self, post: base.PostPayload, *, fails: bool) -> base.Published:
        """Admit and record one publish call, and answer once the record is committed.

        Calls arriving in the same event-loop iteration share one transaction (group commit,
        as a platform's own storage would do): a commit per call would cost more than all the
        rest of a sandbox publish.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[base.Published] = loop.create_future()
        pending = self._pending.setdefault(loop, [])
        pending.append((post, fails, future))
        if len(pending) == 1:
            loop.call_soon(self._commit_pending, loop)
        return await future

    def _commit_pending(self, loop: asyncio.AbstractEventLoop) -> None:
        batch = self._pending.pop(loop, [])
        answers: list[base.Published | base.AdapterError | None] = [None] * len(batch)
        try:
            with self._transaction() as db:
                now = self._clock.now()
                admitted: list[int] = []
                for index, (post, fails, _) in enumerate(batch):
                    try:
                        self._admit(db, post, now, fails=fails)
                    except base.AdapterError as exc:
                        answers[index] = exc
                    else:
                        admitted.append(index)
                posts = [batch[index][0] for index in admitted]
                remote_ids = self._insert_posts(db, posts, now)
                for index, post, remote_id in zip(admitted, posts, remote_ids, strict=True):
                    answers[index] = base.Published(
                        remote_id, _permalink(post.page_id, remote_id), now
                    )
        except Exception as exc:  # nothing was recorded: every caller gets the error
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, _, future), answer in zip(batch, answers, strict=True):
            if future.done():  # the caller gave up (timeout): the platform has it anyway
                continue
            if isinstance(answer, base.Published):
                future.set_result(answer)
            else:  # every call is answered above: an error when it was not recorded
                future.set_exception(answer or RuntimeError("sandbox: call not answered"))

    def _admit(
        self, db: sqlite3.Connection, post: base.PostPayload, now: datetime, *, fails: bool
    ) -> None:
        """Raise what the platform answers a call it does not admit; else admit it."""
        retry_after = self._rate_limited(db, post.page_id, now) if self._rate_limit else None
        if retry_after is not None:
            raise base.RetryableError(
                "sandbox: too many publish calls on this page",
                code="RATE_LIMITED",
                retry_after=retry_after,
                http_status=429,
            )
        if fails:
            raise base.RetryableError(
                "sandbox: service unavailable", code="SANDBOX_UNAVAILABLE", http_status=503
            )

    def _rate_limited(self, db: sqlite3.Connection, page_id: str, now: datetime) -> float | None:
        """Seconds until a slot frees when the page is over its limit; else admit the call."""
        at = now.timestamp()
        window_start = at - RATE_WINDOW_SECONDS
        db.execute("DELETE FROM publish_calls WHERE at <= ?", (window_start,))
        calls = [
            float(row[0])
            for row in db.execute(
                "SELECT at FROM publish_calls WHERE page_id = ? ORDER BY at", (page_id,)
            )
        ]
        if len(calls) >= self._rate_limit:
            frees_at = calls[len(calls) - self._rate_limit] + RATE_WINDOW_SECONDS
            return max(frees_at - at, 0.001)
        db.execute("INSERT INTO publish_calls (page_id, at) VALUES (?, ?)", (page_id, at))
        return None

    def _insert_posts(
        self, db: sqlite3.Connection, posts: list[base.PostPayload], now: datetime
    ) -> list[str]:
        """Record the admitted calls of one group; return their remote ids. One executemany;
        on a remote id collision, row by row again, drawing another id where one collides."""
        at = _iso(now)
        rows = [
            (_remote_id(), p.page_id, p.post_id, p.fingerprint(), p.message, _media_json(p), at)
            for p in posts
        ]
        db.execute("SAVEPOINT record")
        try:
            db.executemany(_INSERT_PUBLISHED, rows)
        except sqlite3.IntegrityError:
            db.execute("ROLLBACK TO record")
            rows = [_insert_one(db, row) for row in rows]
        db.execute("RELEASE record")
        return [row[0] for row in rows]

    async def find_published(
        self,
        post: base.PostPayload,
        since: datetime,
        exclude_remote_ids: AbstractSet[str] = frozenset(),
    ) -> base.Published | None:
        rows = self._query(
            "SELECT remote_id, published_at FROM published"
            " WHERE page_id = ? AND fingerprint = ? AND published_at >= ?"
            " ORDER BY published_at, seq",
            (post.page_id, post.fingerprint(), _iso(_aware(since, "since"))),
        )
        for remote_id, published_at in rows:
            if remote_id not in exclude_remote_ids:
                return base.Published(
                    remote_id,
                    _permalink(post.page_id, remote_id),
                    datetime.fromisoformat(published_at),
                )
        return None

    # --- comments -----------------------------------------------------------------------------

    async def post_comment(
        self, post: base.PostPayload, remote_id: str, message: str
    ) -> base.Comment:
        _check_markers(message)
        if not self._query(
            "SELECT 1 FROM published WHERE remote_id = ? AND page_id = ?",
            (remote_id, post.page_id),
        ):
            raise base.PermanentError(
                f"sandbox: no post {remote_id} on page {post.page_id}",
                code="SANDBOX_NOT_FOUND",
                http_status=404,
            )
        return self._insert_comment(remote_id, message, None, post.page_external_id or post.page_id)

    async def list_comments(
        self, post: base.PostPayload, remote_id: str, since: datetime | None = None
    ) -> list[base.Comment]:
        since_iso = _iso(_aware(since, "since")) if since is not None else ""
        rows = self._query(
            "SELECT id, post_remote_id, message, author_name, author_username, created_at,"
            " parent_id FROM comments WHERE post_remote_id = ? AND created_at >= ?"
            " ORDER BY created_at, seq",
            (remote_id, since_iso),
        )
        return [_comment(row) for row in rows]

    async def reply_to_comment(
        self, post: base.PostPayload, comment_id: str, message: str
    ) -> base.Comment:
        _check_markers(message)
        rows = self._query("SELECT post_remote_id FROM comments WHERE id = ?", (comment_id,))
        if not rows:
            raise base.PermanentError(
                f"sandbox: no comment {comment_id}", code="SANDBOX_NOT_FOUND", http_status=404
            )
        author = post.page_external_id or post.page_id
        return self._insert_comment(rows[0][0], message, comment_id, author)

    def add_comment(
        self,
        remote_id: str,
        message: str,
        *,
        author_name: str | None = "Sandbox Visitor",
        author_username: str | None = "visitor",
        parent_id: str | None = None,
    ) -> base.Comment:
        """Test helper: simulate someone else commenting on the published post ``remote_id``."""
        if not self._query("SELECT 1 FROM published WHERE remote_id = ?", (remote_id,)):
            raise LookupError(f"sandbox: no published post {remote_id}")
        return self._insert_comment(remote_id, message, parent_id, author_username, author_name)

    def _insert_comment(
        self,
        post_remote_id: str,
        message: str,
        parent_id: str | None,
        author_username: str | None,
        author_name: str | None = None,
    ) -> base.Comment:
        comment = base.Comment(
            id=f"sbxc_{secrets.token_hex(8)}",
            post_remote_id=post_remote_id,
            message=message,
            author_name=author_name,
            author_username=author_username,
            created_at=self._clock.now(),
            parent_id=parent_id,
        )
        with self._transaction() as db:
            db.execute(
                "INSERT INTO comments (id, post_remote_id, parent_id, message, author_name,"
                " author_username, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    comment.id,
                    post_remote_id,
                    parent_id,
                    message,
                    author_name,
                    author_username,
                    _iso(comment.created_at),
                ),
            )
        return comment

    # --- the rest of the contract -------------------------------------------------------------

    async def refresh_credentials(self, credentials: Mapping[str, str]) -> Mapping[str, str]:
        return dict(credentials)

    def limits(self) -> base.PlatformLimits:
        return base.PlatformLimits()

    def validate(self, post: base.PostPayload) -> list[str]:
        problems = []
        if not (post.message or "").strip() and not post.media:
            problems.append("a sandbox post needs a message or media")
        if post.message is not None and len(post.message) > MAX_MESSAGE_CHARS:
            problems.append(
                f"message is {len(post.message)} characters; the sandbox allows {MAX_MESSAGE_CHARS}"
            )
        for index, item in enumerate(post.media):
            if item.kind not in MEDIA_KINDS:
                problems.append(f"media[{index}]: kind {item.kind!r} is not photo or video")
            if not item.url:
                problems.append(f"media[{index}]: url is empty")
        return problems

    # --- audits and lifecycle -----------------------------------------------------------------

    def published_records(self, page_id: str | None = None) -> list[SandboxRecord]:
        """Everything the sandbox published (on ``page_id`` if given), oldest first."""
        sql = (
            "SELECT remote_id, page_id, post_ref, fingerprint, message, published_at FROM published"
        )
        params: tuple[str, ...] = ()
        if page_id is not None:
            sql += " WHERE page_id = ?"
            params = (page_id,)
        rows = self._query(sql + " ORDER BY published_at, seq", params)
        return [
            SandboxRecord(
                remote_id=remote_id,
                page_id=page,
                post_ref=post_ref,
                fingerprint=fingerprint,
                message=message,
                published_at=datetime.fromisoformat(published_at),
            )
            for remote_id, page, post_ref, fingerprint, message, published_at in rows
        ]

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with self._lock:
            if self._db is None:
                raise RuntimeError("SandboxAdapter is closed")
            return self._db.execute(sql, params).fetchall()

    def close(self) -> None:
        """Close the database; idempotent. Records already returned are durable."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    async def aclose(self) -> None:
        self.close()


_INSERT_PUBLISHED = (
    "INSERT INTO published (remote_id, page_id, post_ref, fingerprint, message, media,"
    " published_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
)


def _remote_id() -> str:
    return f"sbx_{secrets.token_hex(8)}"


def _media_json(post: base.PostPayload) -> str:
    if not post.media:
        return "[]"
    return json.dumps(
        [{"url": m.url, "kind": m.kind, "mime_type": m.mime_type} for m in post.media]
    )


def _insert_one(db: sqlite3.Connection, row: tuple[Any, ...]) -> tuple[Any, ...]:
    while True:
        try:
            db.execute(_INSERT_PUBLISHED, row)
        except sqlite3.IntegrityError:  # a remote id collision: draw another
            row = (_remote_id(), *row[1:])
            continue
        return row


def _comment(row: tuple[Any, ...]) -> base.Comment:
    return base.Comment(
        id=row[0],
        post_remote_id=row[1],
        message=row[2],
        author_name=row[3],
        author_username=row[4],
        created_at=datetime.fromisoformat(row[5]),
        parent_id=row[6],
    )
