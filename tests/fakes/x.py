"""A fake X (API v2 and its OAuth 2.0 PKCE server; platforms.md §5). Every request it receives
is checked against X's OpenAPI document (:mod:`tests.fakes.x_openapi`): a non-conforming one is
recorded in :attr:`FakeX.violations` and answered 400 ``invalid-request``, as X would.

Route names for :meth:`FakePlatform.fail`: ``authorize``, ``token``, ``me``, ``media_upload``,
``media_init``, ``media_append``, ``media_finalize``, ``media_status``, ``tweets``,
``tweet_lookup``, ``user_tweets``, ``search``. Platform modes:

    expired_token    401 problem (any API route)
    duplicate        ``tweets``: 403 "You are not allowed to create a Tweet with duplicate content."
    ambiguous_after  ``tweets``: the post is created, then 503
    hang_after       ``tweets``: the post is created, then no answer
    invalid_grant    ``token``: 400 ``invalid_request`` "Value passed for the token was invalid."
    processing_failed  ``media_status``: the video's processing fails (``InvalidMedia``)

Videos (platforms.md §5 (c)): initialize, append (multipart, segment_index), finalize (the parts
must add up to ``total_bytes``; the answer is ``processing_info`` pending, ``check_after_secs``
1), then STATUS answers ``in_progress`` (``check_after_secs`` 2) until the ``video_polls``-th
poll, which answers ``succeeded``. Only then may a post name the media id.

Rate-limit headers ``x-rate-limit-limit/remaining/reset`` (epoch seconds) are on every answer.
Created posts' ``text`` is rendered as X does: URLs become t.co links, each media appends one, and
``&<>`` are escaped.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from tests.fakes import x_openapi
from tests.fakes._server import FakePlatform, Recorded

_URL = re.compile(r"https?://[^\s<]+")
CLIENT_ID = "client-abc"
CLIENT_SECRET = "secret-xyz"
TOKEN_LIFETIME = 7200


def _iso(when: datetime) -> str:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def challenge_of(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class FakeX(FakePlatform):
    name = "x"

    def __init__(self, now: Callable[[], datetime], *, video_polls: int = 2) -> None:
        super().__init__(now)
        self.video_polls = video_polls
        self.videos: dict[str, dict[str, Any]] = {}  # media id -> upload session
        self.violations: list[str] = []
        self.users: dict[str, dict[str, Any]] = {}
        self.tokens: dict[str, tuple[str, datetime]] = {}  # access token -> (user id, expiry)
        self.refresh_tokens: dict[str, str] = {}  # refresh token -> user id
        self.codes: dict[str, dict[str, str]] = {}
        self.tweets: list[dict[str, Any]] = []
        self.media: dict[str, dict[str, Any]] = {}
        self._next = 1_000_000
        self.alice = self.add_user("alice", "Alice")
        self.bob = self.add_user("bob", "Bob")
        self.route("GET", "/i/oauth2/authorize", "authorize", self._authorize)
        self.route("POST", "/2/oauth2/token", "token", self._token)
        for method, path, name, handler in (
            ("GET", "/2/users/me", "me", self._me),
            ("POST", "/2/media/upload", "media_upload", self._upload),
            ("POST", "/2/media/upload/initialize", "media_init", self._video_init),
            ("POST", "/2/media/upload/{id}/append", "media_append", self._video_append),
            ("POST", "/2/media/upload/{id}/finalize", "media_finalize", self._video_finalize),
            ("GET", "/2/media/upload", "media_status", self._video_status),
            ("POST", "/2/tweets", "tweets", self._create_tweet),
            ("GET", "/2/tweets/search/recent", "search", self._search),
            ("GET", "/2/tweets/{id}", "tweet_lookup", self._lookup),
            ("GET", "/2/users/{id}/tweets", "user_tweets", self._user_tweets),
        ):
            self.route(method, path, name, self._checked(self._authed(handler)))

    # --- state helpers ------------------------------------------------------------------------

    def _id(self) -> str:
        self._next += 1
        return str(self._next)

    def add_user(self, username: str, name: str) -> dict[str, Any]:
        user = {"id": self._id(), "username": username, "name": name}
        self.users[user["id"]] = user
        return user

    def issue(self, user: dict[str, Any]) -> dict[str, Any]:
        """A token answer for ``user`` (what the token endpoint returns)."""
        access, refresh = f"at-{secrets.token_hex(8)}", f"rt-{secrets.token_hex(8)}"
        self.tokens[access] = (user["id"], self.now() + timedelta(seconds=TOKEN_LIFETIME))
        self.refresh_tokens[refresh] = user["id"]
        return {
            "token_type": "bearer",
            "expires_in": TOKEN_LIFETIME,
            "access_token": access,
            "refresh_token": refresh,
            "scope": "tweet.read tweet.write users.read media.write offline.access",
        }

    def add_reply(self, to_id: str, text: str, user: dict[str, Any]) -> dict[str, Any]:
        """Someone replies to ``to_id``."""
        return self._create(user, text, [], to_id)

    def root_texts(self) -> list[str]:
        return [t["_text"] for t in self.tweets if t["_reply_to"] is None]

    def _create(
        self, user: dict[str, Any], text: str, media: list[str], reply_to: str | None
    ) -> dict[str, Any]:
        tweet_id = self._id()
        by_id = {t["id"]: t for t in self.tweets}
        conversation = by_id[reply_to]["conversation_id"] if reply_to in by_id else tweet_id
        rendered = html.escape(_URL.sub(lambda _m: f"https://t.co/{secrets.token_hex(4)}", text))
        rendered += "".join(f" https://t.co/{secrets.token_hex(4)}" for _ in media)
        tweet: dict[str, Any] = {
            "id": tweet_id,
            "text": rendered.strip(),
            "author_id": user["id"],
            "created_at": _iso(self.now()),
            "conversation_id": conversation,
            "edit_history_tweet_ids": [tweet_id],
            "_text": text,
            "_reply_to": reply_to,
        }
        if media:
            tweet["attachments"] = {"media_keys": [self.media[m]["media_key"] for m in media]}
        if reply_to is not None:
            tweet["referenced_tweets"] = [{"type": "replied_to", "id": reply_to}]
        self.tweets.append(tweet)
        return tweet

    @staticmethod
    def _public(tweet: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in tweet.items() if not k.startswith("_")}

    # --- responses ----------------------------------------------------------------------------

    def _headers(self, remaining: int = 99, reset_in: float = 900) -> dict[str, str]:
        return {
            "x-rate-limit-limit": "100",
            "x-rate-limit-remaining": str(remaining),
            "x-rate-limit-reset": str(int(self.now().timestamp() + reset_in)),
        }

    def _json(self, data: Any, status: int = 200) -> Response:
        return JSONResponse(data, status, headers=self._headers())

    def problem(self, status: int, title: str, detail: str, kind: str = "about:blank") -> Response:
        body = {"title": title, "detail": detail, "type": kind, "status": status}
        return self._json(body, status)

    def rate_limited(self) -> Response:
        body = {
            "title": "Too Many Requests",
            "detail": "Too Many Requests",
            "type": "https://api.twitter.com/2/problems/rate-limit-exceeded",
            "status": 429,
        }
        return JSONResponse(body, 429, headers=self._headers(0, reset_in=120))

    def error_body(self, what: str) -> Any:
        return {"title": "Service Unavailable", "detail": what, "type": "about:blank"}

    def _checked(self, handler: Any) -> Any:
        async def run(request: Request, rec: Recorded, mode: str | None) -> Response:
            found = x_openapi.problems(
                rec.method, rec.path, rec.query, rec.headers.get("content-type", ""), rec.body
            )
            if found:
                self.violations += found
                kind = "https://api.twitter.com/2/problems/invalid-request"
                return self.problem(400, "Invalid Request", "; ".join(found), kind)
            return await handler(request, rec, mode)  # type: ignore[no-any-return]

        return run

    def _authed(self, handler: Any) -> Any:
        async def run(request: Request, rec: Recorded, mode: str | None) -> Response:
            token = rec.headers.get("authorization", "").removeprefix("Bearer ")
            owner = self.tokens.get(token)
            if owner is None or owner[1] <= self.now() or mode == "expired_token":
                return self.problem(401, "Unauthorized", "Unauthorized")
            return await handler(request, rec, mode, self.users[owner[0]])  # type: ignore[no-any-return]

        return run

    # --- OAuth --------------------------------------------------------------------------------

    async def _authorize(self, _r: Request, rec: Recorded, _mode: str | None) -> Response:
        """The user signs in as alice and consents at once: redirect with a code."""
        wanted = ("response_type", "client_id", "redirect_uri", "scope", "state", "code_challenge")
        missing = [name for name in wanted if not rec.param(name)]
        if missing or rec.param("response_type") != "code" or rec.param("client_id") != CLIENT_ID:
            return self._json({"error": "invalid_request", "missing": missing}, 400)
        if rec.param("code_challenge_method") != "S256":
            return self._json({"error": "invalid_request", "error_description": "S256"}, 400)
        code = f"code-{secrets.token_hex(6)}"
        self.codes[code] = {
            "challenge": str(rec.param("code_challenge")),
            "redirect_uri": str(rec.param("redirect_uri")),
            "user": self.alice["id"],
        }
        query = urlencode({"state": rec.param("state"), "code": code})
        return RedirectResponse(f"{rec.param('redirect_uri')}?{query}", 302)

    def _client_ok(self, rec: Recorded, form: dict[str, str]) -> bool:
        basic = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        return rec.headers.get("authorization") == basic and form.get("client_id") == CLIENT_ID

    async def _token(self, _r: Request, rec: Recorded, mode: str | None) -> Response:
        problems = x_openapi.problems(
            rec.method, rec.path, rec.query, rec.headers.get("content-type", ""), rec.body
        )
        if problems:
            self.violations += problems
            return self._json({"error": "invalid_request"}, 400)
        form = {k: v[0] for k, v in parse_qs(rec.body.decode()).items()}
        invalid = {
            "error": "invalid_request",
            "error_description": "Value passed for the token was invalid.",
        }
        if not self._client_ok(rec, form):
            return self._json({"error": "unauthorized_client"}, 401)
        if mode == "invalid_grant":
            return self._json(invalid, 400)
        if form.get("grant_type") == "authorization_code":
            grant = self.codes.pop(form.get("code", ""), None)
            if (
                grant is None
                or challenge_of(form.get("code_verifier", "")) != grant["challenge"]
                or form.get("redirect_uri") != grant["redirect_uri"]
            ):
                return self._json(invalid, 400)
            return self._json(self.issue(self.users[grant["user"]]))
        if form.get("grant_type") == "refresh_token":
            user_id = self.refresh_tokens.pop(form.get("refresh_token", ""), None)
            if user_id is None:
                return self._json(invalid, 400)
            return self._json(self.issue(self.users[user_id]))
        return self._json({"error": "unsupported_grant_type"}, 400)

    # --- API ----------------------------------------------------------------------------------

    async def _me(self, _r: Request, _rec: Recorded, _m: str | None, user: Any) -> Response:
        return self._json({"data": user})

    async def _upload(self, _r: Request, rec: Recorded, _m: str | None, _u: Any) -> Response:
        body = rec.json()
        media_id = self._id()
        data = base64.b64decode(body["media"])
        self.media[media_id] = {"media_key": f"3_{media_id}", "size": len(data), "bytes": data}
        answer = {"id": media_id, "media_key": f"3_{media_id}", "size": len(data)}
        return self._json({"data": {**answer, "expires_after_secs": 86400}})

    # --- chunked video upload ------------------------------------------------------------------

    def _invalid(self, detail: str) -> Response:
        kind = "https://api.twitter.com/2/problems/invalid-request"
        return self.problem(400, "Invalid Request", detail, kind)

    def _session(self, media_id: str) -> dict[str, Any] | None:
        return self.videos.get(media_id)

    async def _video_init(self, _r: Request, rec: Recorded, _m: str | None, _u: Any) -> Response:
        body = rec.json()
        if body.get("media_category") != "tweet_video" or "total_bytes" not in body:
            return self._invalid("media_category tweet_video and total_bytes are required")
        media_id = self._id()
        self.videos[media_id] = {
            "total_bytes": body["total_bytes"],
            "media_type": body.get("media_type"),
            "segments": {},
            "state": None,
            "polls": 0,
        }
        answer = {"id": media_id, "media_key": f"7_{media_id}", "expires_after_secs": 86400}
        return self._json({"data": answer})

    async def _video_append(self, r: Request, rec: Recorded, _m: str | None, _u: Any) -> Response:
        session = self._session(r.path_params["id"])
        fields = x_openapi.multipart_fields(rec.headers.get("content-type", ""), rec.body)
        if session is None or session["state"] is not None:
            return self._invalid("no upload session open for this media id")
        assert fields is not None  # the OpenAPI check read it already
        session["segments"][int(fields["segment_index"])] = fields["media"]
        expires = int(self.now().timestamp()) + 86400
        return self._json({"data": {"expires_at": expires}})

    async def _video_finalize(
        self, r: Request, _rec: Recorded, _m: str | None, _u: Any
    ) -> Response:
        media_id = r.path_params["id"]
        session = self._session(media_id)
        if session is None or session["state"] is not None:
            return self._invalid("no upload session open for this media id")
        segments = session["segments"]
        data = b"".join(segments[i] for i in sorted(segments))
        if sorted(segments) != list(range(len(segments))) or len(data) != session["total_bytes"]:
            return self._invalid(f"{len(data)} bytes received, {session['total_bytes']} declared")
        session.update(state="pending", bytes=data)
        info = {"state": "pending", "check_after_secs": 1}
        answer = {"id": media_id, "media_key": f"7_{media_id}", "size": len(data)}
        return self._json(
            {"data": {**answer, "expires_after_secs": 86400, "processing_info": info}}
        )

    async def _video_status(
        self, _r: Request, rec: Recorded, mode: str | None, _u: Any
    ) -> Response:
        media_id = rec.param("media_id") or ""
        session = self._session(media_id)
        if session is None or session["state"] is None:
            kind = "https://api.twitter.com/2/problems/resource-not-found"
            return self.problem(404, "Not Found Error", "no such media", kind)
        session["polls"] += 1
        info: dict[str, Any]
        if mode == "processing_failed" or session["state"] == "failed":
            session["state"] = "failed"
            error = {"code": 1, "name": "InvalidMedia", "message": "Unsupported video encoding"}
            info = {"state": "failed", "progress_percent": 40, "error": error}
        elif session["polls"] >= self.video_polls:
            session["state"] = "succeeded"
            info = {"state": "succeeded", "progress_percent": 100}
            size = len(session["bytes"])
            self.media[media_id] = {"media_key": f"7_{media_id}", "size": size, "video": True}
            self.media[media_id]["bytes"] = session["bytes"]
        else:
            session["state"] = "in_progress"
            info = {"state": "in_progress", "check_after_secs": 2, "progress_percent": 50}
        answer = {"id": media_id, "media_key": f"7_{media_id}", "processing_info": info}
        return self._json({"data": answer})

    async def _create_tweet(
        self, _r: Request, rec: Recorded, mode: str | None, user: Any
    ) -> Response:
        body = rec.json()
        if mode == "duplicate":
            detail = "You are not allowed to create a Tweet with duplicate content."
            return self.problem(403, "Forbidden", detail)
        media = (body.get("media") or {}).get("media_ids") or []
        if any(m not in self.media for m in media):
            kind = "https://api.twitter.com/2/problems/invalid-request"
            return self.problem(400, "Invalid Request", "media id not found", kind)
        reply_to = (body.get("reply") or {}).get("in_reply_to_tweet_id")
        tweet = self._create(user, body.get("text", ""), media, reply_to)
        if mode == "ambiguous_after":
            return self.problem(503, "Service Unavailable", "Service Unavailable")
        if mode == "hang_after":
            return await self._generic("hang")
        return self._json({"data": {"id": tweet["id"], "text": tweet["text"]}}, 201)

    async def _lookup(self, r: Request, _rec: Recorded, _m: str | None, _u: Any) -> Response:
        by_id = {t["id"]: t for t in self.tweets}
        tweet = by_id.get(r.path_params["id"])
        if tweet is None:
            kind = "https://api.twitter.com/2/problems/resource-not-found"
            return self.problem(404, "Not Found Error", "Could not find tweet", kind)
        return self._json({"data": self._public(tweet)})

    async def _user_tweets(self, r: Request, rec: Recorded, _m: str | None, _u: Any) -> Response:
        user_id = r.path_params["id"]
        limit = int(rec.param("max_results") or 10)
        token = rec.param("pagination_token")
        mine = [t for t in self.tweets if t["author_id"] == user_id and t["_reply_to"] is None]
        mine.sort(key=lambda t: int(t["id"]), reverse=True)
        if token is not None:
            mine = [t for t in mine if int(t["id"]) < int(token)]
        page = mine[:limit]
        meta: dict[str, Any] = {"result_count": len(page)}
        if len(mine) > limit:
            meta["next_token"] = page[-1]["id"]
        return self._json({"data": [self._public(t) for t in page], "meta": meta})

    async def _search(self, _r: Request, rec: Recorded, _m: str | None, _u: Any) -> Response:
        query = rec.param("query") or ""
        match = re.fullmatch(r"conversation_id:(\d+)", query)
        if match is None:
            return self._json({"meta": {"result_count": 0}})
        found = [
            t
            for t in self.tweets
            if t["conversation_id"] == match.group(1) and t["id"] != match.group(1)
        ]
        found.sort(key=lambda t: int(t["id"]), reverse=True)
        authors = {t["author_id"] for t in found}
        body: dict[str, Any] = {"meta": {"result_count": len(found)}}
        if found:
            body["data"] = [self._public(t) for t in found]
            body["includes"] = {"users": [self.users[a] for a in sorted(authors)]}
        return self._json(body)
