"""A fake Bluesky PDS: the XRPC endpoints the adapter uses, as documented (platforms.md §8).

Route names for :meth:`FakePlatform.fail`: ``create_session``, ``refresh_session``,
``upload_blob``, ``create_record``, ``list_records``, ``get_record``, ``get_post_thread``,
``resolve_handle``. Platform modes:

    expired_token    400 {"error": "ExpiredToken"} (any authenticated route)
    duplicate        ``create_record``: 400 InvalidRequest (Bluesky has no duplicate-content
                     rule; this is its validation answer)
    ambiguous_after  ``create_record``: the record is created, then 502 UpstreamFailure
    hang_after       ``create_record``: the record is created, then no answer

Access tokens are JWT-shaped with an ``exp`` claim (``access_ttl`` seconds on the fake's clock);
``refreshSession`` rotates the refresh token (the old one stops working), as the PDS does.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import regex
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tests.fakes._server import FakePlatform, Recorded

POST = "app.bsky.feed.post"
_B32 = "234567abcdefghijklmnopqrstuvwxyz"


def _iso(when: datetime) -> str:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


class FakeBluesky(FakePlatform):
    name = "bluesky"

    def __init__(
        self,
        now: Callable[[], datetime],
        *,
        handle: str = "alice.test",
        password: str = "app-pass-1234",
        access_ttl: float = 7200,
    ) -> None:
        super().__init__(now)
        self.access_ttl = access_ttl
        self.passwords: dict[str, tuple[str, str]] = {}  # handle -> (password, did)
        self.handles: dict[str, str] = {}  # handle -> did
        self.access: dict[str, tuple[str, datetime]] = {}  # token -> (did, expiry)
        self.refresh: dict[str, str] = {}  # valid refresh token -> did
        self.records: list[dict[str, Any]] = []
        self.blobs: dict[str, dict[str, Any]] = {}
        self._clock_id = itertools.count()
        self.did = self.add_account(handle, password)
        for method, nsid, name, handler in (
            ("POST", "com.atproto.server.createSession", "create_session", self._create_session),
            ("POST", "com.atproto.server.refreshSession", "refresh_session", self._refresh),
            ("POST", "com.atproto.repo.uploadBlob", "upload_blob", self._authed(self._upload)),
            ("POST", "com.atproto.repo.createRecord", "create_record", self._authed(self._create)),
            ("GET", "com.atproto.repo.listRecords", "list_records", self._authed(self._list)),
            ("GET", "com.atproto.repo.getRecord", "get_record", self._authed(self._get)),
            ("GET", "app.bsky.feed.getPostThread", "get_post_thread", self._authed(self._thread)),
            ("GET", "com.atproto.identity.resolveHandle", "resolve_handle", self._resolve),
        ):
            self.route(method, f"/xrpc/{nsid}", name, handler)

    # --- state helpers ------------------------------------------------------------------------

    def add_account(self, handle: str, password: str = "") -> str:
        did = f"did:plc:{hashlib.sha256(handle.encode()).hexdigest()[:24]}"
        self.passwords[handle] = (password, did)
        self.handles[handle] = did
        return did

    def _tokens(self, did: str) -> dict[str, str]:
        expiry = self.now() + timedelta(seconds=self.access_ttl)
        header = _b64({"alg": "ES256K", "typ": "at+jwt"})
        claims = _b64({"scope": "com.atproto.access", "sub": did, "exp": int(expiry.timestamp())})
        access = f"{header}.{claims}.{secrets.token_urlsafe(16)}"
        refresh = f"refresh-{secrets.token_urlsafe(16)}"
        self.access[access] = (did, expiry)
        self.refresh[refresh] = did
        handle = next(h for h, d in self.handles.items() if d == did)
        return {"did": did, "handle": handle, "accessJwt": access, "refreshJwt": refresh}

    def expire_access_tokens(self) -> None:
        """Every access token issued so far expires now."""
        self.access = {token: (did, self.now()) for token, (did, _) in self.access.items()}

    def _rkey(self) -> str:
        micros = int(self.now().timestamp() * 1_000_000)
        value = (micros << 10) | (next(self._clock_id) % 1024)
        return "".join(_B32[(value >> (5 * i)) & 31] for i in reversed(range(13)))

    def add_post(self, did: str, record: dict[str, Any]) -> dict[str, Any]:
        rkey = self._rkey()
        uri = f"at://{did}/{POST}/{rkey}"
        cid = (
            "bafyrei" + hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:40]
        )
        stored = {"uri": uri, "cid": cid, "value": record, "did": did, "rkey": rkey}
        self.records.append(stored)
        return stored

    def add_reply(self, parent_uri: str, text: str, handle: str) -> dict[str, Any]:
        """Someone else replies to ``parent_uri`` from their own repo."""
        did = self.handles.get(handle) or self.add_account(handle)
        parent = next(r for r in self.records if r["uri"] == parent_uri)
        root = (parent["value"].get("reply") or {}).get("root") or {
            "uri": parent["uri"],
            "cid": parent["cid"],
        }
        record = {
            "$type": POST,
            "text": text,
            "createdAt": _iso(self.now()),
            "reply": {"root": root, "parent": {"uri": parent["uri"], "cid": parent["cid"]}},
        }
        return self.add_post(did, record)

    def by_text(self, text: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["value"].get("text") == text]

    # --- responses ----------------------------------------------------------------------------

    def _headers(self, remaining: int = 2999) -> dict[str, str]:
        reset = int((self.now() + timedelta(minutes=5)).timestamp())
        return {
            "RateLimit-Limit": "3000",
            "RateLimit-Remaining": str(remaining),
            "RateLimit-Reset": str(reset),
            "RateLimit-Policy": "3000;w=300",
        }

    def _json(self, data: Any, status: int = 200) -> Response:
        return JSONResponse(data, status, headers=self._headers())

    def _err(self, name: str, message: str, status: int = 400) -> Response:
        return self._json({"error": name, "message": message}, status)

    def rate_limited(self) -> Response:
        headers = self._headers(0)
        headers["RateLimit-Reset"] = str(int((self.now() + timedelta(seconds=90)).timestamp()))
        body = {"error": "RateLimitExceeded", "message": "Rate Limit Exceeded"}
        return JSONResponse(body, 429, headers=headers)

    def error_body(self, what: str) -> Any:
        return {"error": "InternalServerError", "message": what}

    def _authed(self, handler: Any) -> Any:
        async def run(request: Request, rec: Recorded, mode: str | None) -> Response:
            token = rec.headers.get("authorization", "").removeprefix("Bearer ")
            if mode == "expired_token":
                return self._err("ExpiredToken", "Token has expired")
            if token not in self.access:
                return self._err("InvalidToken", "Token could not be verified", 401)
            did, expiry = self.access[token]
            if expiry <= self.now():
                return self._err("ExpiredToken", "Token has expired")
            return await handler(request, rec, mode, did)  # type: ignore[no-any-return]

        return run

    # --- endpoints ----------------------------------------------------------------------------

    async def _create_session(self, _r: Request, rec: Recorded, _m: str | None) -> Response:
        body = rec.json()
        password, did = self.passwords.get(body.get("identifier", ""), ("", ""))
        if not did or not password or body.get("password") != password:
            return self._err("AuthenticationRequired", "Invalid identifier or password", 401)
        return self._json(self._tokens(did))

    async def _refresh(self, _r: Request, rec: Recorded, mode: str | None) -> Response:
        token = rec.headers.get("authorization", "").removeprefix("Bearer ")
        did = self.refresh.pop(token, None)
        if did is None or mode == "expired_token":
            return self._err("ExpiredToken", "Token has been revoked")
        return self._json(self._tokens(did))

    async def _upload(self, _r: Request, rec: Recorded, _m: str | None, _did: str) -> Response:
        mime = rec.headers.get("content-type", "application/octet-stream")
        cid = "bafkrei" + hashlib.sha256(rec.body).hexdigest()[:40]
        blob = {"$type": "blob", "ref": {"$link": cid}, "mimeType": mime, "size": len(rec.body)}
        self.blobs[cid] = blob
        return self._json({"blob": blob})

    def _invalid(self, record: dict[str, Any]) -> str | None:
        text = record.get("text", "")
        if record.get("$type") != POST or not isinstance(record.get("createdAt"), str):
            return "Invalid app.bsky.feed.post record"
        if len(regex.findall(r"\X", text)) > 300 or len(text.encode()) > 3000:
            return "Record/text must not be longer than 300 graphemes"
        size = len(text.encode())
        for facet in record.get("facets") or ():
            index = facet["index"]
            if not 0 <= index["byteStart"] < index["byteEnd"] <= size:
                return "Invalid facet index"
        for image in (record.get("embed") or {}).get("images") or ():
            if image["image"]["ref"]["$link"] not in self.blobs:
                return "Could not find blob"
        return None

    async def _create(self, _r: Request, rec: Recorded, mode: str | None, did: str) -> Response:
        body = rec.json()
        if body.get("repo") != did or body.get("collection") != POST:
            return self._err("InvalidRequest", "repo or collection not allowed")
        problem = "Duplicate post" if mode == "duplicate" else self._invalid(body["record"])
        if problem:
            return self._err("InvalidRequest", problem)
        stored = self.add_post(did, body["record"])
        if mode == "ambiguous_after":
            return self._err("UpstreamFailure", "Upstream Failure", 502)
        if mode == "hang_after":
            return await self._generic("hang")
        commit = {"cid": "bafyreicommit", "rev": stored["rkey"]}
        out = {"uri": stored["uri"], "cid": stored["cid"], "commit": commit}
        return self._json({**out, "validationStatus": "valid"})

    async def _list(self, _r: Request, rec: Recorded, _m: str | None, _did: str) -> Response:
        repo, limit, cursor = rec.param("repo"), int(rec.param("limit") or 50), rec.param("cursor")
        mine = [r for r in self.records if r["did"] == repo and rec.param("collection") == POST]
        mine.sort(key=lambda r: r["rkey"], reverse=True)
        if cursor:
            mine = [r for r in mine if r["rkey"] < cursor]
        page = mine[:limit]
        out: dict[str, Any] = {
            "records": [{"uri": r["uri"], "cid": r["cid"], "value": r["value"]} for r in page]
        }
        if len(mine) > limit:
            out["cursor"] = page[-1]["rkey"]
        return self._json(out)

    async def _get(self, _r: Request, rec: Recorded, _m: str | None, _did: str) -> Response:
        repo = rec.param("repo")
        did = self.handles.get(repo or "", repo)
        uri = f"at://{did}/{rec.param('collection')}/{rec.param('rkey')}"
        for r in self.records:
            if r["uri"] == uri:
                return self._json({"uri": r["uri"], "cid": r["cid"], "value": r["value"]})
        return self._err("RecordNotFound", f"Could not locate record: {uri}")

    def _view(self, record: dict[str, Any]) -> dict[str, Any]:
        handle = next(h for h, d in self.handles.items() if d == record["did"])
        return {
            "$type": "app.bsky.feed.defs#threadViewPost",
            "post": {
                "uri": record["uri"],
                "cid": record["cid"],
                "author": {"did": record["did"], "handle": handle, "displayName": handle.title()},
                "record": record["value"],
                "indexedAt": record["value"]["createdAt"],
            },
            "replies": [
                self._view(r)
                for r in self.records
                if (r["value"].get("reply") or {}).get("parent", {}).get("uri") == record["uri"]
            ],
        }

    async def _thread(self, _r: Request, rec: Recorded, _m: str | None, _did: str) -> Response:
        for record in self.records:
            if record["uri"] == rec.param("uri"):
                return self._json({"thread": self._view(record)})
        return self._err("NotFound", "Post not found")

    async def _resolve(self, _r: Request, rec: Recorded, _m: str | None) -> Response:
        did = self.handles.get(rec.param("handle") or "")
        if did is None:
            return self._err("InvalidRequest", "Unable to resolve handle")
        return self._json({"did": did})
