"""What the Facebook Pages and Instagram adapters share: the Graph API version, its error
envelope and classification (platforms.md §1 "Error classification", §2 "Errors"), the usage
headers that say how long a throttle lasts, and an authenticated request helper.

Graph answers most errors with HTTP 400 and ``{"error": {"code", "error_subcode", "message",
"is_transient"}}``; the class comes from the code (and the subcode first where Instagram reuses a
code), the HTTP status only decides for bodies without a code:

    4 with subcode 2207051 (IG "suspected spam")            -> PermanentError SPAM_RESTRICTED
    9 with subcode 2207042 (IG daily publishing cap)        -> RetryableError, an hour later
    IG container gone (2207006, 2207008, 2207020, 2207053)  -> RetryableError CONTAINER_GONE
    IG 9007 / 2207027 (media not ready)                     -> RetryableError MEDIA_NOT_READY
    1, 2 and ``is_transient``                               -> RetryableError (AmbiguousError on
                                                               the final call when HTTP 5xx)
    4, 17, 32, 341, 613, 80001 (throttles)                  -> RetryableError, wait from the
                                                               usage headers
    10, 102, 190, 200-299                                   -> AuthError
    368 (blocked for policy), 506 (duplicate), 100, others  -> PermanentError GRAPH_<code>
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from adapters import _http, base

# The one place the Graph API version is pinned; ``[platforms.facebook|instagram] api_base``
# defaults to it (daemon/config.py, checked by tests/unit/test_graph.py).
GRAPH_VERSION = "v24.0"
GRAPH_API_BASE = f"https://graph.facebook.com/{GRAPH_VERSION}"
# Facebook video uploads go to their own host (platforms.md §1 (c)).
GRAPH_VIDEO_BASE = f"https://graph-video.facebook.com/{GRAPH_VERSION}"

THROTTLE_CODES = frozenset({4, 17, 32, 341, 613, 80001})
TRANSIENT_CODES = frozenset({1, 2})
AUTH_CODES = frozenset({10, 102, 190})
CONTAINER_GONE_SUBCODES = frozenset({2207006, 2207008, 2207020, 2207053})
# Throttled without an estimate in the headers (X-App-Usage has none): the rolling window is
# an hour [U]; try again in five minutes.
DEFAULT_THROTTLE_WAIT = 300.0
DAILY_CAP_WAIT = 3600.0


@dataclass(frozen=True, slots=True)
class GraphError:
    """The fields of Graph's error envelope that classification uses."""

    code: int | None = None
    subcode: int | None = None
    message: str | None = None
    is_transient: bool = False

    @classmethod
    def parse(cls, body: Any) -> GraphError:
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict):
            return cls()
        return cls(
            code=_as_int(error.get("code")),
            subcode=_as_int(error.get("error_subcode")),
            message=str(error.get("error_user_msg") or error.get("message") or "") or None,
            is_transient=error.get("is_transient") is True,
        )


def _as_int(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def usage_wait(headers: httpx.Headers) -> float | None:
    """Seconds until a throttle lifts, from ``X-Business-Use-Case-Usage``
    (``estimated_time_to_regain_access``, minutes), else :data:`DEFAULT_THROTTLE_WAIT` when
    ``X-App-Usage`` or ``X-Page-Usage`` reports a counter at 100 %; ``None`` if neither says."""
    minutes = 0.0
    buc = _header_json(headers.get("x-business-use-case-usage"))
    if isinstance(buc, dict):
        for entries in buc.values():
            for entry in entries if isinstance(entries, list) else []:
                value = (
                    entry.get("estimated_time_to_regain_access") if isinstance(entry, dict) else 0
                )
                if isinstance(value, int | float):
                    minutes = max(minutes, float(value))
    if minutes > 0:
        return minutes * 60
    for name in ("x-app-usage", "x-page-usage"):
        usage = _header_json(headers.get(name))
        if isinstance(usage, dict) and any(
            isinstance(v, int | float) and v >= 100 for v in usage.values()
        ):
            return DEFAULT_THROTTLE_WAIT
    return None


def _header_json(value: str | None) -> Any:
    try:
        return None if value is None else json.loads(value)
    except ValueError:
        return None


def classify(
    response: httpx.Response, *, final: bool, now: datetime, what: str
) -> base.AdapterError:
    """The typed error for a non-2xx Graph response (see the module docstring)."""
    err = GraphError.parse(_http.body_json(response))
    status = response.status_code
    if err.code is None:  # not Graph's envelope (a proxy, a load balancer): by HTTP status
        return _http.status_error(response, final=final, now=now, what=what, parse=_parse)
    code = f"GRAPH_{err.code}" + (f"_{err.subcode}" if err.subcode else "")
    text = f"{what}: HTTP {status} Graph code {err.code}" + (
        f" ({err.message})" if err.message else ""
    )
    kw: dict[str, Any] = {"code": code, "http_status": status, "excerpt": _http.excerpt(response)}
    if final and status >= 500:  # whatever the body says, it may have been done
        return base.AmbiguousError(text, **kw)
    if err.subcode == 2207051:
        return base.PermanentError(text, **{**kw, "code": "SPAM_RESTRICTED"})
    if err.subcode == 2207042:
        return base.RetryableError(text, retry_after=DAILY_CAP_WAIT, **kw)
    if err.subcode in CONTAINER_GONE_SUBCODES:
        return base.RetryableError(text, **{**kw, "code": "CONTAINER_GONE"})
    if err.code == 9007 or err.subcode == 2207027:
        return base.RetryableError(text, **{**kw, "code": "MEDIA_NOT_READY"})
    if err.code in THROTTLE_CODES:
        wait = usage_wait(response.headers) or DEFAULT_THROTTLE_WAIT
        return base.RetryableError(text, retry_after=wait, **kw)
    if err.code in TRANSIENT_CODES or err.is_transient:
        return base.RetryableError(text, **kw)
    if err.code in AUTH_CODES or 200 <= err.code <= 299:
        return base.AuthError(text, **kw)
    return base.PermanentError(text, **kw)


def _parse(body: Any) -> tuple[str | None, str | None]:
    err = GraphError.parse(body)
    return (None if err.code is None else f"GRAPH_{err.code}"), err.message


@dataclass(slots=True)
class GraphAccount:
    """One page's Graph node and token (from the credential store)."""

    node_id: str
    token: str = field(repr=False)


PAGE_SIZE = 25
MAX_PAGES = 4  # find_published and list_comments read at most this many pages


@dataclass(frozen=True, slots=True)
class NodeFields:
    """Where a kind of published node keeps what postd reads (Facebook posts and Instagram
    media name the same things differently)."""

    platform: str
    edge: str  # the page node's edge that lists them: "posts", "media"
    text: str  # "message", "caption"
    created: str  # "created_time", "timestamp"
    permalink: str  # "permalink_url", "permalink"
    listing: str  # the fields find_published asks for


class GraphClient:
    """Authenticated Graph requests for one adapter: the token goes as the ``access_token``
    parameter (query on GET, form field on POST); on an auth error the stored credentials are
    read again once (a re-connect may have replaced them)."""

    def __init__(
        self,
        store: _http.CredentialStore,
        node_key: str,
        *,
        api_base: str,
        now: _http.Now,
        timeouts: _http.Timeouts,
        transport: httpx.AsyncBaseTransport | None,
    ) -> None:
        self._store = store
        self._node_key = node_key
        self.api_base = (api_base or GRAPH_API_BASE).rstrip("/")
        self._now = now
        self._timeouts = timeouts
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._accounts: dict[str, GraphAccount] = {}

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = _http.make_client(self._timeouts, self._transport)
        return self._client

    async def account(self, page_id: str, *, reload: bool = False) -> GraphAccount:
        if reload or page_id not in self._accounts:
            creds = await self._store.load(page_id)
            self._accounts[page_id] = account_of(creds, self._node_key)
        return self._accounts[page_id]

    async def call(
        self,
        page_id: str,
        method: str,
        path: str,
        *,
        final: bool,
        what: str,
        params: Mapping[str, Any] | None = None,
        base_url: str | None = None,
    ) -> dict[str, Any]:
        """One request; ``{node}`` in ``path`` is the page's node id; ``base_url`` replaces
        :attr:`api_base` (the video host). The JSON object of a 2xx, else the classified error."""
        account = await self.account(page_id)
        for attempt in (1, 2):
            fields = {**(params or {}), "access_token": account.token}
            request: dict[str, Any] = {"params" if method == "GET" else "data": fields}
            url = (base_url or self.api_base) + path.replace("{node}", account.node_id)
            response = await _http.send(self.client, method, url, final=final, what=what, **request)
            if response.is_success:
                return _http.json_object(response, final=final, what=what)
            error = classify(response, final=final, now=self._now(), what=what)
            if isinstance(error, base.AuthError) and attempt == 1:
                fresh = await self.account(page_id, reload=True)
                if fresh.token != account.token:
                    account = fresh
                    continue
            raise error
        raise AssertionError("unreachable")  # pragma: no cover

    async def with_permalink(
        self, page_id: str, remote_id: str, fields: NodeFields
    ) -> base.Published:
        """The published node with its link and time; a failed read only loses the link (the
        node is published all the same)."""
        now = self._now()
        try:
            node = await self.call(
                page_id,
                "GET",
                f"/{remote_id}",
                final=False,
                what="permalink",
                params={"fields": f"id,{fields.permalink},{fields.created}"},
            )
        except base.AdapterError:
            return base.Published(remote_id, None, now)
        when = graph_time(node.get(fields.created), now)
        return base.Published(remote_id, node.get(fields.permalink), when)

    async def find_published(
        self,
        post: base.PostPayload,
        since: datetime,
        exclude_remote_ids: AbstractSet[str],
        fields: NodeFields,
    ) -> base.Published | None:
        """The page's node published at or after ``since`` with the post's text, newest pages
        first, reading at most ``MAX_PAGES`` pages of the edge."""
        params: dict[str, Any] = {
            "fields": fields.listing,
            "limit": PAGE_SIZE,
        }
        for _ in range(MAX_PAGES):
            page = await self.call(
                post.page_id,
                "GET",
                "/{node}/" + fields.edge,
                final=False,
                what=f"list {fields.edge}",
                params=params,
            )
            items = page.get("data")
            if not isinstance(items, list):
                raise base.RetryableError(
                    f"{fields.platform}: {fields.edge} is not a list", code="BAD_RESPONSE"
                )
            reached_older = False
            for item in items:
                created = graph_time(item.get(fields.created), self._now())
                if created < since:
                    reached_older = True
                    continue
                remote = str(item.get("id"))
                if remote not in exclude_remote_ids and same_text(
                    item.get(fields.text), post.message
                ):
                    return base.Published(remote, item.get(fields.permalink), created)
            after = next_cursor(page)
            if reached_older or after is None:
                return None
            params["after"] = after
        raise base.UnsupportedAction(
            f"{fields.platform}: more than {PAGE_SIZE * MAX_PAGES} {fields.edge} since the attempt"
        )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def account_of(creds: Mapping[str, str], node_key: str) -> GraphAccount:
    try:
        return GraphAccount(str(creds[node_key]), str(creds["access_token"]))
    except KeyError as exc:
        raise base.AuthError(
            f"the page's credentials lack {exc.args[0]}: run postd page connect",
            code="NOT_CONNECTED",
        ) from exc


def same_text(a: str | None, b: str | None) -> bool:
    """Texts equal as :func:`base.content_fingerprint` normalizes them."""
    return base.content_fingerprint(a) == base.content_fingerprint(b)


def graph_time(value: Any, fallback: datetime) -> datetime:
    """Graph's ``2026-11-23T04:00:00+0000`` (or ISO 8601) as UTC."""
    return _http.parse_time(value, fallback)


def media_url_problem(url: str, *, public_only: bool) -> str | None:
    """Why Graph could not fetch ``url`` itself (it cURLs the media from the URL it is given):
    not http(s), or with ``public_only`` a loopback/private address or a local name."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host:
        return f"media URL {url!r} is not an http(s) URL"
    if not public_only:
        return None
    if host == "localhost" or host.endswith((".localhost", ".local", ".internal")):
        return f"media URL {url!r} is not public: Graph fetches media from the URL itself"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if not address.is_global:
        return f"media URL {url!r} is not public: Graph fetches media from the URL itself"
    return None


def mapping(value: Any) -> Mapping[str, Any]:
    """``value`` when it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}


def next_cursor(page: Mapping[str, Any]) -> str | None:
    """The next page's ``after`` cursor when Graph says there is one (``paging.next``)."""
    paging = mapping(page.get("paging"))
    if not paging.get("next"):
        return None
    after = mapping(paging.get("cursors")).get("after")
    return str(after) if after else None
