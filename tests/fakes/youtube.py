"""A fake YouTube Data API v3 and Google OAuth server (platforms.md §6).

Resumable uploads as Google documents them: ``POST /upload/youtube/v3/videos?uploadType=resumable``
answers a session URI in ``Location`` (the same path with ``upload_id``); ``PUT`` on it takes
chunks with ``Content-Range: bytes a-b/total`` (``a`` must be where the session stands, every
chunk but the last a multiple of 256 KiB) and answers ``308`` with ``Range: bytes=0-N`` until the
last byte, then ``201`` with the video; ``Content-Range: bytes */total`` asks where it stands
(``308``, or ``200`` with the video once complete). Broken rules are recorded in
:attr:`FakeYouTube.violations` and answered 400.

Route names for :meth:`FakePlatform.fail`: ``authorize``, ``token``, ``channels``, ``start``,
``chunk``, ``playlist_items``, ``thread_insert``, ``threads``, ``comment_insert``, ``replies``.
Platform modes:

    expired_token    401 ``authError`` (any API route)
    quota            403 ``quotaExceeded`` (any API route)
    throttled        403 ``rateLimitExceeded``; ``rate_limit`` (generic) is 429 + Retry-After
    upload_limit     ``start``: 400 ``uploadLimitExceeded``
    invalid_title    ``start``: 400 ``invalidTitle``
    expired          ``chunk``: the session is gone (404)
    ambiguous_after  ``chunk``: the chunk is taken (the video created if it was the last), then 503
    hang_after       ``chunk``: the chunk is taken, then no answer
    invalid_grant    ``token``: 400 ``invalid_grant``
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from tests.fakes._server import FakePlatform, Recorded

CLIENT_ID = "yt-client.apps.googleusercontent.com"
CLIENT_SECRET = "yt-secret"
TOKEN_LIFETIME = 3599
CHUNK_UNIT = 256 * 1024
SCOPES = (
    "https://www.googleapis.com/auth/youtube.upload",
    "https://www.googleapis.com/auth/youtube.force-ssl",
)
_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
_QUERY = re.compile(r"bytes \*/(\d+)")


def _iso(when: datetime) -> str:
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


def challenge_of(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def error(status: int, reason: str, message: str, domain: str = "youtube.api") -> JSONResponse:
    """Google's error envelope."""
    body = {
        "error": {
            "code": status,
            "message": message,
            "errors": [{"message": message, "domain": domain, "reason": reason}],
        }
    }
    return JSONResponse(body, status)


@dataclass
class Session:
    id: str
    channel: str
    resource: dict[str, Any]
    total: int
    mime: str
    data: bytearray = field(default_factory=bytearray)
    video: dict[str, Any] | None = None


class FakeYouTube(FakePlatform):
    name = "youtube"

    def __init__(self, now: Callable[[], datetime]) -> None:
        super().__init__(now)
        self.violations: list[str] = []
        self.channels: dict[str, dict[str, Any]] = {}
        self.tokens: dict[str, tuple[str, datetime]] = {}  # access token -> (channel, expiry)
        self.refresh_tokens: dict[str, str] = {}  # refresh token -> channel
        self.codes: dict[str, dict[str, str]] = {}
        self.sessions: dict[str, Session] = {}
        self.videos: list[dict[str, Any]] = []
        self.comments: list[dict[str, Any]] = []  # top-level and replies, oldest first
        self.bytes_received = 0  # over every chunk of every session
        self._ids = itertools.count(1)
        self.alice = self.add_channel("alice", "Alice's channel")
        self.bob = self.add_channel("bob", "Bob")
        self.route("GET", "/o/oauth2/v2/auth", "authorize", self._authorize)
        self.route("POST", "/token", "token", self._token)
        for method, path, name, handler in (
            ("GET", "/youtube/v3/channels", "channels", self._channels),
            ("POST", "/upload/youtube/v3/videos", "start", self._start),
            ("PUT", "/upload/youtube/v3/videos", "chunk", self._chunk),
            ("GET", "/youtube/v3/playlistItems", "playlist_items", self._playlist_items),
            ("POST", "/youtube/v3/commentThreads", "thread_insert", self._thread_insert),
            ("GET", "/youtube/v3/commentThreads", "threads", self._threads),
            ("POST", "/youtube/v3/comments", "comment_insert", self._comment_insert),
            ("GET", "/youtube/v3/comments", "replies", self._replies),
        ):
            self.route(method, path, name, self._authed(handler))

    # --- state helpers ------------------------------------------------------------------------

    def _id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):09d}"

    def add_channel(self, handle: str, title: str) -> dict[str, Any]:
        channel_id = self._id("UC")
        channel = {"id": channel_id, "handle": handle, "title": title}
        self.channels[channel_id] = channel
        return channel

    def issue(self, channel: dict[str, Any], *, refresh: bool = True) -> dict[str, Any]:
        """A token answer for ``channel``'s owner (what the token endpoint returns)."""
        access = f"ya29.{secrets.token_hex(8)}"
        self.tokens[access] = (channel["id"], self.now() + timedelta(seconds=TOKEN_LIFETIME))
        answer: dict[str, Any] = {
            "access_token": access,
            "expires_in": TOKEN_LIFETIME,
            "scope": " ".join(SCOPES),
            "token_type": "Bearer",
        }
        if refresh:
            token = f"1//{secrets.token_hex(8)}"
            self.refresh_tokens[token] = channel["id"]
            answer["refresh_token"] = token
        return answer

    def add_comment(self, video_id: str, text: str, author: dict[str, Any]) -> dict[str, Any]:
        """``author`` comments on ``video_id`` (a top-level comment; its id is the thread's)."""
        return self._new_comment(author, video_id, text, None)

    def descriptions(self) -> list[str]:
        return [v["snippet"]["description"] for v in self.videos]

    def _new_comment(
        self, author: dict[str, Any], video_id: str, text: str, parent: str | None
    ) -> dict[str, Any]:
        comment = {
            "kind": "youtube#comment",
            "id": self._id("Ugz") + (f".{parent}" if parent else ""),
            "snippet": {
                "channelId": self._owner(video_id),
                "videoId": video_id,
                "textDisplay": text,
                "textOriginal": text,
                "authorDisplayName": author["title"],
                "authorChannelUrl": f"http://www.youtube.com/@{author['handle']}",
                "authorChannelId": {"value": author["id"]},
                "publishedAt": _iso(self.now()),
                "updatedAt": _iso(self.now()),
                **({"parentId": parent} if parent else {}),
            },
        }
        self.comments.append(comment)
        return comment

    def _owner(self, video_id: str) -> str:
        return next((v["snippet"]["channelId"] for v in self.videos if v["id"] == video_id), "")

    # --- responses ----------------------------------------------------------------------------

    def rate_limited(self) -> Response:
        answer = error(429, "rateLimitExceeded", "Too many requests.", "youtube.quota")
        answer.headers["Retry-After"] = "30"
        return answer

    def error_body(self, what: str) -> Any:
        return {"error": {"code": 500, "message": what, "errors": [{"reason": "backendError"}]}}

    def _violation(self, text: str) -> Response:
        self.violations.append(text)
        return error(400, "badRequest", text, "global")

    def _authed(self, handler: Any) -> Any:
        async def run(request: Request, rec: Recorded, mode: str | None) -> Response:
            token = rec.headers.get("authorization", "").removeprefix("Bearer ")
            owner = self.tokens.get(token)
            if owner is None or owner[1] <= self.now() or mode == "expired_token":
                return error(401, "authError", "Invalid Credentials", "global")
            if mode == "quota":
                return error(403, "quotaExceeded", "The request cannot be completed because"
                             " you have exceeded your quota.", "youtube.quota")  # fmt: skip
            if mode == "throttled":
                return error(403, "rateLimitExceeded", "Rate limit exceeded.", "youtube.quota")
            return await handler(request, rec, mode, self.channels[owner[0]])  # type: ignore[no-any-return]

        return run

    # --- OAuth --------------------------------------------------------------------------------

    async def _authorize(self, _r: Request, rec: Recorded, _mode: str | None) -> Response:
        """The user signs in as alice and consents at once: redirect with a code."""
        wanted = ("response_type", "client_id", "redirect_uri", "scope", "state", "code_challenge")
        missing = [name for name in wanted if not rec.param(name)]
        if missing or rec.param("response_type") != "code" or rec.param("client_id") != CLIENT_ID:
            return JSONResponse({"error": "invalid_request", "missing": missing}, 400)
        if rec.param("code_challenge_method") != "S256":
            return JSONResponse({"error": "invalid_request", "error_description": "S256"}, 400)
        if not set(SCOPES) <= set(str(rec.param("scope")).split()):
            return JSONResponse({"error": "invalid_scope"}, 400)
        code = f"4/{secrets.token_hex(6)}"
        self.codes[code] = {
            "challenge": str(rec.param("code_challenge")),
            "redirect_uri": str(rec.param("redirect_uri")),
            "channel": self.alice["id"],
            # Google sends a refresh token only for offline access (and again only at consent)
            "offline": str(rec.param("access_type") == "offline"),
        }
        query = urlencode({"state": rec.param("state"), "code": code})
        return RedirectResponse(f"{rec.param('redirect_uri')}?{query}", 302)

    async def _token(self, _r: Request, rec: Recorded, mode: str | None) -> Response:
        form = {k: v[0] for k, v in parse_qs(rec.body.decode()).items()}
        if not rec.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            return self._violation("token: not a form")
        if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
            return JSONResponse(
                {"error": "invalid_client", "error_description": "Unauthorized"}, 401
            )
        invalid = {
            "error": "invalid_grant",
            "error_description": "Token has been expired or revoked.",
        }
        if mode == "invalid_grant":
            return JSONResponse(invalid, 400)
        if form.get("grant_type") == "authorization_code":
            grant = self.codes.pop(form.get("code", ""), None)
            if (
                grant is None
                or challenge_of(form.get("code_verifier", "")) != grant["challenge"]
                or form.get("redirect_uri") != grant["redirect_uri"]
            ):
                return JSONResponse({**invalid, "error_description": "Bad Request"}, 400)
            channel = self.channels[grant["channel"]]
            return JSONResponse(self.issue(channel, refresh=grant["offline"] == "True"))
        if form.get("grant_type") == "refresh_token":
            channel_id = self.refresh_tokens.get(form.get("refresh_token", ""))
            if channel_id is None:
                return JSONResponse(invalid, 400)
            return JSONResponse(self.issue(self.channels[channel_id], refresh=False))
        return JSONResponse({"error": "unsupported_grant_type"}, 400)

    # --- channels and uploads -----------------------------------------------------------------

    async def _channels(self, _r: Request, rec: Recorded, _m: str | None, me: Any) -> Response:
        if rec.param("mine") != "true":
            return self._violation("channels: mine=true expected")
        item: dict[str, Any] = {"kind": "youtube#channel", "id": me["id"]}
        parts = str(rec.param("part")).split(",")
        if "snippet" in parts:
            item["snippet"] = {"title": me["title"], "customUrl": f"@{me['handle']}"}
        if "contentDetails" in parts:
            item["contentDetails"] = {"relatedPlaylists": {"uploads": "UU" + me["id"][2:]}}
        return JSONResponse({"kind": "youtube#channelListResponse", "items": [item]})

    async def _start(self, _r: Request, rec: Recorded, mode: str | None, me: Any) -> Response:
        if rec.param("uploadType") != "resumable" or rec.param("part") != "snippet,status":
            return self._violation("start: uploadType=resumable&part=snippet,status expected")
        if not rec.headers.get("content-type", "").startswith("application/json"):
            return self._violation("start: JSON metadata expected")
        length = rec.headers.get("x-upload-content-length", "")
        mime = rec.headers.get("x-upload-content-type", "")
        if not length.isdigit() or not (mime.startswith("video/") or mime.endswith("octet-stream")):
            return self._violation("start: X-Upload-Content-Length/-Type")
        if mode == "upload_limit":
            return error(400, "uploadLimitExceeded", "The user has exceeded the number of"
                         " videos they may upload.")  # fmt: skip
        resource = rec.json()
        title = str((resource.get("snippet") or {}).get("title") or "")
        if mode == "invalid_title" or not title or len(title) > 100 or set("<>") & set(title):
            return error(400, "invalidTitle", "The request metadata specifies an invalid video"
                         " title.")  # fmt: skip
        session = Session(self._id("up"), me["id"], resource, int(length), mime)
        self.sessions[session.id] = session
        location = f"{self.base_url}/upload/youtube/v3/videos?" + urlencode(
            {"uploadType": "resumable", "upload_id": session.id}
        )
        return Response(status_code=200, headers={"Location": location})

    def _incomplete(self, session: Session) -> Response:
        headers = {"Range": f"bytes=0-{len(session.data) - 1}"} if session.data else {}
        return Response(status_code=308, headers=headers)

    def _status(self, session: Session, rec: Recorded) -> Response:
        """``Content-Range: bytes */total``, no body: 200 with the video once complete, else
        308."""
        if rec.body or rec.headers.get("content-length") != "0":
            return self._violation("status query: Content-Length: 0 and no body expected")
        if rec.headers.get("content-range") != f"bytes */{session.total}":
            return self._violation("status query: wrong total")
        if session.video is not None:
            return JSONResponse(session.video, 200)
        return self._incomplete(session)

    async def _chunk(self, _r: Request, rec: Recorded, mode: str | None, me: Any) -> Response:
        session = self.sessions.get(str(rec.param("upload_id")))
        if session is None or mode == "expired":
            self.sessions.pop(str(rec.param("upload_id")), None)
            return error(404, "notFound", "The upload session was not found.", "global")
        if session.channel != me["id"]:
            return error(403, "forbidden", "Not your upload.")
        content_range = rec.headers.get("content-range", "")
        if _QUERY.fullmatch(content_range) is not None:
            return self._status(session, rec)
        match = _RANGE.fullmatch(content_range)
        if match is None:
            return self._violation(f"chunk: Content-Range {content_range!r}")
        first, last, total = (int(g) for g in match.groups())
        size = last - first + 1
        if total != session.total or first != len(session.data) or size != len(rec.body):
            return self._violation(f"chunk: {content_range} at {len(session.data)}")
        if last + 1 < total and size % CHUNK_UNIT:
            return self._violation(f"chunk: {size} bytes is not a multiple of 256 KiB")
        session.data += rec.body
        self.bytes_received += size
        if len(session.data) == session.total:
            session.video = self._create_video(session)
        if mode == "ambiguous_after":
            return error(503, "backendError", "Backend Error", "global")
        if mode == "hang_after":
            return await self._generic("hang")
        if session.video is not None:
            return JSONResponse(session.video, 201)
        return self._incomplete(session)

    def _create_video(self, session: Session) -> dict[str, Any]:
        snippet = session.resource.get("snippet") or {}
        video = {
            "kind": "youtube#video",
            "id": self._id("v"),
            "snippet": {
                "publishedAt": _iso(self.now()),
                "channelId": session.channel,
                "title": snippet.get("title", ""),
                "description": snippet.get("description", ""),
            },
            "status": {"uploadStatus": "uploaded", **(session.resource.get("status") or {})},
            "_bytes": bytes(session.data),
        }
        self.videos.append(video)
        return {k: v for k, v in video.items() if not k.startswith("_")}

    async def _playlist_items(
        self, _r: Request, rec: Recorded, _m: str | None, me: Any
    ) -> Response:
        if rec.param("playlistId") != "UU" + me["id"][2:]:
            return error(404, "playlistNotFound", "Playlist not found.")
        limit = int(rec.param("maxResults") or 5)
        if not 0 <= limit <= 50:
            return self._violation("playlistItems: maxResults 0..50")
        mine = [v for v in reversed(self.videos) if v["snippet"]["channelId"] == me["id"]]
        start = int(rec.param("pageToken") or 0)
        page = mine[start : start + limit]
        items = [
            {
                "kind": "youtube#playlistItem",
                "id": f"PLI{v['id']}",
                "snippet": {
                    "publishedAt": v["snippet"]["publishedAt"],
                    "title": v["snippet"]["title"],
                    "description": v["snippet"]["description"],
                    "resourceId": {"kind": "youtube#video", "videoId": v["id"]},
                },
                "contentDetails": {
                    "videoId": v["id"],
                    "videoPublishedAt": v["snippet"]["publishedAt"],
                },
            }
            for v in page
        ]
        body: dict[str, Any] = {"items": items, "pageInfo": {"totalResults": len(mine)}}
        if start + limit < len(mine):
            body["nextPageToken"] = str(start + limit)
        return JSONResponse(body)

    # --- comments -----------------------------------------------------------------------------

    async def _thread_insert(self, _r: Request, rec: Recorded, _m: str | None, me: Any) -> Response:
        snippet = rec.json().get("snippet") or {}
        text = ((snippet.get("topLevelComment") or {}).get("snippet") or {}).get("textOriginal")
        if rec.param("part") != "snippet" or not snippet.get("videoId"):
            return error(400, "channelOrVideoIdMissing", "The comment thread needs a video.")
        if not text:
            return error(400, "commentTextRequired", "The comment must have text.")
        if snippet["videoId"] not in {v["id"] for v in self.videos}:
            return error(404, "videoNotFound", "The video was not found.")
        top = self._new_comment(me, snippet["videoId"], text, None)
        thread = {
            "kind": "youtube#commentThread",
            "id": top["id"],
            "snippet": {
                "channelId": snippet.get("channelId"),
                "videoId": snippet["videoId"],
                "topLevelComment": top,
                "totalReplyCount": 0,
            },
        }
        return JSONResponse(thread)

    async def _comment_insert(
        self, _r: Request, rec: Recorded, _m: str | None, me: Any
    ) -> Response:
        snippet = rec.json().get("snippet") or {}
        parent = next((c for c in self.comments if c["id"] == snippet.get("parentId")), None)
        if rec.param("part") != "snippet" or parent is None:
            return error(404, "parentCommentNotFound", "The parent comment was not found.")
        if not snippet.get("textOriginal"):
            return error(400, "commentTextRequired", "The comment must have text.")
        video = parent["snippet"]["videoId"]
        return JSONResponse(self._new_comment(me, video, snippet["textOriginal"], parent["id"]))

    def _replies_of(self, comment_id: str) -> list[dict[str, Any]]:
        return [c for c in self.comments if c["snippet"].get("parentId") == comment_id]

    async def _threads(self, _r: Request, rec: Recorded, _m: str | None, _me: Any) -> Response:
        video = rec.param("videoId")
        if not video or "snippet" not in str(rec.param("part")):
            return self._violation("commentThreads.list: videoId and part=snippet")
        tops = [
            c
            for c in reversed(self.comments)
            if c["snippet"]["videoId"] == video and "parentId" not in c["snippet"]
        ]
        items = []
        for top in tops:
            replies = self._replies_of(top["id"])
            thread: dict[str, Any] = {
                "kind": "youtube#commentThread",
                "id": top["id"],
                "snippet": {
                    "videoId": video,
                    "topLevelComment": top,
                    "totalReplyCount": len(replies),
                },
            }
            if replies and "replies" in str(rec.param("part")):
                thread["replies"] = {"comments": list(reversed(replies))[:5]}  # newest few
            items.append(thread)
        return JSONResponse({"kind": "youtube#commentThreadListResponse", "items": items})

    async def _replies(self, _r: Request, rec: Recorded, _m: str | None, _me: Any) -> Response:
        parent = str(rec.param("parentId") or "")
        return JSONResponse({"items": self._replies_of(parent)})
