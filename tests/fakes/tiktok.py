"""A fake TikTok (Content Posting API, Display API, OAuth v2; platforms.md §4).

Every API answer carries TikTok's envelope ``{"data": ..., "error": {"code", "message",
"log_id"}}``; errors keep it (``code`` not ``ok``). Requests are checked as TikTok documents them
(Bearer token, ``Content-Type: application/json; charset=UTF-8`` on POSTs, the init body's
fields, the upload's ``Content-Range``/``Content-Length`` against the announced chunk plan); a
request that does not conform is recorded in :attr:`FakeTikTok.violations` and answered 400
``invalid_params``.

A video publish goes: init (``PROCESSING_UPLOAD``) -> every chunk PUT in order -> after
``processing_polls`` status fetches ``PUBLISH_COMPLETE``; only then does the post exist (in
:attr:`FakeTikTok.posts`) and, when public, appear in ``/v2/video/list/`` and get a
``publicaly_available_post_id``. Photo publishes (PULL_FROM_URL) skip the upload.

Route names for :meth:`FakePlatform.fail`: ``authorize``, ``token``, ``user_info``,
``creator_info``, ``video_init``, ``content_init``, ``upload``, ``status``, ``video_list``.
Platform modes:

    expired_token      401 access_token_invalid (any API route)
    rate_limit_200     HTTP 200 whose envelope says rate_limit_exceeded (TikTok does this [C3])
    spam_risk          ``video_init``/``content_init``: 403 spam_risk_too_many_posts
    unaudited          ``video_init``: 403 unaudited_client_can_only_post_to_private_accounts
    ambiguous_after    ``video_init``/``content_init``: the publish is created, then 500
    hang_after         ``video_init``: the publish is created, then no answer
    not_ready          ``status``: answers PROCESSING_UPLOAD whatever the state
    failed:<reason>    ``status``: the publish fails with fail_reason <reason>
    invalid_grant      ``token``: 400 invalid_grant
"""

from __future__ import annotations

import re
import secrets
import struct
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from tests.fakes._server import FakePlatform, Recorded

CLIENT_KEY = "tt-client-key"
CLIENT_SECRET = "tt-secret"
TOKEN_LIFETIME = 86400
REFRESH_LIFETIME = 31_536_000
JSON_TYPE = "application/json; charset=UTF-8"
_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
CREATOR = {
    "creator_avatar_url": "https://p16.tiktokcdn.example/alice.jpeg",
    "creator_username": "alice_tt",
    "creator_nickname": "Alice",
    "privacy_level_options": ["PUBLIC_TO_EVERYONE", "MUTUAL_FOLLOW_FRIENDS", "SELF_ONLY"],
    "comment_disabled": False,
    "duet_disabled": False,
    "stitch_disabled": True,
    "max_video_post_duration_sec": 600,
}


def make_mp4(seconds: int = 12, size: int = 10_000) -> bytes:
    """An MP4 header (``ftyp``, ``moov/mvhd`` with ``seconds`` at timescale 1000) padded to
    ``size`` bytes: enough for type sniffing and the duration check."""
    ftyp = struct.pack(">I4s4sI4s4s", 24, b"ftyp", b"isom", 512, b"isom", b"mp41")
    mvhd_body = struct.pack(">B3xIIII", 0, 0, 0, 1000, seconds * 1000) + b"\x00" * 80
    mvhd = struct.pack(">I4s", 8 + len(mvhd_body), b"mvhd") + mvhd_body
    moov = struct.pack(">I4s", 8 + len(mvhd), b"moov") + mvhd
    head = ftyp + moov
    return head + bytes(i % 251 for i in range(max(size - len(head), 0)))


class FakeTikTok(FakePlatform):
    name = "tiktok"

    def __init__(self, now: Callable[[], datetime], *, processing_polls: int = 0) -> None:
        super().__init__(now)
        self.processing_polls = processing_polls
        self.violations: list[str] = []
        self.creator: dict[str, Any] = dict(CREATOR)
        self.tokens: dict[str, datetime] = {}  # access token -> expiry
        self.refresh_tokens: set[str] = set()
        self.codes: dict[str, str] = {}  # code -> redirect_uri
        self.publishes: dict[str, dict[str, Any]] = {}
        self.posts: list[dict[str, Any]] = []  # what went out, in order
        self._next = 7_400_000_000_000_000_000
        self.route("GET", "/v2/auth/authorize/", "authorize", self._authorize)
        self.route("POST", "/v2/oauth/token/", "token", self._token)
        self.route("PUT", "/upload/{publish_id}", "upload", self._upload)
        for method, path, name, handler in (
            ("GET", "/v2/user/info/", "user_info", self._user_info),
            ("POST", "/v2/post/publish/creator_info/query/", "creator_info", self._creator_info),
            ("POST", "/v2/post/publish/video/init/", "video_init", self._video_init),
            ("POST", "/v2/post/publish/content/init/", "content_init", self._content_init),
            ("POST", "/v2/post/publish/status/fetch/", "status", self._status),
            ("POST", "/v2/video/list/", "video_list", self._video_list),
        ):
            self.route(method, path, name, self._authed(handler))

    # --- state helpers ------------------------------------------------------------------------

    def issue(self) -> dict[str, Any]:
        """A token answer (what the token endpoint returns)."""
        access, refresh = f"act.{secrets.token_hex(8)}", f"rft.{secrets.token_hex(8)}"
        self.tokens[access] = self.now() + timedelta(seconds=TOKEN_LIFETIME)
        self.refresh_tokens.add(refresh)
        return {
            "open_id": "open-alice",
            "scope": "user.info.basic,video.publish,video.upload,video.list",
            "access_token": access,
            "expires_in": TOKEN_LIFETIME,
            "refresh_token": refresh,
            "refresh_expires_in": REFRESH_LIFETIME,
            "token_type": "Bearer",
        }

    def posted_titles(self) -> list[str]:
        return [p["title"] for p in self.posts]

    # --- responses ----------------------------------------------------------------------------

    def _json(self, data: Any, code: str = "ok", status: int = 200, message: str = "") -> Response:
        error = {"code": code, "message": message, "log_id": secrets.token_hex(6)}
        body = {"error": error} if data is None else {"data": data, "error": error}
        return JSONResponse(body, status)

    def rate_limited(self) -> Response:
        return self._json(None, "rate_limit_exceeded", 429, "Too many requests")

    def error_body(self, what: str) -> Any:
        return {"error": {"code": "internal_error", "message": what, "log_id": "x"}}

    def _invalid(self, problems: list[str]) -> Response:
        self.violations += problems
        return self._json(None, "invalid_params", 400, "; ".join(problems))

    def _authed(self, handler: Any) -> Any:
        async def run(request: Request, rec: Recorded, mode: str | None) -> Response:
            token = rec.headers.get("authorization", "").removeprefix("Bearer ")
            expiry = self.tokens.get(token)
            if expiry is None or expiry <= self.now() or mode == "expired_token":
                return self._json(None, "access_token_invalid", 401, "The access token is invalid")
            if rec.method == "POST" and rec.headers.get("content-type") != JSON_TYPE:
                return self._invalid(
                    [f"{rec.path}: content-type {rec.headers.get('content-type')}"]
                )
            if mode == "rate_limit_200":
                return self._json(None, "rate_limit_exceeded", 200, "Too many requests")
            return await handler(request, rec, mode)  # type: ignore[no-any-return]

        return run

    # --- OAuth --------------------------------------------------------------------------------

    async def _authorize(self, _r: Request, rec: Recorded, _mode: str | None) -> Response:
        """The user signs in as alice and consents at once: redirect with a code."""
        wanted = ("client_key", "response_type", "scope", "redirect_uri", "state")
        missing = [name for name in wanted if not rec.param(name)]
        scopes = set((rec.param("scope") or "").split(","))
        if missing or rec.param("client_key") != CLIENT_KEY or rec.param("response_type") != "code":
            return JSONResponse({"error": "invalid_request", "missing": missing}, 400)
        if not scopes >= {"user.info.basic", "video.publish"}:
            return JSONResponse({"error": "invalid_scope"}, 400)
        code = f"code-{secrets.token_hex(6)}"
        self.codes[code] = str(rec.param("redirect_uri"))
        query = urlencode(
            {"code": code, "scopes": ",".join(sorted(scopes)), "state": rec.param("state")}
        )
        return RedirectResponse(f"{rec.param('redirect_uri')}?{query}", 302)

    async def _token(self, _r: Request, rec: Recorded, mode: str | None) -> Response:
        form = {k: v[0] for k, v in parse_qs(rec.body.decode()).items()}
        if not rec.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            self.violations.append("token: not form-encoded")
        invalid = {
            "error": "invalid_grant",
            "error_description": "Authorization code is expired.",
            "log_id": secrets.token_hex(6),
        }
        if form.get("client_key") != CLIENT_KEY or form.get("client_secret") != CLIENT_SECRET:
            return JSONResponse({"error": "invalid_client", "log_id": "x"}, 401)
        if mode == "invalid_grant":
            return JSONResponse(invalid, 400)
        if form.get("grant_type") == "authorization_code":
            redirect = self.codes.pop(form.get("code", ""), None)
            if redirect is None or redirect != form.get("redirect_uri"):
                return JSONResponse(invalid, 400)
            return JSONResponse(self.issue())
        if form.get("grant_type") == "refresh_token":
            token = form.get("refresh_token", "")
            if token not in self.refresh_tokens:
                return JSONResponse(invalid, 400)
            self.refresh_tokens.discard(token)  # rotated
            return JSONResponse(self.issue())
        return JSONResponse({"error": "unsupported_grant_type", "log_id": "x"}, 400)

    # --- API ----------------------------------------------------------------------------------

    async def _user_info(self, _r: Request, rec: Recorded, _m: str | None) -> Response:
        fields = (rec.param("fields") or "").split(",")
        user = {
            "open_id": "open-alice",
            "union_id": "union-alice",
            "display_name": "Alice",
            "avatar_url": CREATOR["creator_avatar_url"],
        }
        return self._json({"user": {k: v for k, v in user.items() if k in fields}})

    async def _creator_info(self, _r: Request, rec: Recorded, _m: str | None) -> Response:
        if rec.body:
            return self._invalid(["creator_info takes no body"])
        return self._json(self.creator)

    def _new_publish(self, kind: str, info: dict[str, Any], source: dict[str, Any]) -> str:
        publish_id = f"v_pub_{kind}~v2-1.{secrets.token_hex(6)}"
        self.publishes[publish_id] = {
            "kind": kind,
            "info": info,
            "source": source,
            "received": 0,
            "chunks": 0,
            "status": "PROCESSING_UPLOAD" if kind == "file" else "PROCESSING_DOWNLOAD",
            "polls": self.processing_polls,
            "post_id": None,
            "fail_reason": "",
        }
        if kind != "file":
            self.publishes[publish_id]["received"] = -1  # nothing to upload
        return publish_id

    def _check_info(self, info: Any, title_field: str) -> list[str]:
        if not isinstance(info, dict):
            return ["post_info missing"]
        problems = []
        if info.get("privacy_level") not in self.creator["privacy_level_options"]:
            problems.append(f"privacy_level {info.get('privacy_level')!r} not offered")
        if not isinstance(info.get(title_field, ""), str):
            problems.append(f"{title_field} must be a string")
        return problems

    async def _video_init(self, _r: Request, rec: Recorded, mode: str | None) -> Response:
        body = rec.json()
        source, info = body.get("source_info") or {}, body.get("post_info")
        problems = self._check_info(info, "title")
        if source.get("source") != "FILE_UPLOAD":
            problems.append("source must be FILE_UPLOAD here")
        plan: list[Any] = [source.get(k) for k in ("video_size", "chunk_size", "total_chunk_count")]
        size, chunk, count = plan
        if not all(isinstance(v, int) and v > 0 for v in (size, chunk, count)):
            problems.append("video_size, chunk_size, total_chunk_count must be positive ints")
        elif count != max(size // chunk, 1):
            problems.append(f"total_chunk_count {count} != floor({size} / {chunk})")
        if problems:
            return self._invalid(problems)
        if mode == "spam_risk":
            return self._json(None, "spam_risk_too_many_posts", 403, "Too many posts today")
        if mode == "unaudited":
            return self._json(None, "unaudited_client_can_only_post_to_private_accounts", 403)
        publish_id = self._new_publish("file", info, source)
        if mode == "ambiguous_after":
            return JSONResponse(self.error_body("internal"), 500)
        if mode == "hang_after":
            return await self._generic("hang")
        url = f"{self.base_url}/upload/{publish_id}?upload_token={secrets.token_hex(8)}"
        return self._json({"publish_id": publish_id, "upload_url": url})

    async def _content_init(self, _r: Request, rec: Recorded, mode: str | None) -> Response:
        body = rec.json()
        source, info = body.get("source_info") or {}, body.get("post_info")
        problems = self._check_info(info, "description")
        if (body.get("media_type"), body.get("post_mode")) != ("PHOTO", "DIRECT_POST"):
            problems.append("media_type PHOTO, post_mode DIRECT_POST expected")
        images = source.get("photo_images")
        if source.get("source") != "PULL_FROM_URL" or not isinstance(images, list) or not images:
            problems.append("photos are PULL_FROM_URL with photo_images")
        if problems:
            return self._invalid(problems)
        if mode == "spam_risk":
            return self._json(None, "spam_risk_too_many_posts", 403, "Too many posts today")
        publish_id = self._new_publish("photo", info, source)
        if mode == "ambiguous_after":
            return JSONResponse(self.error_body("internal"), 500)
        return self._json({"publish_id": publish_id})

    async def _upload(self, r: Request, rec: Recorded, mode: str | None) -> Response:
        pub = self.publishes.get(r.path_params["publish_id"])
        if pub is None or pub["kind"] != "file" or not rec.param("upload_token"):
            return self._json(None, "invalid_file_upload", 404, "unknown upload")
        source = pub["source"]
        size, chunk, count = source["video_size"], source["chunk_size"], source["total_chunk_count"]
        match = _RANGE.fullmatch(rec.headers.get("content-range", ""))
        problems = []
        if rec.headers.get("content-type") not in ("video/mp4", "video/quicktime", "video/webm"):
            problems.append(f"upload content-type {rec.headers.get('content-type')}")
        if match is None:
            problems.append(f"content-range {rec.headers.get('content-range')!r}")
        else:
            first, last, total = (int(g) for g in match.groups())
            index = pub["chunks"]
            want_first = index * chunk
            want_last = size - 1 if index == count - 1 else want_first + chunk - 1
            if (first, last, total) != (want_first, want_last, size):
                problems.append(
                    f"chunk {index}: range {first}-{last}/{total}, expected "
                    f"{want_first}-{want_last}/{size}"
                )
            length = int(rec.headers.get("content-length", "-1"))
            if length != len(rec.body) or length != last - first + 1:
                problems.append("content-length does not match the range")
        if problems:
            self.violations += problems
            return self._json(None, "invalid_file_upload", 400, "; ".join(problems))
        pub["chunks"] += 1
        pub["received"] += len(rec.body)
        pub["bytes"] = pub.get("bytes", b"") + rec.body
        if pub["chunks"] < count:
            return Response(status_code=206)
        return Response(status_code=201)

    def _finish(self, publish_id: str, pub: dict[str, Any]) -> None:
        pub["status"] = "PUBLISH_COMPLETE"
        self._next += 1
        post = {
            "id": str(self._next),
            "publish_id": publish_id,
            "create_time": int(self.now().timestamp()),
            "title": pub["info"].get("title") or pub["info"].get("description") or "",
            "privacy": pub["info"]["privacy_level"],
        }
        pub["post_id"] = post["id"]
        self.posts.append(post)

    async def _status(self, _r: Request, rec: Recorded, mode: str | None) -> Response:
        publish_id = rec.json().get("publish_id")
        pub = self.publishes.get(publish_id)
        if pub is None:
            return self._json(None, "invalid_publish_id", 400, "publish_id not found")
        if mode is not None and mode.startswith("failed:") and pub["status"] != "PUBLISH_COMPLETE":
            pub["status"], pub["fail_reason"] = "FAILED", mode.removeprefix("failed:")
        uploaded = pub["kind"] != "file" or pub["chunks"] == pub["source"]["total_chunk_count"]
        if mode != "not_ready" and pub["status"].startswith("PROCESSING") and uploaded:
            if pub["polls"] > 0:
                pub["polls"] -= 1
            else:
                self._finish(publish_id, pub)
        status = "PROCESSING_UPLOAD" if mode == "not_ready" else pub["status"]
        public = pub["post_id"] and pub["info"]["privacy_level"] == "PUBLIC_TO_EVERYONE"
        data = {
            "status": status,
            "fail_reason": pub["fail_reason"],
            "publicaly_available_post_id": [int(pub["post_id"])] if public else [],
            "uploaded_bytes": max(pub["received"], 0),
            "downloaded_bytes": 0,
        }
        return self._json(data)

    async def _video_list(self, _r: Request, rec: Recorded, _m: str | None) -> Response:
        fields = (rec.param("fields") or "").split(",")
        body = rec.json()
        count, cursor = body.get("max_count", 10), body.get("cursor")
        if not isinstance(count, int) or not 1 <= count <= 20:
            return self._invalid([f"max_count {count!r}"])
        public = [p for p in self.posts if p["privacy"] == "PUBLIC_TO_EVERYONE"]
        public.sort(key=lambda p: int(p["id"]), reverse=True)
        if cursor is not None:
            public = [p for p in public if p["create_time"] * 1000 < cursor]
        page = public[:count]
        videos = []
        for p in page:
            video = {
                "id": p["id"],
                "create_time": p["create_time"],
                "title": p["title"],
                "video_description": p["title"],
                "duration": 12,
                "share_url": f"https://www.tiktok.com/@alice_tt/video/{p['id']}",
            }
            videos.append({k: v for k, v in video.items() if k in fields})
        data: dict[str, Any] = {"videos": videos, "has_more": len(public) > count}
        data["cursor"] = page[-1]["create_time"] * 1000 if page else 0
        return self._json(data)
