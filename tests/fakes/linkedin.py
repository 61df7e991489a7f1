"""A fake LinkedIn (Posts, Images, Videos, Comments APIs under ``/rest``, OAuth 2.0 under
``/oauth/v2``, OpenID ``/v2/userinfo``; platforms.md §3). Every ``/rest`` request must carry a
known bearer token, ``LinkedIn-Version`` (YYYYMM) and ``X-Restli-Protocol-Version: 2.0.0``; one
that does not is recorded in :attr:`FakeLinkedIn.violations` and refused 400, as LinkedIn would.
Answers carry LinkedIn's ``x-li-uuid`` and ``x-restli-protocol-version`` headers; errors use its
envelope (``status``, ``message``, ``serviceErrorCode``, ``errorDetails.inputErrors``).

Route names for :meth:`FakePlatform.fail`: ``authorize``, ``token``, ``userinfo``, ``posts``
(create), ``list_posts``, ``images`` (initializeUpload), ``image_upload``, ``videos``
(initializeUpload/finalizeUpload), ``video_part``, ``video_status``, ``create_comment``,
``comments``. Platform modes:

    rate_limit         (generic) 429 "Resource level throttle ... DAY limit", no Retry-After
    rate_limit_retry   429 with ``Retry-After: 120``
    expired_token      401 ``INVALID_ACCESS_TOKEN`` (any /rest route)
    duplicate          ``posts``: 422 ``DUPLICATE_POST`` (also answered by itself when the author
                       already has a post with the same commentary and content)
    ambiguous_after    ``posts``/``create_comment``: created, then 500
    hang_after         ``posts``: created, then no answer
    forbidden          403 ``ACCESS_DENIED`` (any /rest route; ``list_posts`` without
                       r_member_social)
    processing_failed  ``video_status``: PROCESSING_FAILED
    invalid_grant      ``token``: 400 ``invalid_grant``

Videos answer PROCESSING for ``processing_polls`` status reads after finalizeUpload, then
AVAILABLE. Commentary is kept as sent; an unescaped reserved character of the "little" format
(other than a hashtag's ``#``) cuts the text there, as LinkedIn does while answering 201.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from tests.fakes._server import FakePlatform, Recorded

CLIENT_ID = "li-client"
CLIENT_SECRET = "li-secret"
TOKEN_LIFETIME = 60 * 24 * 3600
REFRESH_LIFETIME = 365 * 24 * 3600
PART_SIZE = 4 * 1024 * 1024
_CUT = re.compile(r"[|{}@\[\]()<>*_~]|#(?!\w)")  # escapes are skipped by rendered()
_UNESCAPE = re.compile(r"\\([|{}@\[\]()<>#\\*_~])")


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def rendered(commentary: str) -> str:
    """What LinkedIn shows of ``commentary``: cut at an unescaped reserved character,
    unescaped."""
    text, i = commentary, 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            i += 2
            continue
        if _CUT.match(text, i):
            text = text[:i]
            break
        i += 1
    return _UNESCAPE.sub(r"\1", text)


class FakeLinkedIn(FakePlatform):
    name = "linkedin"

    def __init__(
        self, now: Callable[[], datetime], *, processing_polls: int = 0, part_size: int = PART_SIZE
    ) -> None:
        super().__init__(now)
        self.processing_polls = processing_polls
        self.part_size = part_size
        self.violations: list[str] = []
        self.raw_paths: list[str] = []  # /rest paths and queries as sent (URNs encoded)
        self.members: dict[str, dict[str, Any]] = {}
        self.tokens: dict[str, tuple[str, datetime]] = {}  # access token -> (sub, expiry)
        self.refresh_tokens: dict[str, tuple[str, datetime]] = {}
        self.codes: dict[str, dict[str, str]] = {}
        self.posts: list[dict[str, Any]] = []
        self.comments: list[dict[str, Any]] = []
        self.images: dict[str, dict[str, Any]] = {}
        self.videos: dict[str, dict[str, Any]] = {}
        self._next = 7_000_000_000
        self.alice = self.add_member("alice01", "Alice Example")
        self.bob = self.add_member("bob02", "Bob Example")
        self.route("GET", "/oauth/v2/authorization", "authorize", self._authorize)
        self.route("POST", "/oauth/v2/accessToken", "token", self._token)
        self.route("GET", "/v2/userinfo", "userinfo", self._bearer(self._userinfo))
        self.route("PUT", "/upload/images/{id}", "image_upload", self._bearer(self._image_put))
        self.route("PUT", "/upload/videos/{id}/{part}", "video_part", self._video_part)
        for method, path, name, handler in (
            ("POST", "/rest/posts", "posts", self._create_post),
            ("GET", "/rest/posts", "list_posts", self._list_posts),
            ("POST", "/rest/images", "images", self._image_init),
            ("POST", "/rest/videos", "videos", self._video_action),
            ("GET", "/rest/videos/{urn}", "video_status", self._video_status),
            ("POST", "/rest/socialActions/{urn}/comments", "create_comment", self._add_comment),
            ("GET", "/rest/socialActions/{urn}/comments", "comments", self._list_comments),
        ):
            self.route(method, path, name, self._rest(handler))

    # --- state helpers ------------------------------------------------------------------------

    def _id(self) -> str:
        self._next += 1
        return str(self._next)

    def add_member(self, sub: str, name: str) -> dict[str, Any]:
        member = {"sub": sub, "name": name, "urn": f"urn:li:person:{sub}"}
        self.members[sub] = member
        return member

    def issue(self, member: dict[str, Any], refresh: bool = True) -> dict[str, Any]:
        """A token answer for ``member`` (what the token endpoint returns)."""
        access = f"AQ-{secrets.token_hex(10)}"
        self.tokens[access] = (member["sub"], self.now() + timedelta(seconds=TOKEN_LIFETIME))
        answer: dict[str, Any] = {
            "access_token": access,
            "expires_in": TOKEN_LIFETIME,
            "scope": "openid,profile,w_member_social",
        }
        if refresh:
            token = f"AQR-{secrets.token_hex(10)}"
            ends = self.now() + timedelta(seconds=REFRESH_LIFETIME)
            self.refresh_tokens[token] = (member["sub"], ends)
            answer |= {"refresh_token": token, "refresh_token_expires_in": REFRESH_LIFETIME}
        return answer

    def root_texts(self) -> list[str]:
        return [rendered(p["commentary"]) for p in self.posts]

    def by_text(self, text: str) -> list[dict[str, Any]]:
        return [p for p in self.posts if rendered(p["commentary"]) == text]

    def add_comment(self, target: str, text: str, member: dict[str, Any]) -> str:
        """``member`` comments on post or comment ``target``; its comment URN."""
        parent = next((c for c in self.comments if c["commentUrn"] == target), None)
        obj = parent["object"] if parent else target
        return str(self._comment(member["urn"], obj, text, parent)["commentUrn"])

    def _comment(
        self, actor: str, obj: str, text: str, parent: dict[str, Any] | None
    ) -> dict[str, Any]:
        cid = self._id()
        comment: dict[str, Any] = {
            "actor": actor,
            "id": cid,
            "commentUrn": f"urn:li:comment:({obj},{cid})",
            "object": obj,
            "message": {"text": text},
            "created": {"actor": actor, "time": _ms(self.now())},
            "lastModified": {"actor": actor, "time": _ms(self.now())},
        }
        if parent is not None:
            comment["parentComment"] = parent["commentUrn"]
        self.comments.append(comment)
        return comment

    # --- responses ----------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {"x-li-uuid": secrets.token_hex(8), "x-restli-protocol-version": "2.0.0"}

    def _json(self, data: Any, status: int = 200, **headers: str) -> Response:
        return JSONResponse(data, status, headers={**self._headers(), **headers})

    def error(
        self,
        status: int,
        message: str,
        service: int,
        inputs: str | None = None,
        *,
        code: str | None = None,
    ) -> Response:
        """LinkedIn's error envelope; ``inputs`` is an ``inputErrors`` code, ``code`` the
        top-level one (``INVALID_ACCESS_TOKEN``, ``ACCESS_DENIED``)."""
        body: dict[str, Any] = {"status": status, "serviceErrorCode": service, "message": message}
        if code is not None:
            body["code"] = code
        if inputs is not None:
            body["errorDetailType"] = "com.linkedin.common.error.BadRequest"
            body["errorDetails"] = {
                "inputErrors": [{"code": inputs, "description": message, "input": {}}]
            }
        return self._json(body, status)

    def rate_limited(self) -> Response:
        message = "Resource level throttle MEMBER DAY limit for calls to this resource is reached."
        return self.error(429, message, 101)

    def error_body(self, what: str) -> Any:
        return {"status": 500 if what == "server_error" else 503, "message": what}

    def _bearer(self, handler: Any) -> Any:
        async def run(request: Request, rec: Recorded, mode: str | None) -> Response:
            token = rec.headers.get("authorization", "").removeprefix("Bearer ")
            owner = self.tokens.get(token)
            if owner is None or owner[1] <= self.now() or mode == "expired_token":
                return self.error(401, "Invalid access token", 65600, code="INVALID_ACCESS_TOKEN")
            return await handler(request, rec, mode, self.members[owner[0]])  # type: ignore[no-any-return]

        return run

    def _rest(self, handler: Any) -> Any:
        async def checked(request: Request, rec: Recorded, mode: str | None, who: Any) -> Response:
            raw = bytes(request.scope.get("raw_path") or b"").decode()
            query = bytes(request.scope.get("query_string") or b"").decode()
            self.raw_paths.append(f"{raw}?{query}" if query else raw)
            found = []
            if not re.fullmatch(r"20\d{4}", rec.headers.get("linkedin-version", "")):
                found.append(f"{rec.method} {rec.path}: LinkedIn-Version missing or not YYYYMM")
            if rec.headers.get("x-restli-protocol-version") != "2.0.0":
                found.append(f"{rec.method} {rec.path}: X-Restli-Protocol-Version not 2.0.0")
            if found:
                self.violations += found
                return self.error(400, "; ".join(found), 100, "VERSION_MISSING")
            if mode == "rate_limit_retry":
                return self._json(
                    {"status": 429, "message": "Too Many Requests"}, 429, **{"Retry-After": "120"}
                )
            if mode == "forbidden":
                message = "Not enough permissions to access this resource"
                return self.error(403, message, 100, code="ACCESS_DENIED")
            return await handler(request, rec, mode, who)  # type: ignore[no-any-return]

        return self._bearer(checked)

    # --- OAuth --------------------------------------------------------------------------------

    async def _authorize(self, _r: Request, rec: Recorded, _mode: str | None) -> Response:
        """Alice signs in and consents at once: redirect with a code (no PKCE here)."""
        wanted = ("response_type", "client_id", "redirect_uri", "scope", "state")
        missing = [name for name in wanted if not rec.param(name)]
        if missing or rec.param("response_type") != "code" or rec.param("client_id") != CLIENT_ID:
            return self._json({"error": "invalid_request", "missing": missing}, 400)
        code = f"code-{secrets.token_hex(6)}"
        self.codes[code] = {"redirect_uri": str(rec.param("redirect_uri")), "sub": "alice01"}
        query = urlencode({"code": code, "state": rec.param("state")})
        return RedirectResponse(f"{rec.param('redirect_uri')}?{query}", 302)

    async def _token(self, _r: Request, rec: Recorded, mode: str | None) -> Response:
        form = {k: v[0] for k, v in parse_qs(rec.body.decode()).items()}
        if rec.headers.get("content-type", "").split(";")[0] != "application/x-www-form-urlencoded":
            self.violations.append("token: not a form")
        if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
            return self._json({"error": "invalid_client", "error_description": "client"}, 401)
        refused = {
            "error": "invalid_grant",
            "error_description": "The provided authorization grant or refresh token is invalid,"
            " expired or revoked.",
        }
        if mode == "invalid_grant":
            return self._json(refused, 400)
        if form.get("grant_type") == "authorization_code":
            grant = self.codes.pop(form.get("code", ""), None)
            if grant is None or form.get("redirect_uri") != grant["redirect_uri"]:
                return self._json(refused, 400)
            return self._json(self.issue(self.members[grant["sub"]]))
        if form.get("grant_type") == "refresh_token":
            held = self.refresh_tokens.get(form.get("refresh_token", ""))
            if held is None or held[1] <= self.now():
                return self._json(refused, 400)
            answer = self.issue(self.members[held[0]], refresh=False)
            left = int((held[1] - self.now()).total_seconds())
            answer |= {"refresh_token": form["refresh_token"], "refresh_token_expires_in": left}
            return self._json(answer)
        return self._json({"error": "unsupported_grant_type"}, 400)

    async def _userinfo(self, _r: Request, _rec: Recorded, _m: str | None, who: Any) -> Response:
        given, _, family = who["name"].partition(" ")
        return self._json(
            {
                "sub": who["sub"],
                "name": who["name"],
                "given_name": given,
                "family_name": family,
                "locale": {"country": "US", "language": "en"},
            }
        )

    # --- posts --------------------------------------------------------------------------------

    def _content_ok(self, content: Any) -> bool:
        if content is None:
            return True
        if "multiImage" in content:
            ids = [i.get("id") for i in content["multiImage"].get("images") or []]
            return 2 <= len(ids) <= 20 and all(self._asset_ok(i) for i in ids)
        return self._asset_ok((content.get("media") or {}).get("id"))

    def _asset_ok(self, urn: Any) -> bool:
        if urn in self.images:
            return bool(self.images[urn]["uploaded"])
        return urn in self.videos and self.videos[urn]["status"] == "AVAILABLE"

    async def _create_post(
        self, _r: Request, rec: Recorded, mode: str | None, who: Any
    ) -> Response:
        body = rec.json()
        required = ("author", "commentary", "visibility", "distribution", "lifecycleState")
        missing = [k for k in required if k not in body]
        if missing or body["author"] != who["urn"] or not self._content_ok(body.get("content")):
            return self.error(422, f"bad post: {missing or 'author/content'}", 100, "INVALID")
        same = [
            p
            for p in self.posts
            if p["author"] == body["author"]
            and p["commentary"] == body["commentary"]
            and p.get("content") == body.get("content")
        ]
        if mode == "duplicate" or same:
            urn = same[0]["id"] if same else "urn:li:share:6999999999999999999"
            message = f"Content is a duplicate of {urn}"
            return self.error(422, message, 100, "DUPLICATE_POST")
        urn = f"urn:li:share:{self._id()}"
        post = {k: v for k, v in body.items()} | {
            "id": urn,
            "createdAt": _ms(self.now()),
            "publishedAt": _ms(self.now()),
            "lastModifiedAt": _ms(self.now()),
        }
        self.posts.append(post)
        if mode == "ambiguous_after":
            return self._json(self.error_body("server_error"), 500)
        if mode == "hang_after":
            return await self._generic("hang")
        return Response(status_code=201, headers={**self._headers(), "x-restli-id": urn})

    async def _list_posts(self, _r: Request, rec: Recorded, _m: str | None, who: Any) -> Response:
        if rec.param("q") != "author" or rec.headers.get("x-restli-method") != "FINDER":
            self.violations.append("list_posts: q=author with X-RestLi-Method FINDER expected")
        author = rec.param("author")
        start, count = int(rec.param("start") or 0), int(rec.param("count") or 10)
        mine = [p for p in self.posts if p["author"] == author]
        mine.sort(key=lambda p: p["lastModifiedAt"], reverse=True)
        page = mine[start : start + count]
        paging = {"start": start, "count": count, "links": []}
        return self._json({"elements": page, "paging": paging})

    # --- images and videos --------------------------------------------------------------------

    async def _image_init(self, _r: Request, rec: Recorded, _m: str | None, who: Any) -> Response:
        if rec.param("action") != "initializeUpload":
            return self.error(400, "unknown action", 100)
        owner = rec.json()["initializeUploadRequest"]["owner"]
        image_id = self._id()
        urn = f"urn:li:image:D4E{image_id}"
        self.images[urn] = {"owner": owner, "uploaded": False, "bytes": b"", "id": image_id}
        value = {
            "uploadUrlExpiresAt": _ms(self.now() + timedelta(hours=1)),
            "uploadUrl": f"{self.base_url}/upload/images/{image_id}",
            "image": urn,
        }
        return self._json({"value": value})

    async def _image_put(self, r: Request, rec: Recorded, _m: str | None, _who: Any) -> Response:
        for image in self.images.values():
            if image["id"] == r.path_params["id"]:
                image |= {"uploaded": True, "bytes": rec.body}
                return Response(status_code=201, headers=self._headers())
        return self.error(404, "no such upload", 100)

    async def _video_action(self, _r: Request, rec: Recorded, _m: str | None, who: Any) -> Response:
        body = rec.json()
        if rec.param("action") == "initializeUpload":
            req = body["initializeUploadRequest"]
            video_id = self._id()
            urn = f"urn:li:video:C5F{video_id}"
            size = int(req["fileSizeBytes"])
            parts = [
                {
                    "uploadUrl": f"{self.base_url}/upload/videos/{video_id}/{n}",
                    "firstByte": first,
                    "lastByte": min(first + self.part_size, size) - 1,
                }
                for n, first in enumerate(range(0, size, self.part_size))
            ]
            token = f"ut-{video_id}"
            self.videos[urn] = {
                "id": video_id, "owner": req["owner"], "size": size, "parts": {},
                "etags": [], "token": token, "status": "WAITING_UPLOAD", "polls": 0,
                "instructions": parts,
            }  # fmt: skip
            value = {"video": urn, "uploadToken": token, "uploadInstructions": parts}
            return self._json({"value": value | {"uploadUrlsExpireAt": _ms(self.now())}})
        if rec.param("action") == "finalizeUpload":
            req = body["finalizeUploadRequest"]
            video = self.videos.get(req["video"])
            if video is None or req.get("uploadToken") != video["token"]:
                return self.error(400, "unknown video or token", 100)
            if req.get("uploadedPartIds") != video["etags"]:
                return self.error(400, "uploadedPartIds do not match the parts", 100)
            whole = b"".join(video["parts"][n] for n in sorted(video["parts"]))
            if len(whole) != video["size"]:
                return self.error(400, "incomplete upload", 100)
            video["status"] = "PROCESSING"
            return self._json({})
        return self.error(400, "unknown action", 100)

    async def _video_part(self, r: Request, rec: Recorded, _mode: str | None) -> Response:
        video = next((v for v in self.videos.values() if v["id"] == r.path_params["id"]), None)
        if video is None:
            return self.error(404, "no such upload", 100)
        part = int(r.path_params["part"])
        video["parts"][part] = rec.body
        etag = f"etag-{video['id']}-{part}"
        video["etags"] = [f"etag-{video['id']}-{n}" for n in sorted(video["parts"])]
        return Response(status_code=200, headers={"ETag": f'"{etag}"'})

    async def _video_status(
        self, r: Request, _rec: Recorded, mode: str | None, _w: Any
    ) -> Response:
        video = self.videos.get(r.path_params["urn"])
        if video is None:
            return self.error(404, "Not Found", 100)
        if mode == "processing_failed":
            video["status"] = "PROCESSING_FAILED"
        elif video["status"] == "PROCESSING":
            video["polls"] += 1
            if video["polls"] > self.processing_polls:
                video["status"] = "AVAILABLE"
        answer = {"id": r.path_params["urn"], "status": video["status"], "owner": video["owner"]}
        if video["status"] == "PROCESSING_FAILED":
            answer["processingFailureReason"] = "Video is corrupted"
        return self._json(answer)

    # --- comments -----------------------------------------------------------------------------

    async def _add_comment(self, r: Request, rec: Recorded, mode: str | None, who: Any) -> Response:
        target, body = r.path_params["urn"], rec.json()
        parent = next((c for c in self.comments if c["commentUrn"] == target), None)
        root = parent["object"] if parent else target
        if body.get("actor") != who["urn"] or body.get("object") != root:
            return self.error(422, "actor or object does not match", 100, "INVALID")
        if parent is not None and body.get("parentComment") != target:
            return self.error(422, "parentComment must name the comment", 100, "INVALID")
        if parent is None and not any(p["id"] == target for p in self.posts):
            return self.error(404, "Not Found", 100)
        comment = self._comment(who["urn"], root, body["message"]["text"], parent)
        if mode == "ambiguous_after":
            return self._json(self.error_body("server_error"), 500)
        return self._json(comment, 201, **{"x-restli-id": comment["id"]})

    async def _list_comments(self, r: Request, rec: Recorded, _m: str | None, _w: Any) -> Response:
        target = r.path_params["urn"]
        if any(c["commentUrn"] == target for c in self.comments):
            found = [c for c in self.comments if c.get("parentComment") == target]
        else:
            found = [c for c in self.comments if c["object"] == target and "parentComment" not in c]
        elements = []
        for comment in found:
            replies = sum(
                1 for c in self.comments if c.get("parentComment") == comment["commentUrn"]
            )
            summary = {"aggregatedTotalComments": replies, "totalFirstLevelComments": replies}
            elements.append(comment | {"commentsSummary": summary})
        start, count = int(rec.param("start") or 0), int(rec.param("count") or 10)
        page = elements[start : start + count]
        return self._json({"elements": page, "paging": {"start": start, "count": count}})
