"""Stripe-compatible ``Idempotency-Key`` for POST / PATCH / DELETE, per token, kept 24 h.

The first request with a key inserts an in-progress row (status NULL, ``locked_until`` = now +
30 s): the primary key (token_id, key) is the lock, so of N concurrent requests with one key
exactly one runs. That claim rides in the transaction that counts the request against its
limits (``limits.admit``): a keyed request costs no group-writer transaction more than one
without a key. While it runs it keeps the lock fresh (every 10 s); then it stores status,
headers and body (a 5xx too, as Stripe does) and only then sends the response, so whoever saw a
response can have it replayed. Other requests with the key get:

- same method, path and body, finished: the stored response plus ``Idempotency-Replayed: true``;
- the same, still running: up to ~2 s of waiting for it, then the replay or 409
  IDEMPOTENCY_KEY_IN_USE;
- a different method, path or body: 409 IDEMPOTENCY_KEY_MISMATCH.

A handler whose action is one group-writer job can store its response in that job's transaction
(:func:`current`, :func:`store_in`): then the action and its stored response commit together, and
a process that dies between the two cannot leave a done action under a key that a retry, once the
lock expires, would run again (:func:`keep_in`, :func:`kept`). ``POST /posts/schedule`` and
``POST /webhooks`` do so. A handler that answers only
later (``POST /posts/publish`` waits for the platform) records the post it inserted on the key
in the insert's transaction instead (:func:`remember_in`); a retry that takes the key over from a
dead owner finds it in ``current().resumed`` and waits for that post rather than making another.
``POST /posts/schedule/bulk`` commits its items one by one and records each item's post on the
key with it (``remember_in(..., item=i)``); a take-over finds them in ``current().made`` and
answers those items with their posts instead of scheduling them again.

A running row whose lock expired (its process died) is taken over, and a row older than
``api.idempotency_hours`` counts as absent. A 429 is not stored (the key is released): it means
"not done, retry later", and the SDK retries it with the same key. multipart/form-data requests
skip all of this, as the API document says. ``created_at`` is the owner's fencing token: every
takeover moves it forward, and an owner writes only while it is still its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import functools
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import and_, bindparam, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from daemon.api import errors
from daemon.api.deps import Principal
from daemon.api.limits import Rider
from daemon.store import db, writer
from daemon.store.hot import Hot
from daemon.store.models import IdempotencyKey

log = structlog.get_logger("postd.idempotency")

METHODS = frozenset({"POST", "PATCH", "DELETE"})
MAX_KEY_LENGTH = 120
LOCK = timedelta(seconds=30)
HEARTBEAT_SECONDS = 10.0
# How long a duplicate waits for the running request: ~2 s in all, short polls first.
POLL_DELAYS: tuple[float, ...] = (0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.2, 0.3, 0.4, 0.5, 0.3)
# The waiting between polls; a seam for tests.
pause: Callable[[float], Awaitable[None]] = asyncio.sleep
REPLAYED = (b"idempotency-replayed", b"true")
# The request's admission (see wrap): counts it, with a Rider in its transaction, or raises.
Admission = Callable[[Rider | None], Awaitable[None]]

# -- pure ------------------------------------------------------------------------------------


class Action(enum.Enum):
    CLAIM = "claim"  # no live row: insert one and run
    TAKE_OVER = "take_over"  # expired row or dead owner: claim the row and run
    REPLAY = "replay"
    MISMATCH = "mismatch"
    WAIT = "wait"  # the same request is running


@dataclass(frozen=True, slots=True)
class Seen:
    """What a request finds stored under its key."""

    request_hash: str
    status: int | None
    created_at: datetime
    locked_until: datetime | None
    response_body: bytes | None = None
    response_headers: dict[str, Any] = field(default_factory=dict)
    post_id: str | None = None  # the post a running publish inserted (remember_in)
    made: dict[str, str] | None = None  # a running bulk's posts so far, by item (remember_in)


@dataclass(frozen=True, slots=True)
class Resumed:
    """What a take-over carries on with: what its dead owner made (nothing for a new action)."""

    post_id: str | None = None
    made: dict[int, str] = field(default_factory=dict)


def resumes(seen: Seen, now: datetime, ttl: timedelta) -> Resumed:
    """What a take-over of ``seen`` carries on with: the post(s) its dead owner inserted, unless
    the row is past ``ttl`` (then the key is free for a new action)."""
    if seen.created_at <= now - ttl:
        return Resumed()
    return Resumed(seen.post_id, {int(i): post for i, post in (seen.made or {}).items()})


def decide(seen: Seen | None, request_hash: str, now: datetime, ttl: timedelta) -> Action:
    """What a request with ``request_hash`` does about the row it found (None: no row)."""
    if seen is None:
        return Action.CLAIM
    if seen.created_at <= now - ttl:
        return Action.TAKE_OVER
    if seen.request_hash != request_hash:
        return Action.MISMATCH
    if seen.status is not None:
        return Action.REPLAY
    if seen.locked_until is None or seen.locked_until <= now:
        return Action.TAKE_OVER
    return Action.WAIT


def valid_key(key: str) -> bool:
    return 1 <= len(key) <= MAX_KEY_LENGTH


def request_hash(method: str, path: str, body: bytes) -> str:
    digest = hashlib.sha256(f"{method.upper()}\n{path}\n".encode())
    digest.update(body)
    return digest.hexdigest()


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def full_path(scope: Scope) -> str:
    query = bytes(scope.get("query_string", b"")).decode("latin-1")
    return f"{scope['path']}?{query}" if query else str(scope["path"])


# -- the response, captured and replayed -----------------------------------------------------


@dataclass
class Captured:
    status: int | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    complete: bool = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
            self.headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", ())]
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")
            self.complete = not message.get("more_body", False)

    def fail(self) -> None:
        """Become the catalog's 500 (the inner app raised or sent no whole response)."""
        rendered = errors.response(errors.ApiError("SERVER_ERROR"))
        self.status, self.headers = rendered.status_code, list(rendered.raw_headers)
        self.body, self.complete = bytearray(rendered.body), True


def _header_rows(headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {"raw": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in headers]}


async def _send_response(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _raw_headers(stored: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in stored.get("raw", [])]


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None when the client went away."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _refeed(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


# -- the store -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    token_id: str
    key: str
    method: str
    path: str
    hash: str

    def where(self) -> Any:
        return (IdempotencyKey.token_id == self.token_id) & (IdempotencyKey.key == self.key)


@dataclass(frozen=True, slots=True)
class Outcome:
    action: Action  # CLAIM: ours to run; REPLAY / MISMATCH; WAIT: still running after ~2 s
    seen: Seen | None = None
    owned: datetime | None = None  # CLAIM: the row's created_at, our fencing token
    resumed: Resumed = Resumed()  # CLAIM by take-over: what the dead owner inserted


_COLUMNS = (
    IdempotencyKey.request_hash,
    IdempotencyKey.status,
    IdempotencyKey.created_at,
    IdempotencyKey.locked_until,
    IdempotencyKey.response_body,
    IdempotencyKey.response_headers,
    IdempotencyKey.post_id,
    IdempotencyKey.made,
)


def _seen(row: Any) -> Seen | None:
    return None if row is None else Seen(*row)


async def _read(postd_app: Any, req: Request) -> Seen | None:
    async with db.reading(postd_app) as conn:
        return _seen((await conn.execute(select(*_COLUMNS).where(req.where()))).first())


@functools.cache
def _claim_statement(dialect: str) -> Hot:
    """``INSERT ... ON CONFLICT DO NOTHING RETURNING key``, built and compiled once (a
    :class:`~daemon.store.hot.Hot` statement); executed with the row as its parameters
    (``.values()`` per call would build a new statement every time)."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return Hot(insert(IdempotencyKey).on_conflict_do_nothing().returning(IdempotencyKey.key))


_MINE = and_(
    IdempotencyKey.token_id == bindparam("m_token"),
    IdempotencyKey.key == bindparam("m_key"),
    IdempotencyKey.created_at == bindparam("m_owned"),
)
_STORE = (
    update(IdempotencyKey)
    .where(_MINE, IdempotencyKey.status.is_(None))
    .values(
        status=bindparam("s_status"),
        response_body=bindparam("s_body"),
        response_headers=bindparam("s_headers"),
        locked_until=None,
    )
)
_HOT_STORE = Hot(_STORE)
_RELEASE = delete(IdempotencyKey).where(_MINE)


def _store_params(
    req: Request, owned: datetime, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> dict[str, Any]:
    return {
        "m_token": req.token_id,
        "m_key": req.key,
        "m_owned": owned,
        "s_status": status,
        "s_body": body,
        "s_headers": _header_rows(headers),
    }


@dataclass(slots=True)
class Slot:
    """The key a running request owns; ``stored`` once its response is committed with its
    action (:func:`store_in`), which spares the separate write after the handler."""

    req: Request
    owned: datetime
    stored: bool = False
    resumed: str | None = None  # the post of a dead owner's run (remember_in) to carry on with
    made: dict[int, str] = field(default_factory=dict)  # a bulk's posts by item, committed


_CURRENT: contextvars.ContextVar[Slot | None] = contextvars.ContextVar(
    "postd_idempotency_slot", default=None
)


def current() -> Slot | None:
    """The key the running request owns: None without a key, or outside :func:`wrap`."""
    return _CURRENT.get()


async def store_in(
    conn: AsyncConnection,
    slot: Slot,
    status: int,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
) -> None:
    """Store the response of ``slot``'s request in ``conn``'s transaction, the one that performs
    its action; the caller sets ``slot.stored`` once that transaction is committed. Raises 409
    IDEMPOTENCY_KEY_IN_USE when the key is no longer this request's (its lock expired and a
    retry took it over): the caller's transaction must then roll back, action included."""
    params = _store_params(slot.req, slot.owned, status, headers, body)
    _still_mine(await _HOT_STORE.run(conn, params), slot)


async def keep_in(conn: AsyncConnection, slot: Slot | None, response: Response) -> None:
    """:func:`store_in` of ``response`` under ``slot`` (:func:`current`, read in the request's
    own context: a group-writer job runs in another), if the request has a key; then call
    :func:`kept` once ``conn``'s transaction is committed."""
    if slot is not None:
        body = bytes(response.body)
        await store_in(conn, slot, response.status_code, list(response.raw_headers), body)


def kept(slot: Slot | None) -> None:
    """The transaction that stored ``slot``'s response (:func:`keep_in`) is committed: nothing
    is left to write after the handler."""
    if slot is not None:
        slot.stored = True


_REMEMBER = update(IdempotencyKey).where(_MINE, IdempotencyKey.status.is_(None))


async def remember_in(
    conn: AsyncConnection, slot: Slot, post_id: str, item: int | None = None
) -> None:
    """Record, in ``conn``'s transaction (the one inserting the post), that ``slot``'s request
    made ``post_id``: should its process die before the response is stored, the retry that takes
    the key over gets it as ``Slot.resumed`` and waits for that post instead of making another.
    With ``item``, the post of that item of a bulk request, kept with the items before it (the
    retry gets them as ``Slot.made``); call :func:`made` once ``conn``'s transaction is
    committed. Raises 409 IDEMPOTENCY_KEY_IN_USE when the key is no longer this request's."""
    params = {"m_token": slot.req.token_id, "m_key": slot.req.key, "m_owned": slot.owned}
    if item is None:
        values: dict[str, Any] = {"post_id": post_id}
    else:
        values = {"made": {str(i): p for i, p in {**slot.made, item: post_id}.items()}}
    result = await conn.execute(_REMEMBER.values(**values), params)
    _still_mine(result.rowcount, slot)


def made(slot: Slot | None, item: int, post_id: str) -> None:
    """The transaction that recorded ``item``'s post (``remember_in(..., item=item)``) is
    committed: the next item's record includes it."""
    if slot is not None:
        slot.made[item] = post_id


def _still_mine(rowcount: int, slot: Slot) -> None:
    if rowcount != 1:
        log.warning("idempotency_lock_lost", token_id=slot.req.token_id, path=slot.req.path)
        raise errors.ApiError("IDEMPOTENCY_KEY_IN_USE")


class _Claim:
    """The claim of a key, a group-writer job: insert (or take over) the row and own it, or
    report what it says. It runs riding in the admission count's transaction (``wrap`` hands
    it to ``limits.admit``), or, when it did not run there, in one of its own (:func:`_claim`)."""

    def __init__(self, req: Request, now: datetime, ttl: timedelta) -> None:
        self.req, self.now, self.ttl = req, now, ttl
        self._got: Outcome | tuple[int, Resumed] | None = None

    def _fields(self) -> dict[str, Any]:
        req, now = self.req, self.now
        return {
            "request_hash": req.hash,
            "method": req.method,
            "path": req.path,
            "status": None,
            "response_body": None,
            "response_headers": {},
            "created_at": now,
            "locked_until": now + LOCK,
        }

    async def __call__(self, conn: AsyncConnection) -> None:
        self._got = await self._run(conn)

    async def _run(self, conn: AsyncConnection) -> Outcome | tuple[int, Resumed]:
        """The outcome, or the rowcount of a take-over and the post it resumes."""
        req, now, ttl, fields = self.req, self.now, self.ttl, self._fields()
        row = {"token_id": req.token_id, "key": req.key, **fields}
        if await _claim_statement(conn.dialect.name).first(conn, row) is not None:
            return Outcome(Action.CLAIM, owned=now)
        seen = _seen((await conn.execute(select(*_COLUMNS).where(req.where()))).first())
        action = decide(seen, req.hash, now, ttl)
        if action is Action.CLAIM or seen is None:
            return Outcome(Action.WAIT)  # deleted between the two statements: look again
        if action is not Action.TAKE_OVER:
            return Outcome(action, seen)
        resumed = resumes(seen, now, ttl)
        made = {str(i): post for i, post in resumed.made.items()} or None
        taken = await conn.execute(
            update(IdempotencyKey)
            .where(req.where(), IdempotencyKey.created_at == seen.created_at)
            .values(**fields, post_id=resumed.post_id, made=made)
        )
        return int(taken.rowcount), resumed

    def outcome(self) -> Outcome | None:
        """What the claim found, once committed; None if it has not run."""
        got, req = self._got, self.req
        if got is None or isinstance(got, Outcome):
            return got
        taken, resumed = got
        if taken != 1:
            return Outcome(Action.WAIT)
        log.info(
            "idempotency_key_taken_over",
            token_id=req.token_id,
            path=req.path,
            post_id=resumed.post_id,
            made=len(resumed.made),
        )
        return Outcome(Action.CLAIM, owned=self.now, resumed=resumed)


async def _claim(postd_app: Any, req: Request, now: datetime, ttl: timedelta) -> Outcome:
    """A :class:`_Claim` in a transaction of its own."""
    claim = _Claim(req, now, ttl)
    await writer.write(postd_app, claim)
    outcome = claim.outcome()
    assert outcome is not None
    return outcome


async def _acquire(
    postd_app: Any, req: Request, ttl: timedelta, claimed: Outcome | None = None
) -> Outcome:
    """Own the key, or what to answer instead (waiting ~2 s for a running duplicate first);
    ``claimed``: what the claim that rode in the admission found, if it ran."""
    clock = postd_app.clock
    outcome = claimed if claimed is not None else await _claim(postd_app, req, clock.now(), ttl)
    delays = list(POLL_DELAYS)
    while outcome.action is Action.WAIT and delays:
        await pause(delays.pop(0))
        seen = await _read(postd_app, req)
        action = decide(seen, req.hash, clock.now(), ttl)
        if action in (Action.CLAIM, Action.TAKE_OVER):
            outcome = await _claim(postd_app, req, clock.now(), ttl)
        else:
            outcome = Outcome(action, seen)
    return outcome


async def _settle(postd_app: Any, req: Request, owned: datetime, captured: Captured) -> None:
    """Store the response (or release the key after a 429) if the row is still ours."""
    stmt: Any = _RELEASE
    params: dict[str, Any] = {"m_token": req.token_id, "m_key": req.key, "m_owned": owned}
    if captured.status != 429:
        assert captured.status is not None
        stmt = _STORE
        params = _store_params(req, owned, captured.status, captured.headers, bytes(captured.body))
    result = await writer.execute(postd_app, stmt, params)
    if result.rowcount != 1:
        log.warning("idempotency_lock_lost", token_id=req.token_id, path=req.path)


async def _heartbeat(postd_app: Any, req: Request, owned: datetime, stop: asyncio.Event) -> None:
    """Keep the lock of a long request (a video publish) from expiring under it: a write every
    HEARTBEAT_SECONDS until ``stop`` is set (the first beat is already due when this starts)."""
    while True:
        try:
            beat = (
                update(IdempotencyKey)
                .where(req.where(), IdempotencyKey.created_at == owned)
                .where(IdempotencyKey.status.is_(None))
                .values(locked_until=postd_app.clock.now() + LOCK)
            )
            await writer.execute(postd_app, beat)
        except Exception:
            log.exception("idempotency_heartbeat_failed", token_id=req.token_id)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=HEARTBEAT_SECONDS)
            return


class _Beat:
    """The heartbeat of one request, started only once the request has run HEARTBEAT_SECONDS:
    almost every request is over long before, and then costs one timer handle, not a task."""

    def __init__(self, postd_app: Any, req: Request, owned: datetime) -> None:
        self._args = (postd_app, req, owned)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._timer = asyncio.get_running_loop().call_later(HEARTBEAT_SECONDS, self._start)

    def _start(self) -> None:
        self._task = asyncio.create_task(
            _heartbeat(*self._args, self._stop), name="idempotency-beat"
        )

    async def stop(self) -> None:
        self._timer.cancel()
        self._stop.set()
        if self._task is not None:
            await self._task


async def _run(
    postd_app: Any,
    req: Request,
    outcome: Outcome,
    scope: Scope,
    receive: Receive,
    inner: ASGIApp,
) -> Captured:
    """Run the request as the key's owner; its response, captured (a crash becomes a 500),
    and stored unless the handler stored it with its action."""
    assert outcome.owned is not None
    owned = outcome.owned
    resumed = outcome.resumed
    slot = Slot(req, owned, resumed=resumed.post_id, made=dict(resumed.made))
    captured, beat = Captured(), _Beat(postd_app, req, owned)
    reset = _CURRENT.set(slot)
    try:
        await inner(scope, receive, captured)
    except Exception:
        log.exception("idempotent_request_failed", token_id=req.token_id, path=req.path)
    finally:
        _CURRENT.reset(reset)
        await beat.stop()
    if not captured.complete or captured.status is None:
        captured.fail()
    if slot.stored:
        return captured
    try:
        await _settle(postd_app, req, owned, captured)
    except Exception:
        log.exception("idempotency_store_failed", token_id=req.token_id, path=req.path)
    return captured


async def _answer(outcome: Outcome, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer without running: the replay, or the 409 that says why not."""
    seen = outcome.seen
    if outcome.action is Action.REPLAY and seen is not None and seen.status is not None:
        headers = [*_raw_headers(seen.response_headers), REPLAYED]
        await _send_response(send, seen.status, headers, seen.response_body or b"")
        return
    if outcome.action is Action.MISMATCH:
        error = errors.ApiError(
            "IDEMPOTENCY_KEY_MISMATCH",
            "This Idempotency-Key was used with a different request (method, path or body)",
        )
    else:
        error = errors.ApiError("IDEMPOTENCY_KEY_IN_USE")
    await errors.response(error)(scope, receive, send)


async def _admitted(rider: Rider | None = None) -> None:
    """No admission to pass (wrap() without one)."""


async def wrap(
    postd_app: Any,
    principal: Principal,
    scope: Scope,
    receive: Receive,
    send: Send,
    inner: ASGIApp,
    admit: Admission = _admitted,
) -> None:
    """Serve one POST / PATCH / DELETE with its ``Idempotency-Key`` honoured (see the module).

    No key, another method or a multipart body: ``inner`` runs as is. A key of the wrong length:
    400 INVALID_IDEMPOTENCY_KEY. Otherwise ``inner`` runs at most once per (token, key) in 24 h.
    ``admit`` counts the request against its limits first (it raises the refusal); the key's
    claim rides in its transaction (``limits.admit``), which so costs no transaction of its
    own, or runs in one of its own if it did not run there.
    """
    method = str(scope.get("method", "")).upper()
    key = header(scope, b"idempotency-key")
    content_type = (header(scope, b"content-type") or "").lower()
    if key is None or method not in METHODS or content_type.startswith("multipart/form-data"):
        await admit(None)
        await inner(scope, receive, send)
        return
    if not valid_key(key):
        await admit(None)
        message = f"Idempotency-Key must be 1-{MAX_KEY_LENGTH} characters (got {len(key)})"
        error = errors.ApiError("INVALID_IDEMPOTENCY_KEY", message)
        await errors.response(error)(scope, receive, send)
        return
    body = await _read_body(receive)
    if body is None:
        return  # the client went away before sending its body: nothing to count or run
    path = full_path(scope)
    req = Request(principal.token_id, key, method, path, request_hash(method, path, body))
    ttl = timedelta(hours=postd_app.settings.api.idempotency_hours)
    claim = _Claim(req, postd_app.clock.now(), ttl)
    await admit(claim)
    outcome = await _acquire(postd_app, req, ttl, claim.outcome())
    if outcome.action is not Action.CLAIM or outcome.owned is None:
        await _answer(outcome, scope, receive, send)
        return
    captured = await _run(postd_app, req, outcome, scope, _refeed(body, receive), inner)
    assert captured.status is not None
    await _send_response(send, captured.status, captured.headers, bytes(captured.body))


async def purge(session: AsyncSession, now: datetime, hours: float) -> int:
    """Delete the keys ``hours`` old or older, which wrap() already treats as absent (in the
    caller's transaction; the caller commits); rows deleted."""
    result = await session.execute(
        delete(IdempotencyKey).where(IdempotencyKey.created_at <= now - timedelta(hours=hours))
    )
    return int(getattr(result, "rowcount", 0) or 0)
