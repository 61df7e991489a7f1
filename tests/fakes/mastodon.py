"""A fake Mastodon instance: the endpoints the adapter uses, as documented (platforms.md §7).

Route names for :meth:`FakePlatform.fail`: ``verify``, ``instance``, ``media``, ``media_status``,
``statuses``, ``account_statuses``, ``context``. Platform modes:

    expired_token    401 {"error": "The access token is invalid"} (any route)
    duplicate        422 {"error": "Validation failed: ..."} on ``statuses`` (Mastodon has no
                     duplicate-content rule; this is its RecordNotUnique/RecordInvalid answer)
    ambiguous_after  ``statuses``: the status is created, then 500
    hang_after       ``statuses``: the status is created, then no answer
    media_not_ready  ``media``: 202, then ``processing_polls`` answers of 206 before 200

``Idempotency-Key`` is honoured per account: a repeated key returns the first status.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tests.fakes._server import FakePlatform, Recorded

_URL = re.compile(r"https?://[^\s<]+")


def _iso(when: datetime) -> str:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def render(text: str) -> str:
    """Plain text as Mastodon renders it: paragraphs, <br />, links with invisible spans."""

    def link(match: re.Match[str]) -> str:
        url = match.group(0)
        scheme, _, rest = url.partition("://")
        return (
            f'<a href="{url}" rel="nofollow noopener" target="_blank">'
            f'<span class="invisible">{scheme}://</span><span class="">{rest}</span></a>'
        )

    paragraphs = []
    for para in text.split("\n\n"):
        escaped = html.escape(para, quote=False)
        paragraphs.append("<p>" + _URL.sub(link, escaped).replace("\n", "<br />") + "</p>")
    return "".join(paragraphs)


def _multipart(recorded: Recorded) -> dict[str, tuple[bytes, str | None]]:
    """The parts of a multipart/form-data body: name -> (bytes, content type)."""
    head = f"Content-Type: {recorded.headers['content-type']}\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + recorded.body)
    parts: dict[str, tuple[bytes, str | None]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        parts[str(name)] = (payload if isinstance(payload, bytes) else b"", part.get_content_type())
    return parts


class FakeMastodon(FakePlatform):
    name = "mastodon"

    def __init__(
        self,
        now: Callable[[], datetime],
        *,
        token: str = "token-alice",
        max_characters: int = 500,
        processing_polls: int = 2,
    ) -> None:
        super().__init__(now)
        self.accounts: dict[str, dict[str, Any]] = {}
        self.statuses: list[dict[str, Any]] = []
        self.media: dict[str, dict[str, Any]] = {}
        self.keys: dict[tuple[str, str], dict[str, Any]] = {}
        self.max_characters = max_characters
        self.processing_polls = processing_polls
        self._next = 100
        self.alice = self.add_account(token, "alice", "Alice")
        for method, path, name, handler in (
            ("GET", "/api/v1/accounts/verify_credentials", "verify", self._verify),
            ("GET", "/api/v2/instance", "instance", self._instance),
            ("POST", "/api/v2/media", "media", self._upload),
            ("GET", "/api/v1/media/{id}", "media_status", self._media_status),
            ("POST", "/api/v1/statuses", "statuses", self._post_status),
            ("GET", "/api/v1/accounts/{id}/statuses", "account_statuses", self._account_statuses),
            ("GET", "/api/v1/statuses/{id}/context", "context", self._context),
        ):
            self.route(method, path, name, self._authed(handler))

    # --- state helpers ------------------------------------------------------------------------

    def _id(self) -> str:
        self._next += 1
        return str(self._next)

    def add_account(self, token: str, username: str, display: str) -> dict[str, Any]:
        account = {
            "id": self._id(),
            "username": username,
            "acct": username,
            "display_name": display,
            "url": f"{self.base_url}/@{username}",
        }
        self.accounts[token] = account
        return account

    def add_reply(self, to_id: str, text: str, account: dict[str, Any]) -> dict[str, Any]:
        """Someone comments: a status replying to ``to_id``."""
        return self._create(account, text, [], to_id)

    def by_text(self, text: str) -> list[dict[str, Any]]:
        return [s for s in self.statuses if s["_text"] == text]

    def _create(
        self, account: dict[str, Any], text: str, media: list[dict[str, Any]], reply: str | None
    ) -> dict[str, Any]:
        status_id = self._id()
        status = {
            "id": status_id,
            "created_at": _iso(self.now()),
            "in_reply_to_id": reply,
            "content": render(text),
            "url": f"{self.base_url}/@{account['username']}/{status_id}",
            "uri": f"{self.base_url}/users/{account['username']}/statuses/{status_id}",
            "account": account,
            "media_attachments": media,
            "_text": text,
        }
        self.statuses.append(status)
        return status

    @staticmethod
    def _public(status: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in status.items() if not k.startswith("_")}

    # --- responses ----------------------------------------------------------------------------

    def _headers(self, remaining: int = 299) -> dict[str, str]:
        reset = self.now() + timedelta(minutes=5)
        return {
            "X-RateLimit-Limit": "300",
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": _iso(reset),
        }

    def _json(self, data: Any, status: int = 200) -> Response:
        return JSONResponse(data, status, headers=self._headers())

    def rate_limited(self) -> Response:
        headers = self._headers(0)
        headers["X-RateLimit-Reset"] = _iso(self.now() + timedelta(seconds=120))
        return JSONResponse({"error": "Too many requests"}, 429, headers=headers)

    def _authed(self, handler: Any) -> Any:
        async def run(request: Request, rec: Recorded, mode: str | None) -> Response:
            token = rec.headers.get("authorization", "").removeprefix("Bearer ")
            account = self.accounts.get(token)
            if account is None or mode == "expired_token":
                return self._json({"error": "The access token is invalid"}, 401)
            return await handler(request, rec, mode, account)  # type: ignore[no-any-return]

        return run

    # --- endpoints ----------------------------------------------------------------------------

    async def _verify(self, _r: Request, _rec: Recorded, _m: str | None, acct: Any) -> Response:
        return self._json(acct)

    async def _instance(self, _r: Request, _rec: Recorded, _m: str | None, _a: Any) -> Response:
        configuration = {
            "statuses": {
                "max_characters": self.max_characters,
                "max_media_attachments": 4,
                "characters_reserved_per_url": 23,
            },
            "media_attachments": {
                "supported_mime_types": ["image/jpeg", "image/png", "video/mp4"],
                "image_size_limit": 16_777_216,
                "video_size_limit": 103_809_024,
            },
        }
        return self._json({"domain": "fake.test", "configuration": configuration})

    async def _upload(self, _r: Request, rec: Recorded, mode: str | None, _a: Any) -> Response:
        parts = _multipart(rec)
        if "file" not in parts:
            return self._json({"error": "Validation failed: File can't be blank"}, 422)
        data, mime = parts["file"]
        media_id = self._id()
        slow = mode == "media_not_ready" or (mime or "").startswith("video/")
        media = {
            "id": media_id,
            "type": "video" if (mime or "").startswith("video/") else "image",
            "url": None if slow else f"{self.base_url}/media/{media_id}",
            "_polls_left": self.processing_polls if slow else 0,
            "_size": len(data),
            "_mime": mime,
        }
        self.media[media_id] = media
        return self._json(self._public(media), 202 if slow else 200)

    async def _media_status(self, r: Request, _rec: Recorded, _m: str | None, _a: Any) -> Response:
        media = self.media.get(r.path_params["id"])
        if media is None:
            return self._json({"error": "Record not found"}, 404)
        if media["_polls_left"] > 0:
            media["_polls_left"] -= 1
            return Response(status_code=206, headers=self._headers())
        media["url"] = f"{self.base_url}/media/{media['id']}"
        return self._json(self._public(media))

    async def _post_status(
        self, _r: Request, rec: Recorded, mode: str | None, acct: dict[str, Any]
    ) -> Response:
        body = rec.json()
        text, media_ids = body.get("status") or "", body.get("media_ids") or []
        key = rec.headers.get("idempotency-key")
        if key and (acct["id"], key) in self.keys:
            return self._json(self._public(self.keys[(acct["id"], key)]))
        if mode == "duplicate":
            return self._json({"error": "Validation failed: Duplicate record"}, 422)
        if not text.strip() and not media_ids:
            return self._json({"error": "Validation failed: Text can't be blank"}, 422)
        if len(_URL.sub("x" * 23, text)) > self.max_characters:
            return self._json({"error": "Validation failed: Text character limit exceeded"}, 422)
        attachments = []
        for media_id in media_ids:
            media = self.media.get(str(media_id))
            if media is None or media["url"] is None:
                return self._json(
                    {"error": "Cannot attach files that have not finished processing."}, 422
                )
            attachments.append(self._public(media))
        status = self._create(acct, text, attachments, body.get("in_reply_to_id"))
        if key:
            self.keys[(acct["id"], key)] = status
        if mode == "ambiguous_after":
            return self._json({"error": "Internal server error"}, 500)
        if mode == "hang_after":
            return await self._generic("hang")
        return self._json(self._public(status))

    async def _account_statuses(
        self, r: Request, rec: Recorded, _m: str | None, _a: Any
    ) -> Response:
        account_id = r.path_params["id"]
        limit = int(rec.param("limit") or 20)
        max_id = rec.param("max_id")
        mine = [s for s in self.statuses if s["account"]["id"] == account_id]
        mine.sort(key=lambda s: int(s["id"]), reverse=True)
        if max_id is not None:
            mine = [s for s in mine if int(s["id"]) < int(max_id)]
        return self._json([self._public(s) for s in mine[:limit]])

    async def _context(self, r: Request, _rec: Recorded, _m: str | None, _a: Any) -> Response:
        by_id = {s["id"]: s for s in self.statuses}
        target = by_id.get(r.path_params["id"])
        if target is None:
            return self._json({"error": "Record not found"}, 404)
        ancestors = []
        parent = target["in_reply_to_id"]
        while parent in by_id:
            ancestors.insert(0, self._public(by_id[parent]))
            parent = by_id[parent]["in_reply_to_id"]
        descendants, frontier = [], [target["id"]]
        while frontier:
            children = [s for s in self.statuses if s["in_reply_to_id"] in frontier]
            descendants += [self._public(s) for s in children]
            frontier = [s["id"] for s in children]
        return self._json({"ancestors": ancestors, "descendants": descendants})
