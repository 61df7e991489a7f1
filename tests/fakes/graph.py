"""A fake Graph API serving one Facebook Page and one Instagram professional account, under the
version prefix postd pins (``adapters._graph.GRAPH_VERSION``); platforms.md §1-§2.

Route names for :meth:`FakePlatform.fail`: ``feed``, ``photos``, ``videos`` (POST, Page video),
``page_videos`` (GET .../videos), ``posts``, ``comment``
(POST .../comments), ``comments`` (GET), ``replies``, ``container`` (POST .../media), ``media``
(GET .../media), ``media_publish``, ``publishing_limit``, ``node`` (GET /{id}); Facebook Login:
``dialog`` (the login dialog, on www.facebook.com in production: the user consents at once and
is redirected with a code for the Pages in :attr:`FakeGraph.granted`), ``token``
(``oauth/access_token``: code exchange with PKCE, ``fb_exchange_token``) and ``accounts``
(``/me/accounts``, :attr:`FakeGraph.accounts_page_size` per page). Platform modes:

    rate_limit       (generic) 400 code 4 with ``X-App-Usage`` at 100 %
    user_rate_limit  400 code 17
    page_rate_limit  400 code 32 with ``X-Business-Use-Case-Usage`` (7 minutes to regain access)
    expired_token    400 OAuthException code 190 / 463
    duplicate        400 code 506 "Duplicate status message"
    policy_block     400 code 368
    invalid          400 code 100 "Invalid parameter"
    daily_cap        400 code 9 / 2207042 (IG publishing cap)
    spam             400 code 4 / 2207051 (IG "suspected spam")
    ambiguous_after  ``feed``, ``photos``, ``videos``, ``media_publish``, ``comment``: done,
                     then 500
    hang_after       ``videos``, ``media_publish``: done, then no answer (the client times out)
    not_ready        ``container``: IN_PROGRESS for ``processing_polls`` status reads
    expired          ``container``: the container reports EXPIRED
    error            ``container``: a reel's container ends in ERROR (after its polls)
    video_error      ``videos``: the Page video's processing ends in ``error``
    used_code        ``token``: 400 code 100 / 36009 "This authorization code has been used."

A REELS container (``media_type=REELS``, ``video_url``) is IN_PROGRESS for ``video_polls``
status reads, then FINISHED; so is a Page video ``processing`` (tests/fakes/graph_video.py).
Facebook Login lives in tests/fakes/graph_login.py.

A container is published at most once; another ``media_publish`` of it is refused (code 100) and
logged in :attr:`FakeGraph.republished`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tests.fakes._server import FakePlatform, Recorded
from tests.fakes.graph_login import CLIENT_ID as CLIENT_ID  # re-exported (connect tests)
from tests.fakes.graph_login import CLIENT_SECRET as CLIENT_SECRET
from tests.fakes.graph_login import PREFIX, FakeLogin, error
from tests.fakes.graph_video import REEL_ERROR_STATUS, FakeVideos

PAGE_ID = "1001"
IG_USER_ID = "17841400000000001"
PAGE_TOKEN = "page-token"
IG_TOKEN = "ig-token"
PAGE2_ID = "1002"

_ERRORS: dict[str, tuple[int, int | None, str]] = {
    "user_rate_limit": (17, None, "User request limit reached"),
    "page_rate_limit": (32, None, "Page request limit reached"),
    "expired_token": (190, 463, "Error validating access token: Session has expired"),
    "duplicate": (506, None, "Duplicate status message"),
    "policy_block": (368, None, "It looks like you were misusing this feature"),
    "invalid": (100, None, "Invalid parameter"),
    "daily_cap": (9, 2207042, "Application request limit reached"),
    "spam": (4, 2207051, "We restrict certain activity to protect our community"),
}


def graph_time(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S+0000")


class FakeGraph(FakePlatform):
    name = "graph"

    def __init__(
        self,
        now: Callable[[], datetime],
        *,
        processing_polls: int = 2,
        published_status: bool = True,
        quota_total: int = 50,
        video_polls: int = 2,
    ) -> None:
        super().__init__(now)
        self.processing_polls = processing_polls
        self.video_polls = video_polls
        self.videos = FakeVideos(self)
        self.published_status = published_status  # a published container says PUBLISHED
        self.quota_total = quota_total
        self.tokens = {PAGE_TOKEN: PAGE_ID, IG_TOKEN: IG_USER_ID}
        self.nodes: dict[str, dict[str, Any]] = {}  # id -> object with "_kind"
        self.publishes: Counter[str] = Counter()  # container id -> media_publish that published
        self.republished: list[str] = []
        self._next = 5000
        # Facebook Login: the user's Pages (id -> name and linked Instagram account), which of
        # them the next consent grants, codes and User tokens issued.
        self.pages: dict[str, dict[str, Any]] = {
            PAGE_ID: {"name": "Acme", "ig": {"id": IG_USER_ID, "username": "acme"}},
            PAGE2_ID: {"name": "Acme Blog", "ig": None},
        }
        self.granted: list[str] = [PAGE_ID, PAGE2_ID]
        self.deny = False
        self.accounts_page_size = 25
        self.codes: dict[str, dict[str, Any]] = {}
        self.user_tokens: dict[str, dict[str, Any]] = {}  # token -> {"pages", "long_lived"}
        self.page_tokens: dict[str, str] = {}  # page id -> the Page token last handed out
        self.login = FakeLogin(self)
        self.route("GET", PREFIX + "/dialog/oauth", "dialog", self.login.dialog)
        for method in ("GET", "POST"):
            self.route(method, PREFIX + "/oauth/access_token", "token", self.login.token)
        self.route("GET", PREFIX + "/me/accounts", "accounts", self.login.accounts)
        for method, path, name, handler in (
            ("POST", "/{node}/feed", "feed", self._feed),
            ("POST", "/{node}/photos", "photos", self._photos),
            ("POST", "/{node}/videos", "videos", self.videos.create),
            ("GET", "/{node}/videos", "page_videos", self.videos.listing),
            ("GET", "/{node}/posts", "posts", self._posts),
            ("POST", "/{node}/comments", "comment", self._comment),
            ("GET", "/{node}/comments", "comments", self._comments),
            ("POST", "/{node}/replies", "replies", self._reply),
            ("POST", "/{node}/media", "container", self._container),
            ("GET", "/{node}/media", "media", self._media),
            ("POST", "/{node}/media_publish", "media_publish", self._publish),
            ("GET", "/{node}/content_publishing_limit", "publishing_limit", self._limit),
            ("GET", "/{node}", "node", self._node),
        ):
            self.route(method, PREFIX + path, name, self._authed(handler))

    # --- state helpers ------------------------------------------------------------------------

    def _id(self) -> str:
        self._next += 1
        return str(self._next)

    def _add(self, kind: str, node_id: str, **fields: Any) -> dict[str, Any]:
        node = {"id": node_id, "_kind": kind, "_at": self.now(), **fields}
        self.nodes[node_id] = node
        return node

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [n for n in self.nodes.values() if n["_kind"] == kind]

    def root_texts(self, platform: str) -> list[str]:
        """Texts of the page's posts and videos (facebook) or the account's media captions
        (instagram)."""
        if platform == "facebook":
            return [
                n.get("message", n.get("description"))
                for n in self.nodes.values()
                if n["_kind"] in ("fb_post", "fb_video")
            ]
        return [n["caption"] for n in self.of_kind("ig_media")]

    def by_text(self, text: str) -> list[dict[str, Any]]:
        """Published posts and media carrying ``text``."""
        return [
            n
            for n in self.nodes.values()
            if n["_kind"] in ("fb_post", "fb_video", "ig_media")
            and text in (n.get("message"), n.get("caption"), n.get("description"))
        ]

    def add_comment(self, target: str, text: str, who: str = "bob") -> str:
        """Someone else comments on ``target`` (a post, media or comment); returns its id."""
        return str(self._make_comment(target, text, {"id": "42", "name": who.title()}, who)["id"])

    def expire(self, container_id: str) -> None:
        self.nodes[container_id].update(status_code="EXPIRED", _polls_left=0)

    def _make_comment(
        self, target: str, text: str, author: dict[str, str], username: str
    ) -> dict[str, Any]:
        parent = self.nodes[target]
        ig = parent["_kind"] in ("ig_media", "ig_comment")
        kind = "ig_comment" if ig else "fb_comment"
        is_reply = parent["_kind"] in ("fb_comment", "ig_comment")
        root = parent["_root"] if is_reply else target
        node_id = self._id() if ig else f"{root.split('_')[-1]}_{self._id()}"
        return self._add(
            kind,
            node_id,
            message=text,
            _root=root,
            _parent=target if is_reply else None,
            _from=author,
            _username=username,
        )

    # --- responses ----------------------------------------------------------------------------

    def _json(self, data: Any, status: int = 200, **headers: str) -> Response:
        usage = {"call_count": 1, "total_cputime": 1, "total_time": 1}
        return JSONResponse(data, status, headers={"X-App-Usage": json.dumps(usage), **headers})

    def rate_limited(self) -> Response:
        usage = json.dumps({"call_count": 100, "total_cputime": 20, "total_time": 30})
        body = error(4, "Application request limit reached", is_transient=True)
        return JSONResponse(body, 400, headers={"X-App-Usage": usage})

    def error_body(self, what: str) -> Any:
        return error(2, f"Service temporarily unavailable ({what})", is_transient=True)

    def _mode(self, mode: str | None) -> Response | None:
        if mode not in _ERRORS:
            return None
        code, subcode, message = _ERRORS[mode]
        headers = {}
        if mode == "page_rate_limit":
            usage = {
                PAGE_ID: [
                    {
                        "type": "pages",
                        "call_count": 100,
                        "total_cputime": 5,
                        "total_time": 5,
                        "estimated_time_to_regain_access": 7,
                    }
                ]
            }
            headers["X-Business-Use-Case-Usage"] = json.dumps(usage)
        return self._json(error(code, message, subcode), 400, **headers)

    def _authed(self, handler: Any) -> Any:
        async def run(request: Request, rec: Recorded, mode: str | None) -> Response:
            params = {k: v[0] for k, v in rec.query.items()}
            if rec.method == "POST":
                params.update({k: v[0] for k, v in parse_qs(rec.body.decode()).items()})
            if params.get("access_token") not in self.tokens:
                return self._json(error(190, "Invalid OAuth access token."), 400)
            failed = self._mode(mode)
            if failed is not None:
                return failed
            node = request.path_params["node"]
            return await handler(node, params, mode)  # type: ignore[no-any-return]

        return run

    def _ambiguous(self) -> Response:
        return self._json(error(1, "An unknown error occurred", is_transient=True), 500)

    def _not_found(self, node: str) -> Response:
        return self._json(error(100, f"Object with ID '{node}' does not exist", 33), 400)

    # --- Facebook -----------------------------------------------------------------------------

    def _fb_post(self, message: str, photo: str | None) -> dict[str, Any]:
        post_id = f"{PAGE_ID}_{self._id()}"
        link = f"https://www.facebook.com/{post_id}"
        return self._add("fb_post", post_id, message=message, permalink_url=link, _photo=photo)

    async def _feed(self, node: str, params: dict[str, str], mode: str | None) -> Response:
        if node != PAGE_ID:
            return self._not_found(node)
        if not params.get("message") and not params.get("link"):
            return self._json(error(100, "Invalid parameter"), 400)
        post = self._fb_post(params.get("message", ""), None)
        return self._ambiguous() if mode == "ambiguous_after" else self._json({"id": post["id"]})

    async def _photos(self, node: str, params: dict[str, str], mode: str | None) -> Response:
        if node != PAGE_ID or not params.get("url"):
            return self._json(error(100, "Invalid parameter"), 400)
        post = self._fb_post(params.get("caption", ""), params["url"])
        if mode == "ambiguous_after":
            return self._ambiguous()
        return self._json({"id": self._id(), "post_id": post["id"]})

    def _page_of(self, items: list[dict[str, Any]], params: dict[str, str]) -> dict[str, Any]:
        """Newest first, ``limit`` per page, cursor = index."""
        items = sorted(items, key=lambda n: (n["_at"], n["id"]), reverse=True)
        start, limit = int(params.get("after", 0)), int(params.get("limit", 25))
        chunk = items[start : start + limit]
        page: dict[str, Any] = {"data": [self._public(n) for n in chunk]}
        if start + limit < len(items):
            page["paging"] = {"cursors": {"after": str(start + limit)}, "next": "https://next"}
        return page

    def _public(self, node: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in node.items() if not k.startswith("_")}
        if node["_kind"] in ("fb_post", "fb_comment", "fb_video"):
            out["created_time"] = graph_time(node["_at"])
        if node["_kind"] == "fb_comment":
            out["from"] = node["_from"]
            if node["_parent"]:
                out["parent"] = {"id": node["_parent"]}
        if node["_kind"] in ("ig_media", "ig_comment"):
            out["timestamp"] = graph_time(node["_at"])
        if node["_kind"] == "ig_comment":
            out = {
                "id": out["id"],
                "text": out["message"],
                "username": node["_username"],
                "timestamp": out["timestamp"],
            }
        return out

    async def _posts(self, node: str, params: dict[str, str], _m: str | None) -> Response:
        if node != PAGE_ID:
            return self._not_found(node)
        return self._json(self._page_of(self.of_kind("fb_post"), params))

    # --- comments (both) ----------------------------------------------------------------------

    async def _comment(self, node: str, params: dict[str, str], mode: str | None) -> Response:
        target = self.nodes.get(node)
        if target is None or target["_kind"] == "ig_comment" or not params.get("message"):
            return self._not_found(node)
        page = {"id": PAGE_ID, "name": "Acme"}
        made = self._make_comment(node, params["message"], page, "acme")
        return self._ambiguous() if mode == "ambiguous_after" else self._json({"id": made["id"]})

    async def _reply(self, node: str, params: dict[str, str], _m: str | None) -> Response:
        target = self.nodes.get(node)
        if target is None or target["_kind"] != "ig_comment" or target["_parent"]:
            return self._not_found(node)
        made = self._make_comment(node, params["message"], {"id": IG_USER_ID}, "acme")
        return self._json({"id": made["id"]})

    async def _comments(self, node: str, params: dict[str, str], _m: str | None) -> Response:
        target = self.nodes.get(node)
        if target is None:
            return self._not_found(node)
        mine = [n for n in self.nodes.values() if n.get("_root") == node]
        mine.sort(key=lambda n: (n["_at"], n["id"]))
        if target["_kind"] == "fb_post":  # filter=stream: replies too, flat, with parent
            return self._json({"data": [self._public(n) for n in mine]})
        data = []
        for top in (n for n in mine if n["_parent"] is None):
            item = self._public(top)
            replies = [self._public(n) for n in mine if n["_parent"] == top["id"]]
            if replies:
                item["replies"] = {"data": replies}
            data.append(item)
        return self._json({"data": data})

    # --- Instagram ----------------------------------------------------------------------------

    async def _container(self, node: str, params: dict[str, str], mode: str | None) -> Response:
        if node != IG_USER_ID:
            return self._not_found(node)
        reel = params.get("media_type") == "REELS"
        media = params.get("video_url") if reel else params.get("image_url")
        if not media or params.get("media_type", "REELS") != "REELS":
            return self._json(error(100, "The parameter image_url is required", 2207023), 400)
        polls = self.processing_polls if mode == "not_ready" else self.video_polls if reel else 0
        settled = "ERROR" if mode == "error" else "EXPIRED" if mode == "expired" else "FINISHED"
        container = self._add(
            "container",
            self._id(),
            status_code="IN_PROGRESS" if polls else settled,
            caption=params.get("caption", ""),
            _image=None if reel else media,
            _video=media if reel else None,
            _polls_left=polls,
            _settled=settled,
        )
        return self._json({"id": container["id"]})

    async def _publish(self, node: str, params: dict[str, str], mode: str | None) -> Response:
        container = self.nodes.get(params.get("creation_id", ""))
        if node != IG_USER_ID or container is None or container["_kind"] != "container":
            return self._json(error(24, "The media builder does not exist", 2207008), 400)
        if self.publishes[container["id"]]:
            self.republished.append(container["id"])
            return self._json(error(100, "The container was already published"), 400)
        if container["status_code"] != "FINISHED":
            return self._json(error(9007, "Media ID is not available", 2207027), 400)
        self.publishes[container["id"]] += 1
        media = self._add(
            "ig_media",
            f"18{self._id()}",
            caption=container["caption"],
            media_type="VIDEO" if container["_video"] else "IMAGE",
            media_product_type="REELS" if container["_video"] else "FEED",
            permalink=f"https://www.instagram.com/{'reel' if container['_video'] else 'p'}"
            f"/{self._next}/",
        )
        if self.published_status:
            container["status_code"] = "PUBLISHED"
        if mode == "hang_after":  # done, then no answer until the client gives up
            await self._release.wait()
            return Response(status_code=504)
        return self._ambiguous() if mode == "ambiguous_after" else self._json({"id": media["id"]})

    async def _media(self, node: str, params: dict[str, str], _m: str | None) -> Response:
        if node != IG_USER_ID:
            return self._not_found(node)
        return self._json(self._page_of(self.of_kind("ig_media"), params))

    async def _limit(self, node: str, _p: dict[str, str], _m: str | None) -> Response:
        day_ago = self.now() - timedelta(hours=24)
        used = sum(1 for n in self.of_kind("ig_media") if n["_at"] >= day_ago)
        config = {"quota_total": self.quota_total, "quota_duration": 86400}
        return self._json({"data": [{"quota_usage": used, "config": config}]})

    async def _node(self, node: str, _p: dict[str, str], _m: str | None) -> Response:
        if node == PAGE_ID:
            return self._json({"id": PAGE_ID, "name": "Acme"})
        if node == IG_USER_ID:
            return self._json({"id": IG_USER_ID, "username": "acme"})
        found = self.nodes.get(node)
        if found is None:
            return self._not_found(node)
        if found["_kind"] == "container":
            if found["_polls_left"] > 0:
                found["_polls_left"] -= 1
                if found["_polls_left"] == 0:
                    found["status_code"] = found["_settled"]
                return self._json(
                    {
                        "id": node,
                        "status_code": "IN_PROGRESS",
                        "status": "In Progress: Media is still being processed.",
                    }
                )
            answer = {"id": node, "status_code": found["status_code"]}
            if found["status_code"] == "ERROR":
                answer["status"] = REEL_ERROR_STATUS
            return self._json(answer)
        if found["_kind"] == "fb_video":
            return self._json(self.videos.status(found))
        return self._json(self._public(found))
