"""The ``/api/v1`` gate: a pure ASGI middleware in front of every API route.

For a request under ``/api/v1`` (except the public ``/api/v1/``, ``/api/v1/errors`` and
``/api/v1/openapi.json``; everything else passes straight through):

1. authenticate the token (``daemon.tokens.authenticate``) in one short read that takes no
   write lock (SQLite: no ``BEGIN IMMEDIATE``; PostgreSQL: autocommit) and leave the
   :class:`~daemon.api.deps.Principal` in ``scope["state"]["principal"]``;
2. ``daemon.api.limits.admit`` (rate and quota headers, or RATE_LIMITED / DAILY_LIMIT_EXCEEDED /
   SANDBOX_EXHAUSTED);
3. run the app, through ``daemon.api.idempotency.wrap`` for POST, PATCH and DELETE;
4. add the rate headers to every response, error responses included, and render any ApiError
   raised in here as the catalog's JSON;
5. record one audit row per authenticated request, and the token's use.

Audit rows and token uses (``request_count``, ``last_used_at``) are kept in memory and written
by one task owned by the gate (:class:`AuditLog`), every 0.5 s or 200 rows, in one transaction:
a write transaction per request would serialise every API call behind SQLite's single writer
and an fsync. The cost is that up to 0.5 s of rows is lost if the process is killed; ``aclose``
flushes on a clean stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import traceback
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

import structlog
from sqlalchemy import CursorResult, Table, bindparam, delete, insert, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from daemon import tokens
from daemon.api import auth, errors, idempotency, limits
from daemon.api.deps import Principal
from daemon.store import db, writer
from daemon.store.models import ApiToken, AuditEntry, UTCDateTime

if TYPE_CHECKING:
    from daemon.app import App

log = structlog.get_logger("postd.api")

# limits.admit(postd_app, principal, method, path, now, rider) -> rate headers, or raises
# ApiError; runs ``rider`` in its counting transaction if the request is admitted
Admit = Callable[
    [Any, Principal, str, str, datetime, limits.Rider | None], Awaitable[dict[str, str]]
]
# idempotency.wrap(postd_app, principal, scope, receive, send, call_next, admit)
Wrap = Callable[
    [Any, Principal, Scope, Receive, Send, ASGIApp, idempotency.Admission], Awaitable[None]
]

PREFIX = "/api/v1"
PUBLIC_PATHS = frozenset({PREFIX, f"{PREFIX}/errors", f"{PREFIX}/openapi.json"})
IDEMPOTENT_METHODS = frozenset({"POST", "PATCH", "DELETE"})


def guarded(path: str) -> bool:
    """True for the paths (relative to the application's root) the gate authenticates."""
    if path != PREFIX and not path.startswith(PREFIX + "/"):
        return False
    return path.rstrip("/") not in PUBLIC_PATHS


def route_path(scope: Scope) -> str:
    """The request path below the application's root path (a reverse proxy's ``--root-path``),
    the same whether the gate wraps the whole app or is mounted at /api/v1: a mount keeps the
    full ``path`` and the top-level root in ``app_root_path``."""
    path = str(scope["path"])
    base = str(scope.get("app_root_path", scope.get("root_path", "")) or "")
    if base and path.startswith(base + "/"):
        return path[len(base) :]
    return path


# -- the audit log ------------------------------------------------------------------------------

_AUDIT = cast(Table, AuditEntry.__table__)
_TOKENS = cast(Table, ApiToken.__table__)
_TOUCH = (
    update(_TOKENS)
    .where(_TOKENS.c.id == bindparam("t_id"))
    .values(
        request_count=_TOKENS.c.request_count + bindparam("t_n"),
        last_used_at=bindparam("t_at", type_=UTCDateTime()),
    )
)


@dataclasses.dataclass(slots=True)
class _Use:
    count: int
    last: datetime


class AuditLog:
    """Audit rows and token uses, batched in memory; one owned task writes them.

    The task starts with the first row and sleeps (no query) while nothing is pending. A failed
    write is logged and retried; beyond ``max_pending`` rows the oldest are dropped (and
    counted in the log) rather than growing without bound while the database is down.
    """

    def __init__(
        self,
        owner: Any,
        *,
        interval: float = 0.05,
        batch: int = 200,
        max_pending: int = 100_000,
        backoff: float = 2.0,
    ) -> None:
        self._owner = owner  # the daemon: its group writer (daemon/store/writer.py) or engine
        # Small and frequent writes: one of 0.5 s of requests (~150 rows at 300/s) held the
        # group writer long enough to add ~30 ms to the API's p99 (bench/README.md).
        self._interval = interval
        self._backoff = backoff
        self._batch = batch
        self._max_pending = max_pending
        self._rows: list[dict[str, Any]] = []
        self._uses: dict[str, _Use] = {}
        self._pending = asyncio.Event()
        self._full = asyncio.Event()
        self._stop = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def pending_uses(self, token_id: str) -> int:
        use = self._uses.get(token_id)
        return 0 if use is None else use.count

    def use(self, token_id: str, now: datetime) -> None:
        use = self._uses.get(token_id)
        if use is None:
            self._uses[token_id] = _Use(1, now)
        else:
            use.count += 1
            use.last = max(use.last, now)
        self._wake()

    def record(self, row: dict[str, Any]) -> None:
        if len(self._rows) >= self._max_pending:
            del self._rows[: self._batch]
            log.error("audit_rows_dropped", rows=self._batch)
        self._rows.append(row)
        if len(self._rows) >= self._batch:
            self._full.set()
        self._wake()

    def _wake(self) -> None:
        self._pending.set()
        if self._task is None and not self._stop.is_set():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="postd-audit")
            self._task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._task = None
        if not task.cancelled() and task.exception() is not None:
            log.error("audit_task_died", error=repr(task.exception()))

    async def _run(self) -> None:
        while not self._stop.is_set():
            await self._pending.wait()
            if not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self._interval)
            if not await self.flush() and not self._stop.is_set():
                with contextlib.suppress(TimeoutError):  # back off while the database fails
                    await asyncio.wait_for(self._stop.wait(), self._backoff)

    async def flush(self) -> bool:
        """Write what is pending now, in one transaction; False when that failed (the rows are
        kept for the next try)."""
        async with self._lock:
            rows, uses = self._rows, self._uses
            self._rows, self._uses = [], {}
            self._pending.clear()
            self._full.clear()
            if not rows and not uses:
                return True
            touches = [{"t_id": k, "t_n": u.count, "t_at": u.last} for k, u in uses.items()]

            async def job(conn: AsyncConnection) -> None:
                if rows:
                    await conn.execute(insert(_AUDIT), rows)
                if touches:
                    await conn.execute(_TOUCH, touches)

            try:
                await writer.write(self._owner, job)
            except Exception as exc:
                log.error("audit_flush_failed", rows=len(rows), error=type(exc).__name__)
                self._rows[:0] = rows
                for token_id, use in uses.items():
                    mine = self._uses.setdefault(token_id, _Use(0, use.last))
                    mine.count += use.count
                    mine.last = max(mine.last, use.last)
                self._pending.set()
                return False
            return True

    async def aclose(self) -> None:
        """Stop the task and write what is left."""
        self._stop.set()
        self._pending.set()
        self._full.set()
        task, self._task = self._task, None
        if task is not None:
            with contextlib.suppress(Exception):
                await task
        await self.flush()


async def purge_audit(session: AsyncSession, now: datetime, days: int) -> int:
    """Delete audit rows older than ``days``; returns how many (schedule it, e.g. hourly)."""
    result = await session.execute(
        delete(AuditEntry)
        .where(AuditEntry.created_at < now - timedelta(days=days))
        .execution_options(synchronize_session=False)
    )
    return int(cast(CursorResult[Any], result).rowcount)


# -- the gate -----------------------------------------------------------------------------------


def _log_failure(event: str, scope: Scope, exc: BaseException) -> None:
    """Log an unexpected failure without frame locals: they hold the request's headers, and so
    its token (log.exception renders locals on a console)."""
    log.error(
        event,
        path=scope.get("path"),
        error=type(exc).__name__,
        stack="".join(traceback.format_tb(exc.__traceback__)),
    )


class _Responder:
    """Wraps ``send``: adds the rate headers to the response (unless the response set them
    itself, e.g. an error's Retry-After) and remembers its status."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._extra: list[tuple[bytes, bytes]] = []
        self.status = 0

    def add_headers(self, headers: dict[str, str]) -> None:
        self._extra += [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()
        ]

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
            if self._extra:
                headers = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                headers += [(k, v) for k, v in self._extra if k not in present]
                message = {**message, "headers": headers}
        await self._send(message)


class ApiGate:
    """Authentication, limits, idempotency and audit for ``/api/v1``; see the module docstring.

    Owns an :class:`AuditLog`; call :meth:`aclose` on shutdown, before the engine is disposed.
    """

    def __init__(
        self,
        app: ASGIApp,
        postd_app: App,
        *,
        admit: Admit | None = None,
        wrap: Wrap | None = None,
    ) -> None:
        self.app = app
        self.postd = postd_app
        self._trusted = auth.parse_trusted_proxies(postd_app.settings.api.trusted_proxies)
        # Tests may pass fakes; the daemon uses the real limits and idempotency layers.
        self._admit: Admit = admit or limits.admit
        self._wrap: Wrap = wrap or idempotency.wrap
        self.audit = AuditLog(postd_app)

    async def aclose(self) -> None:
        await self.audit.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not guarded(route_path(scope)):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        now = self.postd.clock.now()
        ip = auth.client_ip(scope, self._trusted)
        try:
            principal = await self._authenticate(scope, ip, now)
        except tokens.AuthError as err:
            await errors.response(err)(scope, receive, send)
            if err.token_id is not None:  # a known token refused: worth the owner's audit log
                self._audit(scope, err.token_id, err.user_id, err.status, ip, now, started)
            return
        except Exception as exc:
            _log_failure("api_auth_failed", scope, exc)
            await errors.response(errors.ApiError("SERVER_ERROR"))(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        responder = _Responder(send)
        try:
            await self._serve(principal, scope, receive, responder, now)
        finally:
            status = responder.status or 500
            self._audit(scope, principal.token_id, principal.user_id, status, ip, now, started)

    async def _authenticate(self, scope: Scope, ip: str | None, now: datetime) -> Principal:
        raw = auth.token_from_headers(scope.get("headers", ()))
        async with db.reading(self.postd) as conn:
            principal = await tokens.authenticate(conn, raw, ip, now, touch=False)
        pending = self.audit.pending_uses(principal.token_id)
        self.audit.use(principal.token_id, now)
        if pending:
            principal = dataclasses.replace(
                principal, request_count=principal.request_count + pending
            )
        return principal

    async def _serve(
        self, principal: Principal, scope: Scope, receive: Receive, send: _Responder, now: datetime
    ) -> None:
        """Limits, then the app (through the idempotency layer for writes, which admits the
        request itself: its key's claim rides in the admission's transaction)."""
        method = scope["method"]
        try:
            path = route_path(scope)

            async def admit(rider: limits.Rider | None = None) -> None:
                send.add_headers(await self._admit(self.postd, principal, method, path, now, rider))

            if method in IDEMPOTENT_METHODS:
                await self._wrap(self.postd, principal, scope, receive, send, self.app, admit)
            else:
                await admit()
                await self.app(scope, receive, send)
        except errors.ApiError as err:
            if send.status:
                raise
            await errors.response(err)(scope, receive, send)
        except Exception as exc:
            if send.status:
                raise  # the app already answered (FastAPI sends its 500, then re-raises)
            _log_failure("api_request_failed", scope, exc)
            await errors.response(errors.ApiError("SERVER_ERROR"))(scope, receive, send)

    def _audit(
        self,
        scope: Scope,
        token_id: str,
        user_id: str | None,
        status: int,
        ip: str | None,
        now: datetime,
        started: float,
    ) -> None:
        state = scope.get("state") or {}
        denied = state.get("scope_denied")
        self.audit.record(
            {
                "token_id": token_id,
                "user_id": user_id,
                "method": str(scope["method"])[:8],
                "path": route_path(scope)[:2000],
                "status": status,
                "ip": ip,
                "duration_ms": round((time.perf_counter() - started) * 1000),
                "scope_denied": str(denied)[:64] if denied else None,
                "created_at": now,
            }
        )
