"""Idempotency-Key against a real App on SQLite and PostgreSQL, through a tiny app of its own.

The app under test is a FastAPI app whose handlers count their runs, behind a minimal ASGI shim
that plays the gate's part: it sets the Principal and hands the request to ``idempotency.wrap``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import func, select, update
from starlette.types import ASGIApp, Receive, Scope, Send

from daemon import services, tokens
from daemon.api import errors, idempotency, posting
from daemon.api.deps import Principal
from daemon.api.routers import publish as publish_router
from daemon.clock import FakeClock
from daemon.store.models import IdempotencyKey, Post, UsageCounter, WebhookSubscription
from tests.conftest import make_settings

START = datetime(2026, 5, 14, 10, 0, tzinfo=UTC)
PRINCIPAL = Principal(
    token_id="tok1",
    token_name="test",
    token_prefix="outreply_live_ab12c",
    kind="live",
    user_id="user1",
    email="a@example.com",
    firstname=None,
    lastname=None,
    tier="free",
    scopes=("write:posts",),
    brand_ids=frozenset(),
    restricted_brand_ids=(),
    expires_at=None,
    last_used_at=None,
    request_count=0,
)


class Things:
    """The downstream app: every handler run is counted in ``runs``."""

    def __init__(self) -> None:
        self.runs: Counter[str] = Counter()
        self.hold: asyncio.Event | None = None  # when set up, /things waits for it
        self.entered = asyncio.Event()
        self.http = FastAPI()
        errors.install(self.http)  # as the daemon's app: a crash answers the catalog's 500
        self.http.add_api_route("/things", self.create, methods=["POST"])
        self.http.add_api_route("/things/{thing_id}", self.remove, methods=["DELETE"])
        self.http.add_api_route("/boom", self.boom, methods=["POST"])
        self.http.add_api_route("/unavailable", self.unavailable, methods=["POST"])
        self.http.add_api_route("/busy", self.busy, methods=["POST"])
        self.http.add_api_route("/upload", self.upload, methods=["POST"])

    async def create(self, request: Request) -> JSONResponse:
        self.runs["things"] += 1
        self.entered.set()
        if self.hold is not None:
            await self.hold.wait()
        body = await request.json()
        n = self.runs["things"]
        return JSONResponse({"n": n, "echo": body}, status_code=201, headers={"X-Thing": str(n)})

    async def remove(self, thing_id: str) -> JSONResponse:
        self.runs["remove"] += 1
        return JSONResponse({"success": True, "id": thing_id})

    async def boom(self) -> JSONResponse:
        self.runs["boom"] += 1
        raise RuntimeError("the handler crashed")

    async def unavailable(self) -> JSONResponse:
        self.runs["unavailable"] += 1
        return JSONResponse({"code": "UPSTREAM_DOWN", "n": self.runs["unavailable"]}, 503)

    async def busy(self) -> JSONResponse:
        self.runs["busy"] += 1
        if self.runs["busy"] == 1:
            return JSONResponse({"code": "RATE_LIMITED"}, 429, headers={"Retry-After": "1"})
        return JSONResponse({"n": self.runs["busy"]}, 201)

    async def upload(self, request: Request) -> JSONResponse:
        self.runs["upload"] += 1
        await request.body()
        return JSONResponse({"n": self.runs["upload"]}, 201)


def shim(postd_app: Any, inner: ASGIApp, principal: Principal = PRINCIPAL) -> ASGIApp:
    """The gate's part, minimally: the Principal on the scope, writes through ``wrap``."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await inner(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await idempotency.wrap(postd_app, principal, scope, receive, send, inner)

    return app


def client(asgi: ASGIApp) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url="http://t")


async def setup(
    app_factory: Any, tmp_path: Path, db_url: str, clock: FakeClock
) -> tuple[Any, Things]:
    clock.set(START)
    return await app_factory(make_settings(tmp_path, db_url)), Things()


def key(value: str) -> dict[str, str]:
    return {"Idempotency-Key": value}


async def counted(app: Any, model: Any, *where: Any) -> int:
    async with app.sessions() as session:
        query = select(func.count()).select_from(model).where(*where)
        return int(await session.scalar(query) or 0)


async def stored_keys(app: Any) -> int:
    return await counted(app, IdempotencyKey)


async def test_replay_returns_the_stored_response(
    app_factory: Any, tmp_path: Path, db_url: str, clock: FakeClock
) -> None:
    """A retry with the same key and body gets the first status, headers and body byte for
    byte, plus Idempotency-Replayed: true, and the handler does not run again."""
    app, things = await setup(app_factory, tmp_path, db_url, clock)
    async with client(shim(app, things.http)) as http:
        first = await http.post("/things", json={"a": 1}, headers=key("k-1"))
        clock.advance(60)
        again = await http.post("/things", json={"a": 1}, headers=key("k-1"))
    assert first.status_code == again.status_code == 201
    assert again.content == first.content == b'{"n":1,"echo":{"a":1}}'
    assert again.headers["X-Thing"] == "1"
    assert again.headers["Idempotency-Replayed"] == "true"
    assert "Idempotency-Replayed" not in first.headers
    assert things.runs["things"] == 1


async def test_keys_are_per_token_and_optional(
    app_factory: Any, tmp_path: Path, db_url: str, clock: FakeClock
) -> None:
    """Without a key every request runs; the same key from another token is another key."""
    app, things = await setup(app_factory, tmp_path, db_url, clock)
    other = replace(PRINCIPAL, token_id="tok2")
    async with client(shim(app, things.http)) as http, client(shim(app, things.http, other)) as h2:
        await http.post("/things", json={})
        await http.post("/things", json={})
        await http.post("/things", json={}, headers=key("shared"))
        response = await h2.post("/things", json={}, headers=key("shared"))
    assert response.json()["n"] == 4
    assert things.runs["things"] == 4


async def test_same_key_other_request_is_a_mismatch(
    app_factory: Any, tmp_path: Path, db_url: str, clock: FakeClock
) -> None:
    """The key with another body, path or method: 409 IDEMPOTENCY_KEY_MISMATCH, nothing runs."""
    app, things = await setup(app_factory, tmp_path, db_url, clock)
    async with client(shim(app, things.http)) as http:
        await http.post("/things", json={"a": 1}, headers=key("k"))
        answers = [
            await http.post("/things", json={"a": 2}, headers=key("k")),
            await http.post("/unavailable", json={"a": 1}, headers=key("k")),
            await http.delete("/things/x", headers=key("k")),
        ]
    for response in answers:
        assert response.status_code == 409
        assert response.json()["code"] == "IDEMPOTENCY_KEY_MISMATCH"
    assert sum(things.runs.values()) == 1


@pytest.mark.parametrize(("length", "status"), [(0, 400), (1, 201), (120, 201), (121, 400)])
async def test_key_length(
    app_factory: Any, tmp_path: Path, db_url: str, clock: FakeClock, length: int, status: int
) -> None:
    """Keys of 1-120 characters are honoured; empty or longer ones get 400
    INVALID_IDEMPOTENCY_KEY and the handler does not run."""
    app, things = await setup(app_factory, tmp_path, db_url, clock)
    async with client(shim(app, things.http)) as http:
        response = await http.post("/things", json={}, headers=key("k" * length))
    assert response.status_code == status
    if status == 400:
        assert response.json()["code"] == "INVALID_IDEMPOTENCY_KEY"
    assert things.runs["things"] == (status == 201)


async def test_multipart_uploads_skip_idempotency(
    app_factory: Any, tmp_path: Path, db_url: str, clock: FakeClock
) -> None:
    """A multipart/form-data request ignores its key: each one runs and nothing is stored."""
    app, things = await setup(app_factory, tmp_path, db_url, clock)
    async with client(shim(app, things.http)) as http:
        for _ in range(2):
            response = await http.post(
                "/upload",
                files={"file": ("a.jpg", b"\xff\xd8\xff", "image/jpeg")},
                headers=key("u"),
            )
            assert "Idempotency-Replayed" not in response.headers
    assert things.runs["upload"] == 2
    assert await stored_keys(app) == 0


async def test_keys_expire_after_24_hours(
    app_factory: Any, tmp_path: Path, db_url: str, clock: FakeClock
) -> None:
    """Within 24 h the key replays; after, it is new again (and purge deletes the old rows)."""
    app, things = await setup(app_factory, tmp_path, db_url, clock)
    async with client(shim(app, things.http)) as http:
        await http.post("/things", json={}, headers=key("day"))
        clock.advance(timedelta(hours=23, minutes=59))
        assert (await http.post("/things", json={}, headers=key("day"))).json()["n"] == 1
        clock.advance(timedelta(minutes=1))
        renewed = await http.post("/things", json={"other": "body"}, headers=key("day"))
        assert (renewed.status_code, renewed.json()["n"]) == (201, 2)
        replayed = await http.post("/things", json={"other": "body"}, headers=key("day"))
        assert replayed.headers["Idempotency-Replayed"] == "true"
        await http.post("/things", json={}, headers=key("another"))
    assert things.runs["things"] == 3
    clock.advance(timedelta(hours=24))
    async with app.sessions() as session, session.begin():
        assert await idempotency.purge(session, clock.now() - timedelta(hours=1), 24) == 0
        assert await idempotency.purge(session, clock.now(), 24) == 2
    assert await stored_keys(app) == 0


async def test_server_errors_are_stored_and_replayed(
    app_factory: Any, tmp_path: Path, db_url: str, clock: FakeClock
) -> None:
    """A 5xx answer, or a handler that crashed (500 SERVER_ERROR), is stored and replayed like
    any other response: the action is not attempted twice."""
    app, things = await setup(app_factory, tmp_path, db_url, clock)
    async with client(shim(app, things.http)) as http:
        with structlog.testing.capture_logs() as logs:
            crashed = [await http.post("/boom", json={}, headers=key("b")) for _ in range(2)]
        down = [await http.post("/unavailable", json={}, headers=key("u")) for _ in range(2)]
    assert [r.status_code for r in crashed] == [500, 500]
    assert crashed[0].json()["code"] == "SERVER_ERROR"
    assert crashed[1].content == crashed[0].content
    assert crashed[1].headers["Idempotency-Replayed"] == "true"
    assert [e["event"] for e in logs] == ["idempotent_request_failed"]
    assert [r.status_code for r in down] == [503, 503]
    assert down[1].json() == {"code": "UPSTREAM_DOWN", "n": 1}
    assert (things.runs["boom"], things.runs["unavailable"]) == (1, 1)


async def test_app_that_dies_without_answering_stores_a_500(
    app_factory: Any, tmp_path: Path, db_url: str, clock: FakeClock
) -> None:
    """An inner app that raises before answering gets the catalog's 500 stored and replayed."""
    app, _ = await setup(app_factory, tmp_path, db_url, clock)
    runs: list[str] = []

    async def dies(scope: Scope, receive: Receive, send: Send) -> None:
        runs.append(scope["path"])
        raise RuntimeError("no answer")

    async with client(shim(app, dies)) as http:
        with structlog.testing.capture_logs():
            answers = [await http.post("/x", json={}, headers=key("d")) for _ in range(2)]
    assert [(r.status_code, r.json()["code"]) for r in answers] == [(500, "SERVER_ERROR")] * 2
    assert answers[1].headers["Idempotency-Replayed"] == "true"
    assert runs == ["/x"]


async def test_429_releases_the_key(
    app_factory: Any, tmp_path: Path, db_url: str, clock: FakeClock
) -> None:
    """A 429 means "not done": it is not stored, so the retry with the same key runs."""
    app, things = await setup(app_factory, tmp_path, db_url, clock)
    async with client(shim(app, things.http)) as http:
        first = await http.post("/busy", json={}, headers=key("r"))
        retry = await http.post("/busy", json={}, headers=key("r"))
        replay = await http.post("/busy", json={}, headers=key("r"))
    assert (first.status_code, retry.status_code, replay.status_code) == (429, 201, 201)
    assert replay.headers["Idempotency-Replayed"] == "true"
    assert things.runs["busy"] == 2


async def insert_running(app: Any, key_: str, locked_for: timedelta) -> None:
    """A row as a request still running elsewhere leaves it."""
    async with app.sessions() as session, session.begin():
        session.add(
            IdempotencyKey(
                token_id=PRINCIPAL.token_id,
                key=key_,
                request_hash=idempotency.request_hash("POST", "/things", b"{}"),
                method="POST",
                path="/things",
                status=None,
                response_body=None,
                response_headers={},
                created_at=app.clock.now(),
                locked_until=app.clock.now() + locked_for,
            )
        )


async def test_running_duplicate_gets_in_use(
    app_factory: Any,
    tmp_path: Path,
    db_url: str,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While the first request with a key still runs, a duplicate waits, then gets 409
    IDEMPOTENCY_KEY_IN_USE; it never runs the handler."""
    app, things = await setup(app_factory, tmp_path, db_url, clock)
    waits: list[float] = []

    async def no_wait(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(idempotency, "pause", no_wait)
    await insert_running(app, "busy", timedelta(seconds=30))
    async with client(shim(app, things.http)) as http:
        response = await http.post("/things", content=b"{}", headers=key("busy"))
    assert response.status_code == 409
    assert response.json()["code"] == "IDEMPOTENCY_KEY_IN_USE"
    assert waits == list(idempotency.POLL_DELAYS) and 1.5 <= sum(waits) <= 2.5
    assert things.runs["things"] == 0


async def test_dead_owner_is_taken_over(
    app_factory: Any, tmp_path: Path, db_url: str, clock: FakeClock
) -> None:
    """A running row whose lock expired (its process died) is taken over and the request runs."""
    app, things = await setup(app_factory, tmp_path, db_url, clock)
    await insert_running(app, "orphan", timedelta(seconds=30))
    clock.advance(30)
    async with client(shim(app, things.http)) as http:
        response = await http.post("/things", content=b"{}", headers=key("orphan"))
        replay = await http.post("/things", content=b"{}", headers=key("orphan"))
    assert response.status_code == 201 and replay.headers["Idempotency-Replayed"] == "true"
    assert things.runs["things"] == 1


async def test_long_request_keeps_its_lock(
    app_factory: Any,
    tmp_path: Path,
    db_url: str,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A request running past the 30 s lock keeps it fresh, so a duplicate is not let in."""
    app, things = await setup(app_factory, tmp_path, db_url, clock)
    monkeypatch.setattr(idempotency, "HEARTBEAT_SECONDS", 0.001)
    things.hold = asyncio.Event()
    async with client(shim(app, things.http)) as http:
        first = asyncio.create_task(http.post("/things", content=b"{}", headers=key("long")))
        await things.entered.wait()
        clock.advance(25)
        for _ in range(500):  # the heartbeat is a background task: wait for its write
            async with app.sessions() as session:
                row = await session.get(IdempotencyKey, (PRINCIPAL.token_id, "long"))
            if row is not None and row.locked_until == START + timedelta(seconds=55):
                break
            await asyncio.sleep(0.005)
        else:
            pytest.fail("the heartbeat never extended the lock")
        clock.advance(10)  # 35 s after the claim: the first lock would have expired

        async def no_wait(seconds: float) -> None:
            pass

        monkeypatch.setattr(idempotency, "pause", no_wait)
        duplicate = await http.post("/things", content=b"{}", headers=key("long"))
        things.hold.set()
        assert (await first).status_code == 201
    assert duplicate.json()["code"] == "IDEMPOTENCY_KEY_IN_USE"
    assert things.runs["things"] == 1


async def test_concurrent_identical_requests_run_once(
    app_factory: Any,
    tmp_path: Path,
    db_url: str,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """20 concurrent identical requests with one key (split over two instances on PostgreSQL):
    the handler runs once, 19 wait for it, and all 20 get the same status and body."""
    app, things = await setup(app_factory, tmp_path, db_url, clock)
    apps = [app] if db_url.startswith("sqlite") else [app, await app_factory(app.settings)]
    hold = things.hold = asyncio.Event()
    pauses = Counter[str]()
    all_waiting = asyncio.Event()

    async def pause(seconds: float) -> None:
        # Each duplicate's first pause holds until all 19 wait; then they poll at the real pace.
        pauses["n"] += 1
        if pauses["n"] == 19:
            all_waiting.set()
        await hold.wait()
        await asyncio.sleep(seconds)

    monkeypatch.setattr(idempotency, "pause", pause)
    clients = [client(shim(a, things.http)) for a in apps]
    try:
        calls = [
            clients[i % len(clients)].post("/things", json={"x": 1}, headers=key("once"))
            for i in range(20)
        ]
        requests = asyncio.gather(*calls)
        await asyncio.wait_for(all_waiting.wait(), timeout=30)
        things.hold.set()
        responses = await requests
    finally:
        for c in clients:
            await c.aclose()
    assert things.runs["things"] == 1
    assert {(r.status_code, r.content) for r in responses} == {(201, b'{"n":1,"echo":{"x":1}}')}
    replayed = [r for r in responses if r.headers.get("Idempotency-Replayed") == "true"]
    assert len(replayed) == 19


# -- POST /posts/schedule: the response is stored with the post ---------------------------------


async def scheduling_world(app_factory: Any, tmp_path: Path, db_url: str, clock: FakeClock) -> Any:
    """A daemon (its real gate and routes), a user with a sandbox page and a live token."""
    clock.set(START)
    loopback = {"allow_loopback": True, "allow_http": True}  # for webhook subscriptions
    app = await app_factory(make_settings(tmp_path, db_url, netguard=loopback))
    now = clock.now()
    async with app.sessions() as session, session.begin():
        user, _ = await tokens.add_user(session, "a@example.com", now, tier="pro")
        brand = await services.add_brand(session, "Acme", now, owner_id=user.id)
        await session.flush()
        page = await services.add_page(
            session, brand_id=brand.id, platform="sandbox", name="Main", now=now
        )
        _, raw = await tokens.create_token(
            session, user_id=user.id, name="t", scopes=("*",), now=now, tiers=app.settings.tiers
        )
    body = {
        "page_id": page.id,
        "message": "hello",
        "scheduled_at": (START + timedelta(hours=2)).isoformat(),
    }
    return app, {"Authorization": f"Bearer {raw}"}, body


def daemon_client(app: Any) -> httpx.AsyncClient:
    """A client of the daemon's whole HTTP app (gate and routes), at /api/v1."""
    transport = httpx.ASGITransport(app=app.http)
    return httpx.AsyncClient(transport=transport, base_url="http://t/api/v1")


async def across_a_death(
    app: Any,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    body: dict[str, Any],
    headers: dict[str, str],
    *,
    handler_stores: bool = True,
) -> tuple[httpx.Response, httpx.Response]:
    """The request, then its retry once the key's lock expired, with nothing written after the
    handler (what a process that dies right after the action writes); with ``handler_stores``,
    asserts nothing was left to write (the handler stored its response with its action)."""
    late_writes: list[Any] = []

    async def died(*args: Any) -> None:
        late_writes.append(args)

    monkeypatch.setattr(idempotency, "_settle", died)
    async with daemon_client(app) as http:
        first = await http.post(path, json=body, headers=headers)
        clock.advance(idempotency.LOCK.total_seconds() + 1)
        retry = await http.post(path, json=body, headers=headers)
    if handler_stores:
        assert late_writes == []
    return first, retry


async def test_a_schedule_is_stored_with_its_post(
    app_factory: Any,
    tmp_path: Path,
    db_url: str,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """POST /posts/schedule stores its 201 in the post's own transaction: with nothing written
    after the handler (as when the process dies right after the post commits), a retry once
    the key's lock has expired replays it instead of scheduling a second post."""
    app, auth, body = await scheduling_world(app_factory, tmp_path, db_url, clock)
    headers = {**auth, "Idempotency-Key": "sched-1"}
    first, retry = await across_a_death(app, clock, monkeypatch, "/posts/schedule", body, headers)
    assert first.status_code == 201, first.text
    assert retry.status_code == 201 and retry.headers.get("Idempotency-Replayed") == "true"
    assert retry.content == first.content
    assert retry.json()["scheduled_post"]["id"] == first.json()["scheduled_post"]["id"]
    assert await counted(app, Post) == 1


async def test_a_schedule_whose_key_was_taken_over_is_undone(
    app_factory: Any,
    tmp_path: Path,
    db_url: str,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When the key stops being the request's while it runs (its lock expired and a retry took
    it over), the post, its publish count and the response are rolled back together: 409
    IDEMPOTENCY_KEY_IN_USE, and the taking-over request is the one that schedules."""
    app, auth, body = await scheduling_world(app_factory, tmp_path, db_url, clock)
    real_prepare = posting.prepare

    async def taken_over_meanwhile(*args: Any) -> Any:
        draft = await real_prepare(*args)
        async with app.sessions() as session, session.begin():
            await session.execute(
                update(IdempotencyKey).values(created_at=clock.now() + timedelta(seconds=1))
            )
        return draft

    monkeypatch.setattr(posting, "prepare", taken_over_meanwhile)
    headers = {**auth, "Idempotency-Key": "sched-2"}
    async with daemon_client(app) as http:
        response = await http.post("/posts/schedule", json=body, headers=headers)
    assert response.status_code == 409, response.text
    assert response.json()["code"] == "IDEMPOTENCY_KEY_IN_USE"
    assert await counted(app, Post) == 0
    async with app.sessions() as session:
        used = await session.scalar(
            select(func.coalesce(func.sum(UsageCounter.count), 0)).where(
                UsageCounter.bucket == "publishes"
            )
        )
    assert used == 0


async def test_a_publish_whose_process_died_is_carried_on_not_repeated(
    app_factory: Any,
    tmp_path: Path,
    db_url: str,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """POST /posts/publish writes its post's id on the key with the post. Its process dies
    while waiting for the platform (nothing more is written); the retry that takes the key over
    once the lock expired waits for that post, which the dispatcher publishes once, and answers
    with it: one post, one publish on the platform, and the answer is stored for replays."""
    app, auth, body = await scheduling_world(app_factory, tmp_path, db_url, clock)
    body = {"page_id": body["page_id"], "message": "right now"}
    dead = True
    real_wait, real_store = publish_router.settle, idempotency._settle

    async def wait(*args: Any) -> Any:
        if dead:
            raise RuntimeError("the process died while waiting for the platform")
        return await real_wait(*args)

    async def store(*args: Any) -> None:
        if not dead:
            await real_store(*args)

    monkeypatch.setattr(publish_router, "settle", wait)
    monkeypatch.setattr(idempotency, "_settle", store)
    headers = {**auth, "Idempotency-Key": "pub-1"}
    pump = asyncio.create_task(app.dispatcher.pump())
    try:
        async with daemon_client(app) as http:
            first = await http.post("/posts/publish", json=body, headers=headers)
            dead = False
            clock.advance(idempotency.LOCK.total_seconds() + 1)
            retry = await http.post("/posts/publish", json=body, headers=headers)
            replay = await http.post("/posts/publish", json=body, headers=headers)
    finally:
        await app.dispatcher.stop(0)
        await pump
    assert first.status_code == 500
    assert retry.status_code == 201, retry.text
    async with app.sessions() as session:
        (post,) = list(await session.scalars(select(Post)))
    assert retry.json()["id"] == post.id and post.state == "published"
    assert len(app.adapters["sandbox"].published_records()) == 1
    assert replay.headers.get("Idempotency-Replayed") == "true"
    assert replay.content == retry.content


async def test_a_webhook_subscription_is_stored_with_its_answer(
    app_factory: Any,
    tmp_path: Path,
    db_url: str,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """POST /webhooks stores its 201 (the secret included) in the subscription's transaction:
    with nothing written after the handler, the retry after the lock expired replays it and
    the URL is subscribed once."""
    app, auth, _ = await scheduling_world(app_factory, tmp_path, db_url, clock)
    headers = {**auth, "Idempotency-Key": "hook-1"}
    body = {"url": "http://127.0.0.1:9/hook", "events": ["post.published"]}
    first, retry = await across_a_death(app, clock, monkeypatch, "/webhooks", body, headers)
    assert first.status_code == 201, first.text
    assert retry.headers.get("Idempotency-Replayed") == "true" and retry.content == first.content
    assert first.json()["webhook"]["secret"]
    assert await counted(app, WebhookSubscription) == 1


async def test_a_bulk_whose_process_died_part_way_schedules_only_the_rest(
    app_factory: Any,
    tmp_path: Path,
    db_url: str,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """POST /posts/schedule/bulk commits item by item, each item's post recorded on the key with
    it. The process dies while scheduling the third of three items (nothing more is written):
    the retry once the lock expired answers the first two with the posts already made and
    schedules only the third: three posts, three publishes counted, every item 201."""
    app, auth, one = await scheduling_world(app_factory, tmp_path, db_url, clock)
    items = [
        {
            **one,
            "message": f"item {n}",
            "scheduled_at": (START + timedelta(hours=2 + n)).isoformat(),
        }
        for n in range(3)
    ]
    real_create, calls = posting.create, 0

    async def dies_on_the_third(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("the process died while scheduling the third item")
        return await real_create(*args, **kwargs)

    monkeypatch.setattr(posting, "create", dies_on_the_third)
    headers = {**auth, "Idempotency-Key": "bulk-1"}
    first, retry = await across_a_death(
        app,
        clock,
        monkeypatch,
        "/posts/schedule/bulk",
        {"posts": items},
        headers,
        handler_stores=False,
    )
    assert first.status_code == 500
    assert retry.status_code == 200, retry.text
    results = retry.json()["results"]
    assert [r["status"] for r in results] == [201, 201, 201], results
    assert retry.json()["scheduled"] == 3
    async with app.sessions() as session:
        posts = {p.id: p.message for p in await session.scalars(select(Post))}
        used = await session.scalar(
            select(func.sum(UsageCounter.count)).where(UsageCounter.bucket == "publishes")
        )
    assert {r["scheduled_post"]["id"]: r["scheduled_post"]["message"] for r in results} == posts
    assert sorted(posts.values()) == ["item 0", "item 1", "item 2"]
    assert used == 3
    assert calls == 4  # items 0 and 1 once each, item 2 twice: the death, then the retry


async def test_a_bulk_whose_key_was_taken_over_stops_there(
    app_factory: Any,
    tmp_path: Path,
    db_url: str,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When the key stops being the bulk's while it runs, the item being scheduled is rolled
    back and the request answers 409 IDEMPOTENCY_KEY_IN_USE (not a 200 listing the rest as
    failed): the items before it stay, recorded for the key's new owner."""
    app, auth, one = await scheduling_world(app_factory, tmp_path, db_url, clock)
    items = [
        {**one, "scheduled_at": (START + timedelta(hours=2 + n)).isoformat()} for n in range(3)
    ]
    real_prepare, calls = posting.prepare, 0

    async def taken_over_on_the_second(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        draft = await real_prepare(*args)
        if calls == 2:
            async with app.sessions() as session, session.begin():
                later = clock.now() + timedelta(seconds=1)
                await session.execute(update(IdempotencyKey).values(created_at=later))
        return draft

    monkeypatch.setattr(posting, "prepare", taken_over_on_the_second)
    headers = {**auth, "Idempotency-Key": "bulk-2"}
    async with daemon_client(app) as http:
        response = await http.post("/posts/schedule/bulk", json={"posts": items}, headers=headers)
    assert response.status_code == 409, response.text
    assert response.json()["code"] == "IDEMPOTENCY_KEY_IN_USE"
    assert calls == 2
    async with app.sessions() as session:
        (post,) = list(await session.scalars(select(Post)))
        stored = await session.scalar(select(IdempotencyKey.made))
    assert stored == {"0": post.id}


async def test_the_claim_rides_in_the_admission_or_runs_alone(
    app_factory: Any,
    tmp_path: Path,
    db_url: str,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through the gate, a keyed request's claim runs in the admission's transaction: no
    transaction of its own. If it fails there, it is undone and runs on its own: the request
    is served once all the same, and its replay works."""
    app, auth, body = await scheduling_world(app_factory, tmp_path, db_url, clock)
    alone: list[str] = []
    real_claim, real_run = idempotency._claim, idempotency._Claim._run

    async def claim_alone(*args: Any) -> Any:
        alone.append(args[1].key)
        return await real_claim(*args)

    monkeypatch.setattr(idempotency, "_claim", claim_alone)
    async with daemon_client(app) as http:
        ridden = await http.post(
            "/posts/schedule", json=body, headers={**auth, "Idempotency-Key": "a"}
        )
        assert ridden.status_code == 201 and alone == []

        async def fails_once_in_the_admission(self: Any, conn: Any) -> Any:
            monkeypatch.setattr(idempotency._Claim, "_run", real_run)
            await real_run(self, conn)  # written, then undone with the rider's SAVEPOINT
            raise RuntimeError("the claim failed in the admission")

        monkeypatch.setattr(idempotency._Claim, "_run", fails_once_in_the_admission)
        later = {**body, "scheduled_at": (START + timedelta(hours=3)).isoformat()}
        headers = {**auth, "Idempotency-Key": "b"}
        first = await http.post("/posts/schedule", json=later, headers=headers)
        replay = await http.post("/posts/schedule", json=later, headers=headers)
    assert first.status_code == 201, first.text
    assert alone == ["b"]
    assert replay.headers.get("Idempotency-Replayed") == "true" and replay.content == first.content
    assert await counted(app, Post) == 2
