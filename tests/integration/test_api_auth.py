"""API authentication end to end: tokens, the /api/v1 gate, audit, collaborators and the CLI.

A tiny FastAPI app behind the real gate, driven with httpx.ASGITransport, on SQLite and
PostgreSQL. Most tests use a fake ``limits.admit`` (so that a token's burst limit does not end a
test early); one runs the real limits and idempotency layers.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
import structlog
from click.testing import CliRunner
from fastapi import Depends, FastAPI
from sqlalchemy import func, select

from daemon import services, tokens
from daemon.api import deps, errors
from daemon.api.gate import ApiGate, purge_audit
from daemon.cli import main as cli_main
from daemon.errors import InputError
from daemon.store import db, writer
from daemon.store.models import ApiToken, AuditEntry, Base, BrandAuditEntry
from tests.conftest import make_settings

ALL_READ = ("read:account", "read:brands", "read:pages", "read:posts")
ReadPosts = Annotated[deps.Principal, Depends(deps.require("read:posts"))]
AnyToken = Annotated[deps.Principal, Depends(deps.require(None))]
WritePosts = Annotated[deps.Principal, Depends(deps.require("write:posts"))]


def _routes() -> FastAPI:
    http = FastAPI()
    errors.install(http)

    def view(p: deps.Principal) -> dict[str, Any]:
        return {
            "user_id": p.user_id,
            "kind": p.kind,
            "tier": p.tier,
            "scopes": list(p.scopes),
            "brand_ids": sorted(p.brand_ids),
            "restricted": list(p.restricted_brand_ids),
            "collaborator_id": p.collaborator_id,
            "request_count": p.request_count,
        }

    @http.get("/api/v1/posts/scheduled")
    async def scheduled(p: ReadPosts) -> Any:
        return view(p)

    @http.get("/api/v1/me")
    async def me(p: AnyToken) -> Any:
        return view(p)

    @http.post("/api/v1/posts/schedule", status_code=201)
    async def schedule(p: WritePosts) -> Any:
        return {"scheduled_post": {"id": "x", "by": p.token_id}}

    @http.get("/api/v1/errors")
    async def catalog() -> Any:
        return errors.catalog_json()

    @http.get("/healthz")
    async def healthz() -> Any:
        return {"status": "ok"}

    return http


async def fake_admit(
    _app: Any, p: deps.Principal, _method: str, _path: str, _now: datetime, _rider: Any = None
) -> dict[str, str]:
    return {
        "X-API-Tier": p.tier,
        "X-RateLimit-Limit": "1000",
        "X-RateLimit-Remaining": "999",
        "X-RateLimit-Reset": "0",
        "X-API-Scopes": " ".join(p.scopes),
    }


@dataclass
class Api:
    app: Any
    gate: ApiGate

    def client(self, peer: str = "127.0.0.1") -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.gate, client=(peer, 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://postd")

    async def get(self, raw: str | None, path: str = "/api/v1/posts/scheduled", **kw: Any) -> Any:
        headers = kw.pop("headers", {})
        if raw is not None:
            headers["Authorization"] = f"Bearer {raw}"
        async with self.client(kw.pop("peer", "127.0.0.1")) as c:
            return await c.get(path, headers=headers)

    async def tx(self, fn: Any) -> Any:
        async with self.app.sessions() as session, session.begin():
            return await fn(session)

    @property
    def now(self) -> datetime:
        now: datetime = self.app.clock.now()
        return now


@pytest.fixture
async def api(app_factory: Any, tmp_path: Path, db_url: str) -> AsyncIterator[Api]:
    settings = make_settings(tmp_path, db_url, api={"trusted_proxies": ["10.0.0.0/8"]})
    app = await app_factory(settings)
    gate = ApiGate(_routes(), app, admit=fake_admit)
    yield Api(app, gate)
    await gate.aclose()


async def new_user(api: Api, email: str = "owner@example.com", tier: str = "free") -> str:
    user, _ = await api.tx(lambda s: tokens.add_user(s, email, api.now, tier=tier))
    user_id: str = user.id
    return user_id


async def new_token(api: Api, user_id: str, **kw: Any) -> tuple[str, str]:
    kw.setdefault("scopes", ALL_READ)

    async def go(s: Any) -> tuple[str, str]:
        made, raw = await tokens.create_token(
            s, user_id=user_id, name=kw.pop("name", "test"), now=api.now, **kw
        )
        return made.id, raw

    return await api.tx(go)


async def new_brand(api: Api, owner_id: str | None, name: str = "Acme") -> str:
    async def go(s: Any) -> str:
        brand = await services.add_brand(s, name, api.now, owner_id)
        return brand.id

    brand_id: str = await api.tx(go)
    return brand_id


def assert_error(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    assert body["code"] == code
    assert body["error"] == body["message"] and body["message"]
    return body


# -- authentication -----------------------------------------------------------------------------


async def test_bearer_and_x_api_key_both_authenticate(api: Api) -> None:
    """The same token works as Authorization: Bearer and as X-API-Key."""
    user = await new_user(api)
    _, raw = await new_token(api, user)
    bearer = await api.get(raw)
    assert bearer.status_code == 200 and bearer.json()["user_id"] == user
    by_key = await api.get(None, headers={"X-API-Key": raw})
    assert by_key.status_code == 200 and by_key.json()["user_id"] == user


async def test_missing_token_is_401_missing_token(api: Api) -> None:
    """No token, an empty Bearer or another scheme: 401 MISSING_TOKEN in the catalog shape."""
    assert_error(await api.get(None), 401, "MISSING_TOKEN")
    assert_error(await api.get(None, headers={"Authorization": "Bearer "}), 401, "MISSING_TOKEN")
    basic = await api.get(None, headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert_error(basic, 401, "MISSING_TOKEN")


async def test_malformed_or_unknown_token_is_401_invalid_token(api: Api) -> None:
    """A malformed token and a well-formed unknown one both answer 401 INVALID_TOKEN."""
    await new_user(api)
    for raw in ("nonsense", "outreply_live_short", tokens.mint(), tokens.mint("sandbox")):
        assert_error(await api.get(raw), 401, "INVALID_TOKEN")


async def test_legacy_prefix_token_authenticates(api: Api) -> None:
    """An imported orply_live_ token (OutReply's older format) still authenticates."""
    user = await new_user(api)
    legacy = "orply_live_" + "Lg4cyT0kenAbc123def456"
    await api.tx(
        lambda s: tokens.import_token(
            s, legacy, user_id=user, name="old zap", scopes=["read:posts"], now=api.now
        )
    )
    resp = await api.get(legacy)
    assert resp.status_code == 200 and resp.json()["user_id"] == user


async def test_expiry_with_clock_travel(api: Api) -> None:
    """A 7-day token works until its expiry instant, then answers 401 TOKEN_EXPIRED."""
    user = await new_user(api)
    _, raw = await new_token(api, user, expires_in=tokens.parse_expiry("7d"))
    api.app.clock.advance(timedelta(days=7) - timedelta(seconds=1))
    assert (await api.get(raw)).status_code == 200
    api.app.clock.advance(1)
    assert_error(await api.get(raw), 401, "TOKEN_EXPIRED")


async def test_revoked_token_is_401_token_revoked(api: Api) -> None:
    """Revocation takes effect on the next request."""
    user = await new_user(api)
    token_id, raw = await new_token(api, user)
    assert (await api.get(raw)).status_code == 200
    await api.tx(lambda s: tokens.revoke_token(s, token_id, api.now))
    assert_error(await api.get(raw), 401, "TOKEN_REVOKED")


async def test_rotation_invalidates_the_old_secret_at_once(api: Api) -> None:
    """Rotate: same id, name and scopes; the old secret is INVALID_TOKEN, the new one works."""
    user = await new_user(api)
    token_id, old = await new_token(api, user, name="zapier")
    rotated, new = await api.tx(lambda s: tokens.rotate_token(s, token_id, api.now))
    assert rotated.id == token_id and rotated.name == "zapier" and new != old
    assert rotated.prefix == new[:19]
    assert_error(await api.get(old), 401, "INVALID_TOKEN")
    assert (await api.get(new)).json()["scopes"] == list(ALL_READ)


async def test_ip_allowlist_on_the_socket_peer(api: Api) -> None:
    """An allowlisted token works from inside the range and is 403 IP_NOT_ALLOWED outside."""
    user = await new_user(api)
    _, raw = await new_token(api, user, ip_allowlist=["203.0.113.0/24"])
    assert (await api.get(raw, peer="203.0.113.7")).status_code == 200
    assert_error(await api.get(raw, peer="198.51.100.1"), 403, "IP_NOT_ALLOWED")


async def test_ip_allowlist_behind_a_trusted_proxy(api: Api) -> None:
    """Behind a trusted proxy the right-most untrusted X-Forwarded-For hop is the client."""
    user = await new_user(api)
    _, raw = await new_token(api, user, ip_allowlist=["203.0.113.7"])
    allowed = {"X-Forwarded-For": "198.51.100.9, 203.0.113.7"}
    assert (await api.get(raw, peer="10.0.0.2", headers=allowed)).status_code == 200
    spoofed = {"X-Forwarded-For": "203.0.113.7, 198.51.100.9"}
    assert_error(await api.get(raw, peer="10.0.0.2", headers=spoofed), 403, "IP_NOT_ALLOWED")


async def test_forwarded_for_from_an_untrusted_peer_is_ignored(api: Api) -> None:
    """A client cannot forge its way into an allowlist with X-Forwarded-For."""
    user = await new_user(api)
    _, raw = await new_token(api, user, ip_allowlist=["203.0.113.7"])
    forged = {"X-Forwarded-For": "203.0.113.7"}
    assert_error(await api.get(raw, peer="198.51.100.1", headers=forged), 403, "IP_NOT_ALLOWED")


async def test_sandbox_token_issued_once_and_read_only(api: Api) -> None:
    """add_user issues one read-only outreply_test_ token; a second one is refused."""
    user, sandbox = await api.tx(lambda s: tokens.add_user(s, "new@example.com", api.now))
    assert sandbox.startswith("outreply_test_")
    body = (await api.get(sandbox)).json()
    assert body["kind"] == "sandbox" and set(body["scopes"]) == set(deps.SANDBOX_SCOPES)
    async with api.client() as c:
        denied = await c.post("/api/v1/posts/schedule", headers={"X-API-Key": sandbox})
    assert_error(denied, 403, "MISSING_SCOPE")
    with pytest.raises(InputError):
        await api.tx(lambda s: tokens.issue_sandbox_token(s, user.id, api.now))


# -- brands and collaborators -------------------------------------------------------------------


async def test_brand_restriction_narrows_the_principal(api: Api) -> None:
    """Unrestricted: owned + collaborated brands; restricted: only the named ones."""
    owner = await new_user(api)
    other = await new_user(api, "other@example.com")
    mine_a, mine_b = await new_brand(api, owner, "A"), await new_brand(api, owner, "B")
    theirs = await new_brand(api, other, "C")
    unrelated = await new_brand(api, other, "D")
    await api.tx(
        lambda s: tokens.add_collaborator(
            s, brand_id=theirs, user_id=owner, access="limited", now=api.now
        )
    )
    _, wide = await new_token(api, owner)
    assert (await api.get(wide)).json()["brand_ids"] == sorted([mine_a, mine_b, theirs])
    _, narrow = await new_token(api, owner, brand_ids=[mine_b])
    body = (await api.get(narrow)).json()
    assert body["brand_ids"] == [mine_b] and body["restricted"] == [mine_b]
    with pytest.raises(InputError) as err:
        await new_token(api, owner, brand_ids=[unrelated])
    assert err.value.code == "BRAND_NOT_AUTHORIZED"


async def _collaboration(api: Api) -> tuple[str, str, str, str]:
    """(brand, collaborator id, its token id, its token) for a full-access collaborator."""
    owner = await new_user(api)
    helper = await new_user(api, "helper@example.com")
    brand = await new_brand(api, owner)
    await new_brand(api, helper, "helper's own")
    collab = await api.tx(
        lambda s: tokens.add_collaborator(s, brand_id=brand, user_id=helper, now=api.now)
    )
    token_id, raw = await new_token(api, helper, collaborator_id=collab.id)
    return brand, collab.id, token_id, raw


async def test_collaborator_token_is_bound_to_its_brand(api: Api) -> None:
    """A collaborator-issued key reaches exactly its brand and names its collaborator."""
    brand, collab_id, _, raw = await _collaboration(api)
    body = (await api.get(raw)).json()
    assert body["brand_ids"] == [brand] and body["collaborator_id"] == collab_id


async def test_collaborator_removal_revokes_its_keys(api: Api) -> None:
    """Removing a collaborator revokes every key it issued: 401 TOKEN_REVOKED, audited."""
    brand, collab_id, token_id, raw = await _collaboration(api)
    revoked = await api.tx(lambda s: tokens.remove_collaborator(s, collab_id, api.now))
    assert revoked == [token_id]
    body = assert_error(await api.get(raw), 401, "TOKEN_REVOKED")
    assert "collaborator" in body["message"]
    rows = await api.tx(
        lambda s: s.execute(
            select(BrandAuditEntry.action, BrandAuditEntry.token_id)
            .where(BrandAuditEntry.brand_id == brand)
            .order_by(BrandAuditEntry.id)
        )
    )
    assert [tuple(r) for r in rows] == [
        ("collaborator.add", None),
        ("token.create", token_id),
        ("token.revoke", token_id),
        ("collaborator.remove", None),
    ]


async def test_collaborator_downgrade_is_403_until_restored(api: Api) -> None:
    """Below full access the collaborator's keys answer 403 COLLABORATOR_INSUFFICIENT."""
    _, collab_id, _, raw = await _collaboration(api)
    await api.tx(lambda s: tokens.set_access(s, collab_id, "limited", api.now))
    assert_error(await api.get(raw), 403, "COLLABORATOR_INSUFFICIENT")
    await api.tx(lambda s: tokens.set_access(s, collab_id, "full", api.now))
    assert (await api.get(raw)).status_code == 200


async def test_only_full_collaborators_issue_keys_for_their_brand(api: Api) -> None:
    """A limited collaborator cannot issue keys; a full one cannot aim them at another brand."""
    owner = await new_user(api)
    helper = await new_user(api, "helper@example.com")
    brand, other = await new_brand(api, owner), await new_brand(api, owner, "other")
    collab = await api.tx(
        lambda s: tokens.add_collaborator(
            s, brand_id=brand, user_id=helper, access="limited", now=api.now
        )
    )
    with pytest.raises(InputError) as err:
        await new_token(api, helper, collaborator_id=collab.id)
    assert err.value.code == "COLLABORATOR_INSUFFICIENT"
    await api.tx(lambda s: tokens.set_access(s, collab.id, "full", api.now))
    with pytest.raises(InputError) as err:
        await new_token(api, helper, collaborator_id=collab.id, brand_ids=[other])
    assert err.value.code == "BRAND_NOT_AUTHORIZED"
    with pytest.raises(InputError):
        await new_token(api, owner, collaborator_id=collab.id)  # not the owner's collaborator


async def test_active_key_limit_counts_live_unexpired_keys(api: Api) -> None:
    """The tier's active-key limit: revoked and expired keys do not count; TOO_MANY_KEYS."""
    user = await new_user(api)
    ids = [(await new_token(api, user, expires_in=timedelta(days=1)))[0] for _ in range(10)]
    with pytest.raises(InputError) as err:
        await new_token(api, user)
    assert err.value.code == "TOO_MANY_KEYS"
    await api.tx(lambda s: tokens.revoke_token(s, ids[0], api.now))
    await new_token(api, user)
    api.app.clock.advance(timedelta(days=1))
    for _ in range(9):
        await new_token(api, user)


# -- storage, audit, usage ----------------------------------------------------------------------


async def test_tokens_are_stored_hashed_only(api: Api, tmp_path: Path, db_url: str) -> None:
    """No raw token appears in any table (nor in the SQLite files); only its hash and prefix."""
    user, sandbox = await api.tx(lambda s: tokens.add_user(s, "h@example.com", api.now))
    token_id, raw = await new_token(api, user.id)
    _, rotated = await api.tx(lambda s: tokens.rotate_token(s, token_id, api.now))
    for secret in (raw, rotated, sandbox):
        assert (await api.get(secret)).status_code in (200, 401)
    await api.gate.audit.flush()
    dump = []
    async with api.app.sessions() as session:
        for table in Base.metadata.sorted_tables:
            dump += [repr(tuple(row)) for row in await session.execute(select(table))]
        stored = await session.scalar(select(ApiToken.secret_hash).where(ApiToken.id == token_id))
    text = "\n".join(dump)
    assert stored == tokens.hash_token(rotated)
    for secret in (raw, rotated, sandbox):
        assert secret not in text and secret[19:] not in text
    if db_url.startswith("sqlite"):
        found = await asyncio.to_thread(_in_files, tmp_path, (raw, rotated, sandbox))
        assert found == []


def _in_files(directory: Path, secrets: tuple[str, ...]) -> list[str]:
    """The database files (main, WAL, shared memory) holding any of the secrets' random parts."""
    return [
        file.name
        for file in directory.glob("postd.db*")
        if any(secret[19:].encode() in file.read_bytes() for secret in secrets)
    ]


async def test_audit_rows_record_requests_and_scope_denials(api: Api) -> None:
    """One audit row per authenticated request, with status, IP, scope denial; none without a
    token, one for a refused known token."""
    user = await new_user(api)
    token_id, raw = await new_token(api, user, scopes=["read:account"])
    denied = assert_error(await api.get(raw, peer="203.0.113.7"), 403, "MISSING_SCOPE")
    assert denied["required_scope"] == "read:posts" and denied["your_scopes"] == ["read:account"]
    assert (await api.get(raw, "/api/v1/me")).status_code == 200
    await api.get(None)
    await api.tx(lambda s: tokens.revoke_token(s, token_id, api.now))
    await api.get(raw)
    await api.gate.audit.flush()
    rows = await api.tx(
        lambda s: s.execute(
            select(
                AuditEntry.token_id,
                AuditEntry.user_id,
                AuditEntry.method,
                AuditEntry.path,
                AuditEntry.status,
                AuditEntry.ip,
                AuditEntry.scope_denied,
                AuditEntry.created_at,
            ).order_by(AuditEntry.id)
        )
    )
    got = [tuple(r) for r in rows]
    now = api.now
    assert got == [
        (token_id, user, "GET", "/api/v1/posts/scheduled", 403, "203.0.113.7", "read:posts", now),
        (token_id, user, "GET", "/api/v1/me", 200, "127.0.0.1", None, now),
        (token_id, user, "GET", "/api/v1/posts/scheduled", 401, "127.0.0.1", None, now),
    ]


async def test_a_failed_audit_write_keeps_its_rows_for_the_next(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database refuses one audit write: nothing is lost, the rows and the token's use
    count are written by the next flush, once each."""
    user = await new_user(api)
    token_id, raw = await new_token(api, user)
    real_write, failures = writer.write, [1]

    async def write_once_failing(owner: Any, job: Any, **kwargs: Any) -> Any:
        if failures:
            failures.pop()
            raise OSError("disk I/O error")
        return await real_write(owner, job, **kwargs)

    monkeypatch.setattr(writer, "write", write_once_failing)
    assert (await api.get(raw)).status_code == 200
    assert (await api.get(raw, "/api/v1/me")).status_code == 200
    assert await api.gate.audit.flush() is False
    assert await api.tx(lambda s: s.scalar(select(func.count()).select_from(AuditEntry))) == 0
    assert (await api.get(raw, "/api/v1/me")).json()["request_count"] == 3
    assert await api.gate.audit.flush() is True
    paths = await api.tx(lambda s: s.scalars(select(AuditEntry.path).order_by(AuditEntry.id)))
    assert list(paths) == ["/api/v1/posts/scheduled", "/api/v1/me", "/api/v1/me"]
    row = await api.tx(lambda s: tokens.get_token(s, token_id))
    assert row.request_count == 3


async def test_token_use_is_counted(api: Api) -> None:
    """request_count counts every request at once in the Principal, and lands in the table."""
    user = await new_user(api)
    token_id, raw = await new_token(api, user)
    counts = [(await api.get(raw)).json()["request_count"] for _ in range(3)]
    assert counts == [1, 2, 3]
    await api.gate.audit.flush()
    api.app.clock.advance(60)
    assert (await api.get(raw)).json()["request_count"] == 4
    await api.gate.audit.flush()
    row = await api.tx(lambda s: tokens.get_token(s, token_id))
    assert row.request_count == 4 and row.last_used_at == api.now


async def test_purge_audit_keeps_recent_rows(api: Api) -> None:
    """purge_audit deletes rows older than the retention, and only those."""
    user = await new_user(api)
    _, raw = await new_token(api, user)
    await api.get(raw)
    await api.gate.audit.flush()
    api.app.clock.advance(timedelta(days=20))
    await api.get(raw)
    await api.gate.audit.flush()
    api.app.clock.advance(timedelta(days=11))
    assert await api.tx(lambda s: purge_audit(s, api.now, 30)) == 1
    left = await api.tx(lambda s: s.scalar(select(func.count()).select_from(AuditEntry)))
    assert left == 1


# -- the gate's other duties --------------------------------------------------------------------


async def test_rate_headers_on_success_and_error_responses(api: Api) -> None:
    """The admitted request's rate headers ride on 2xx and on errors raised after auth."""
    user = await new_user(api)
    _, raw = await new_token(api, user, scopes=["read:account"])
    for resp in (await api.get(raw, "/api/v1/me"), await api.get(raw)):
        assert resp.headers["X-API-Tier"] == "free"
        assert resp.headers["X-RateLimit-Limit"] == "1000"
        assert resp.headers["X-API-Scopes"] == "read:account"


async def test_a_refusal_from_admit_is_rendered_with_its_headers(api: Api) -> None:
    """An ApiError raised by the limits hook is the catalog JSON with its Retry-After."""

    async def refuse(*_args: Any) -> dict[str, str]:
        raise errors.ApiError("RATE_LIMITED", headers={"Retry-After": "7"}, retry_after_seconds=7)

    user = await new_user(api)
    _, raw = await new_token(api, user)
    api.gate = ApiGate(_routes(), api.app, admit=refuse)
    resp = await api.get(raw)
    assert assert_error(resp, 429, "RATE_LIMITED")["retry_after_seconds"] == 7
    assert resp.headers["Retry-After"] == "7"
    await api.gate.audit.flush()
    statuses = await api.tx(lambda s: s.scalars(select(AuditEntry.status)))
    assert list(statuses) == [429]


async def test_public_and_foreign_paths_skip_auth(api: Api) -> None:
    """/api/v1/errors and paths outside /api/v1 need no token and write no audit row."""
    assert (await api.get(None, "/api/v1/errors")).status_code == 200
    assert (await api.get(None, "/healthz")).json() == {"status": "ok"}
    await api.gate.audit.flush()
    assert await api.tx(lambda s: s.scalar(select(func.count()).select_from(AuditEntry))) == 0


async def test_gate_mounted_at_api_v1_like_the_app(api: Api) -> None:
    """Mounted with App.http.mount("/api/v1", ApiGate(...)): same auth, public paths, audit."""
    inner = FastAPI()
    errors.install(inner)

    @inner.get("/me")
    async def me(p: AnyToken) -> Any:
        return {"user_id": p.user_id}

    @inner.get("/errors")
    async def catalog() -> Any:
        return {"errors": []}

    outer = FastAPI()
    api.gate = ApiGate(inner, api.app, admit=fake_admit)
    outer.mount("/api/v1", api.gate)
    user = await new_user(api)
    _, raw = await new_token(api, user)
    transport = httpx.ASGITransport(app=outer)
    async with httpx.AsyncClient(transport=transport, base_url="http://postd") as c:
        ok = await c.get("/api/v1/me", headers={"X-API-Key": raw})
        assert ok.status_code == 200 and ok.json() == {"user_id": user}
        assert ok.headers["X-API-Tier"] == "free"
        assert_error(await c.get("/api/v1/me"), 401, "MISSING_TOKEN")
        assert (await c.get("/api/v1/errors")).status_code == 200
    await api.gate.audit.flush()
    paths = await api.tx(lambda s: s.scalars(select(AuditEntry.path)))
    assert list(paths) == ["/api/v1/me"]


async def test_real_limits_and_idempotency_layers(api: Api) -> None:
    """With the real hooks: budget headers from limits, and a write replayed by idempotency."""
    user = await new_user(api, tier="pro")
    _, raw = await new_token(api, user, scopes=["read:posts", "write:posts"])
    api.gate = ApiGate(_routes(), api.app)
    resp = await api.get(raw)
    assert resp.headers["X-API-Tier"] == "pro" and resp.headers["X-RateLimit-Limit"] == "60"
    headers = {"Authorization": f"Bearer {raw}", "Idempotency-Key": "k-1"}
    async with api.client() as c:
        first = await c.post("/api/v1/posts/schedule", headers=headers, json={"a": 1})
        again = await c.post("/api/v1/posts/schedule", headers=headers, json={"a": 1})
    assert first.status_code == again.status_code == 201
    assert again.headers.get("Idempotency-Replayed") == "true"
    assert again.headers["X-API-Tier"] == "pro"
    await api.gate.aclose()


async def test_an_internal_failure_is_500_and_never_logs_the_token(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database failure during authentication answers SERVER_ERROR; the log has no token."""
    user = await new_user(api)
    _, raw = await new_token(api, user)

    async def broken(*_args: Any, **_kw: Any) -> Any:
        secret = raw  # a local holding the token, as a real frame would
        raise RuntimeError(f"database unreachable {len(secret)}")

    monkeypatch.setattr(tokens, "authenticate", broken)
    with structlog.testing.capture_logs() as logs:
        assert_error(await api.get(raw), 500, "SERVER_ERROR")
    assert [e["event"] for e in logs] == ["api_auth_failed"]
    assert raw[19:] not in json.dumps(logs, default=str)


async def test_authentication_takes_no_write_lock(app_factory: Any, tmp_path: Path) -> None:
    """On SQLite a request authenticates while another process holds the write lock."""
    url = f"sqlite:///{tmp_path / 'postd.db'}"
    api = Api(await app_factory(make_settings(tmp_path, url)), None)  # type: ignore[arg-type]
    api.gate = ApiGate(_routes(), api.app, admit=fake_admit)
    user = await new_user(api)
    _, raw = await new_token(api, user)
    holder = sqlite3.connect(tmp_path / "postd.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        resp = await asyncio.wait_for(api.get(raw), timeout=10)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert resp.status_code == 200
    await api.gate.aclose()


# -- the CLI ------------------------------------------------------------------------------------


def postd(cfg: str, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli_main, ["--config", cfg, *args], input=stdin)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def cfg(tmp_path: Path, db_url: str) -> str:
    path = tmp_path / "postd.toml"
    path.write_text(
        f'[database]\nurl = "{db_url}"\n\n[sandbox]\nstate_path = "{tmp_path / "sb.db"}"\n'
    )
    code, _, err = postd(str(path), "migrate")
    assert code == 0, err
    return str(path)


def _authenticate(cfg: str, raw: str) -> deps.Principal:
    from daemon import config
    from daemon.clock import SystemClock

    settings = config.load(cfg)

    async def go() -> deps.Principal:
        engine = db.create_engine(settings.database.url, settings.base_dir)
        try:
            async with db.sessionmaker(engine)() as session, session.begin():
                return await tokens.authenticate(session, raw, "127.0.0.1", SystemClock().now())
        finally:
            await engine.dispose()

    return asyncio.run(go())


def test_cli_user_brand_and_token_lifecycle(cfg: str) -> None:
    """user add, brand add (owner defaults to the only user), token create/list/rotate/revoke:
    tokens are printed once, on the last line, and never by list."""
    code, out, err = postd(cfg, "user", "add", "ops@example.com", "--tier", "pro")
    assert code == 0, err
    user_id = out.strip().splitlines()[-1]
    sandbox = out.split("shown once): ")[1].split()[0]
    assert sandbox.startswith("outreply_test_")
    code, out, err = postd(cfg, "brand", "add", "Acme")
    brand = out.strip()
    assert code == 0 and not err, err
    code, out, err = postd(
        cfg, "token", "create", "--name", "zap", "--scopes", "read:posts write:posts",
        "--brand", brand, "--expires", "30d", "--ip", "127.0.0.1",
    )  # fmt: skip
    assert code == 0, err
    raw = out.strip().splitlines()[-1]
    principal = _authenticate(cfg, raw)
    assert principal.user_id == user_id and principal.brand_ids == {brand}
    assert principal.scopes == ("read:posts", "write:posts")
    code, listed, _ = postd(cfg, "token", "list")
    code_json, listed_json, _ = postd(cfg, "token", "list", "--user", "ops@example.com", "--json")
    rows = json.loads(listed_json)
    assert code == code_json == 0 and len(rows) == 2
    for secret in (raw, sandbox):
        assert secret[19:] not in listed + listed_json
        assert tokens.hash_token(secret) not in listed + listed_json
    token_id = next(r["id"] for r in rows if r["name"] == "zap")
    code, out, _ = postd(cfg, "token", "rotate", token_id)
    fresh = out.strip().splitlines()[-1]
    assert code == 0 and fresh.startswith("outreply_live_") and fresh != raw
    assert _authenticate(cfg, fresh).token_id == token_id
    with pytest.raises(errors.ApiError) as err_old:
        _authenticate(cfg, raw)
    assert err_old.value.spec.code == "INVALID_TOKEN"
    assert postd(cfg, "token", "revoke", token_id)[0] == 0
    with pytest.raises(errors.ApiError) as err_revoked:
        _authenticate(cfg, fresh)
    assert err_revoked.value.spec.code == "TOKEN_REVOKED"


def test_cli_brand_made_before_its_user_gets_an_owner(cfg: str) -> None:
    """A brand added while there is no user has no owner (brand add warns how to fix it), no
    token reaches it; brand set-owner gives it to a user, whose tokens reach it at once and the
    previous owner's no longer do, and the brand's audit log records both changes. Bad input
    (unknown brand or user, a collaborator as owner) is refused and changes nothing."""
    code, out, err = postd(cfg, "brand", "add", "Acme")
    brand = out.strip()
    assert code == 0 and f"postd brand set-owner {brand} USER" in err
    first = postd(cfg, "user", "add", "ann@example.com")[1].strip().splitlines()[-1]
    second = postd(cfg, "user", "add", "bob@example.com")[1].strip().splitlines()[-1]
    ann = postd(cfg, "token", "create", "--user", first)[1].strip().splitlines()[-1]
    bob = postd(cfg, "token", "create", "--user", second)[1].strip().splitlines()[-1]
    assert _authenticate(cfg, ann).brand_ids == frozenset()

    assert postd(cfg, "brand", "set-owner", brand, "ANN@example.com")[0] == 0
    assert _authenticate(cfg, ann).brand_ids == {brand}
    assert postd(cfg, "brand", "set-owner", brand, second)[0] == 0
    assert _authenticate(cfg, ann).brand_ids == frozenset()
    assert _authenticate(cfg, bob).brand_ids == {brand}

    assert postd(cfg, "collaborator", "add", "--brand", brand, "--user", first)[0] == 0
    for args, expected in (
        (["nope", second], "unknown brand"),
        ([brand, "carol@example.com"], "unknown user"),
        ([brand, first], "collaborates on brand"),
    ):
        code, out, err = postd(cfg, "brand", "set-owner", *args)
        assert code == 1 and expected in err and err.startswith("postd: error:"), err
    assert _authenticate(cfg, bob).brand_ids == {brand}
    assert _owner_changes(cfg, brand) == [
        {"from": None, "to": first},
        {"from": first, "to": second},
    ]


def _owner_changes(cfg: str, brand: str) -> list[dict[str, Any]]:
    from daemon import config

    settings = config.load(cfg)

    async def go() -> list[dict[str, Any]]:
        engine = db.create_engine(settings.database.url, settings.base_dir)
        try:
            async with db.sessionmaker(engine)() as session:
                rows = await session.scalars(
                    select(BrandAuditEntry)
                    .where(
                        BrandAuditEntry.brand_id == brand,
                        BrandAuditEntry.action == "brand.owner",
                    )
                    .order_by(BrandAuditEntry.id)
                )
                return [row.detail for row in rows]
        finally:
            await engine.dispose()

    return asyncio.run(go())


def test_cli_default_scopes_are_read_only(cfg: str) -> None:
    """token create without --scopes grants the read scopes only; --scopes '*' grants all."""
    postd(cfg, "user", "add", "ops@example.com")
    code, out, err = postd(cfg, "token", "create")
    assert code == 0, err
    scopes = _authenticate(cfg, out.strip().splitlines()[-1]).scopes
    assert scopes and all(s.startswith("read:") for s in scopes)
    code, out, _ = postd(cfg, "token", "create", "--scopes", "*")
    assert _authenticate(cfg, out.strip().splitlines()[-1]).scopes == ("*",)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--scopes", "read:everything"], "INVALID_REQUEST"),
        (["--expires", "3w"], "INVALID_REQUEST"),
        (["--expires", "800d"], "INVALID_REQUEST"),
        (["--ip", "10.0.0.300"], "INVALID_REQUEST"),
        (["--brand", "000000000000000000000000"], "BRAND_NOT_AUTHORIZED"),
        (["--user", "nobody@example.com"], "NOT_FOUND"),
    ],
)
def test_cli_token_create_refuses_bad_input(cfg: str, args: list[str], expected: str) -> None:
    """Bad input is one line with a stable code, exit 1, and creates nothing."""
    postd(cfg, "user", "add", "ops@example.com")
    code, _, err = postd(cfg, "token", "create", *args)
    assert code == 1 and expected in err and len(err.strip().splitlines()) == 1
    assert [r["kind"] for r in json.loads(postd(cfg, "token", "list", "--json")[1])] == ["sandbox"]


def test_cli_collaborators(cfg: str) -> None:
    """collaborator add/set-access/remove, and a collaborator-issued key revoked on removal."""
    postd(cfg, "user", "add", "owner@example.com")
    brand = postd(cfg, "brand", "add", "Acme")[1].strip()
    helper = postd(cfg, "user", "add", "helper@example.com")[1].strip().splitlines()[-1]
    code, out, err = postd(cfg, "collaborator", "add", "--brand", brand, "--user", helper)
    assert code == 0, err
    collab = out.strip()
    code, out, err = postd(cfg, "token", "create", "--collaborator", collab, "--scopes", "*")
    assert code == 0, err
    raw = out.strip().splitlines()[-1]
    assert _authenticate(cfg, raw).brand_ids == {brand}
    assert postd(cfg, "collaborator", "set-access", collab, "limited")[0] == 0
    with pytest.raises(errors.ApiError) as downgraded:
        _authenticate(cfg, raw)
    assert downgraded.value.spec.code == "COLLABORATOR_INSUFFICIENT"
    code, out, _ = postd(cfg, "collaborator", "remove", collab)
    assert code == 0 and "revoked 1" in out
    with pytest.raises(errors.ApiError) as removed:
        _authenticate(cfg, raw)
    assert removed.value.spec.code == "TOKEN_REVOKED"


def test_cli_token_import_reads_stdin(cfg: str) -> None:
    """token import adopts a legacy token read from stdin; it then authenticates."""
    postd(cfg, "user", "add", "ops@example.com")
    legacy = "orply_live_" + "Xy9LegacyTokenValue1234"
    code, out, err = postd(cfg, "token", "import", "--name", "old", stdin=legacy + "\n")
    assert code == 0 and legacy not in out, err
    assert _authenticate(cfg, legacy).token_name == "old"
