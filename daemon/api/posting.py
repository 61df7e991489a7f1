"""Turning an API body into a post: every check, then the monthly count, then one insert.

The order matters and is the same for /posts/schedule, /posts/schedule/bulk and /posts/publish:

1. every check that can refuse the request, on a read-only connection (no write lock on SQLite):
   the page and its brand reach, the time (lead and horizon), the content, the guardrails;
2. the publish is counted in the monthly bucket (``daemon.api.limits.charge_in``), which may
   refuse, and
3. the post is inserted through :func:`daemon.services.schedule_post`, both in one savepoint of
   the API's group commit (``daemon/store/writer.py``), with, for /posts/schedule, the response
   stored under the request's Idempotency-Key (``daemon.api.idempotency.store_in``).

So a refused request changes nothing and costs no publish. Two requests racing for the same slot
can both pass step 1; the dispatcher, which enforces the guardrails when it claims, then defers
the later one instead of breaking a limit.

Decisions (documented in the API reference): ``publish_at`` is an alias of ``scheduled_at``;
``link`` (official SDK) is kept in ``options["link"]`` and appended to the message unless the
message already contains it; empty strings in ``media_urls`` (an unmapped field in Make/Zapier)
are dropped; ``media_ids`` answer 404 ``NOT_FOUND`` until uploaded media exists.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from sqlalchemy import insert as sql_insert
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.responses import Response

from adapters import base
from daemon import guardrails, oauth, services
from daemon.api import errors, idempotency, limits, queries
from daemon.api.deps import Principal
from daemon.api.schemas import PublishBody, ScheduleBody
from daemon.errors import InputError
from daemon.store import db, notify, writer
from daemon.store.hot import Hot, detached
from daemon.store.models import Page, Post
from daemon.timefmt import iso, parse_instant

if TYPE_CHECKING:
    from daemon.app import App

DAY = timedelta(hours=24)
# Schedules after the instant are read this far: enough to decide whether it fits (its windows
# reach 24 h ahead) and to find the earliest fit within the next day exactly.
LOOKAHEAD = timedelta(hours=48)
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".m4v", ".webm", ".avi", ".mkv"})
_NUMERIC_HOST = re.compile(r"[0-9a-fA-Fx.]+")
PUBLISHES = "publishes"
_INSERT_POST = Hot(sql_insert(Post))
Respond = Callable[[Post], Response]  # the whole HTTP answer for a post just inserted
Warnings = tuple[limits.QuotaWarning, ...]


@dataclass(frozen=True, slots=True)
class Draft:
    page: Page
    new: services.NewPost


# -- fields -------------------------------------------------------------------------------------


def scheduled_at(body: ScheduleBody) -> datetime:
    text = body.scheduled_at if body.scheduled_at is not None else body.publish_at
    if text is None:
        raise errors.ApiError(
            "MISSING_FIELD", "Missing required field: scheduled_at", field="scheduled_at"
        )
    return parse_instant(text, "scheduled_at")


def _ip_of(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _NUMERIC_HOST.fullmatch(host):  # 2130706433, 0x7f.1, 0177.0.0.1: what resolvers accept
        try:
            return ipaddress.ip_address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def check_media_url(url: str) -> str:
    """Refuse what is never a public URL: other schemes, localhost, private/loopback/link-local
    and other non-global IP literals in any spelling. Names are resolved, and their answers
    checked again, only when the media is fetched (netguard): DNS can change in between."""
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").rstrip(".").lower()
    problem = None
    if parts.scheme not in ("http", "https") or not host:
        problem = "must be an http(s) URL"
    elif host == "localhost" or host.endswith((".localhost", ".local", ".internal")):
        problem = "points at this machine or a local network"
    else:
        ip = _ip_of(host)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip is not None and (not ip.is_global or ip.is_multicast):
            problem = "is not a public address"
    if problem:
        raise errors.ApiError(
            "INVALID_MEDIA_URL", f"media_urls: {url!r} {problem}", field="media_urls", url=url
        )
    return url.strip()


def media_kind(url: str) -> str:
    suffix = PurePosixPath(urlsplit(url).path).suffix.lower()
    return "video" if suffix in VIDEO_SUFFIXES else "photo"


def media_items(body: PublishBody) -> tuple[dict[str, Any], ...]:
    for media_id in body.media_ids or ():
        raise errors.ApiError(
            "NOT_FOUND",
            f"No media {media_id!r}: upload it with POST /media/upload, or pass media_urls",
            field="media_ids",
            media_id=media_id,
        )
    urls = [check_media_url(u) for u in body.media_urls or () if u and u.strip()]
    return tuple({"src": url, "type": media_kind(url)} for url in urls)


def with_link(message: str | None, link: str | None) -> str | None:
    if link is None or not link.strip():
        return message
    link = link.strip()
    parts = urlsplit(link)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise errors.ApiError("INVALID_REQUEST", "link must be an http(s) URL", field="link")
    if message and link in message:
        return message
    return f"{message.rstrip()}\n\n{link}" if message and message.strip() else link


def new_post(body: PublishBody, page_id: str, at: datetime) -> services.NewPost:
    options: dict[str, Any] = {}
    if body.tiktok_settings is not None:
        options["tiktok_settings"] = body.tiktok_settings
    if body.link and body.link.strip():
        options["link"] = body.link.strip()
    return services.NewPost(
        page_id=page_id,
        scheduled_at=at,
        message=with_link(body.message, body.link),
        media=media_items(body),
        first_comment=body.first_comment,
        options=options or None,
    )


def check_content(
    message: str | None,
    media: tuple[dict[str, Any], ...],
    first_comment: str | None,
    page: Page,
    adapter: base.Adapter | None,
    options: dict[str, Any] | None = None,
) -> None:
    """:func:`services.check_content` (what ``schedule_post`` checks) as the API's error, made
    before anything is counted or written."""
    try:
        services.check_content(message, media, first_comment, page, adapter, options)
    except InputError as exc:
        raise errors.from_input(exc) from None


# -- guardrails ---------------------------------------------------------------------------------


def guardrail_error(decision: guardrails.Decision) -> errors.ApiError:
    assert decision.code is not None
    if decision.earliest is None:
        detail = "a limit is 0 in this daemon's configuration: it never fits"
    else:
        detail = f"the earliest instant that fits is {iso(decision.earliest)}"
    return errors.ApiError(
        decision.code,
        f"Publish guardrail {decision.reason}: {detail}",
        rule=decision.reason,
        retry_after_seconds=decision.retry_after_seconds,
        earliest_allowed_at=iso(decision.earliest),
    )


async def check_fits(
    session: queries.Reader, app: App, page: Page, at: datetime, exclude: str | None = None
) -> None:
    """429 unless a publish at ``at`` fits among the page's and brand's posts around it
    (published, in flight, scheduled); ``exclude`` leaves a rescheduled post out. Counts first:
    the rows (hundreds on a busy brand) are read only when a limit is close."""
    limits = app.dispatcher.limits_for(page.platform)
    near = await queries.nearby(session, page, at, limits.page.min_gap, exclude)
    if guardrails.surely_fits(near, limits):
        return
    page_hist, brand_hist = await queries.histories(
        session, page, lo=at - DAY, hi=at + LOOKAHEAD, exclude=exclude
    )
    decision = guardrails.fits(page_hist, brand_hist, limits, at)
    if not decision.allowed:
        raise guardrail_error(decision)


async def check_now(session: queries.Reader, app: App, page: Page, now: datetime) -> None:
    """429 unless a publish now is allowed by what was already published (what the dispatcher
    checks when it claims)."""
    # Another instance's clock may run slightly ahead: count its claim as "now" (as claim does).
    page_hist, brand_hist = await queries.histories(
        session, page, lo=now - DAY, hi=now + LOOKAHEAD, scheduled=False
    )
    page_hist = [min(t, now) for t in page_hist]
    brand_hist = [min(t, now) for t in brand_hist]
    decision = guardrails.decide(
        page_hist, brand_hist, app.dispatcher.limits_for(page.platform), now
    )
    if not decision.allowed:
        raise guardrail_error(decision)


# -- the three steps ----------------------------------------------------------------------------


async def prepare(
    app: App, principal: Principal, body: PublishBody, at: datetime | None, now: datetime
) -> Draft:
    """Step 1: every check, on one snapshot; ``at`` None means "publish now"."""
    async with db.reading(app, snapshot=True) as conn:
        page = await queries.reachable_page(conn, principal, body.page_id)
        new = new_post(body, page.id, at or now)
        if at is not None:
            services.check_time(at, now, app.settings.scheduling)
        check_content(
            new.message,
            new.media,
            new.first_comment,
            page,
            app.adapters.get(page.platform),
            new.options,
        )
        if at is not None:
            await check_fits(conn, app, page, at)
        else:
            if not page.connected:  # it would only fail at the platform, as a 502
                raise not_connected(page)
            await check_now(conn, app, page, now)
    return Draft(page, new)


def not_connected(page: Page) -> errors.ApiError:
    why = (
        "it has no credentials yet"
        if page.connection == "not_connected"
        else f"the platform refused its credentials ({page.status_reason or page.status})"
    )
    return errors.ApiError(
        "PAGE_NOT_CONNECTED",
        f"Page {page.id} cannot publish: {why}. Connect it with "
        f"`postd page connect {oauth.connect_command(page.platform)} --page {page.id}`, then retry",
        field="page_id",
        page_id=page.id,
    )


async def refund_publish(app: App, principal: Principal, now: datetime) -> None:
    """Give the publish back: the post it was counted for never reached a platform."""
    if not principal.sandbox:
        await limits.refund(app, principal.user_id, PUBLISHES, now)


async def insert(
    app: App,
    principal: Principal,
    draft: Draft,
    now: datetime,
    *,
    respond: Respond | None = None,
    remember: bool = False,
    item: int | None = None,
) -> tuple[Post, Response | None]:
    """Steps 2 and 3 in one savepoint of the API's group commit (daemon/store/writer.py): the
    publish off the monthly bucket (MONTHLY_LIMIT_EXCEEDED rolls back, counting nothing; sandbox
    tokens are not counted), then the insert; then the dispatcher hears of it.

    When the request owns an Idempotency-Key, that savepoint also writes, with ``respond``, the
    response it renders (a crash cannot commit the post without it, and a retry would then
    schedule a second post; it costs no write of its own), or with ``remember`` the post's id
    (:func:`daemon.api.idempotency.remember_in`), for a response that comes later; with ``item``
    too, as that item of a bulk request."""
    key = idempotency.current()
    # Checked in step 1; a Core insert (an ORM session here cost more than the insert). The row
    # and the response are made here, not in the job, which holds the write lock.
    values = services.post_values(draft.new, draft.page, now)
    values["created_by"] = f"token:{principal.token_id}"
    post = detached(Post, values)
    response = None if respond is None else respond(post)

    async def job(conn: AsyncConnection) -> Warnings:
        warnings: Warnings = ()
        if not principal.sandbox:
            warnings = await limits.charge_in(
                conn, app, principal.user_id, principal.tier, PUBLISHES, now
            )
        await _INSERT_POST.run(conn, values)
        await notify.due(conn, values["due_at"])
        if response is not None:
            await idempotency.keep_in(conn, key, response)
        elif remember and key is not None:
            await idempotency.remember_in(conn, key, post.id, item)
        return warnings

    warnings = await writer.write(app, job)
    if response is not None:
        idempotency.kept(key)
    elif remember and item is not None:
        idempotency.made(key, item, post.id)
    if warnings:
        await limits.notify(app, principal.user_id, warnings, now)
    app.dispatcher.notify_due(post.due_at)
    return post, response


async def create(
    app: App,
    principal: Principal,
    body: PublishBody,
    at: datetime | None,
    *,
    remember: bool = False,
    item: int | None = None,
) -> Post:
    """Check, count and insert the post of ``body`` (``at`` None: due now); ``remember``: its id
    on the request's Idempotency-Key, as ``item`` of a bulk request if given (see
    :func:`insert`)."""
    now = app.clock.now()
    draft = await prepare(app, principal, body, at, now)
    post, _ = await insert(app, principal, draft, now, remember=remember, item=item)
    return post


async def create_answered(
    app: App, principal: Principal, body: PublishBody, at: datetime, respond: Respond
) -> Response:
    """:func:`create` for a request answered with the post just scheduled: the response
    ``respond`` renders, stored with the post under the request's Idempotency-Key."""
    now = app.clock.now()
    draft = await prepare(app, principal, body, at, now)
    _, response = await insert(app, principal, draft, now, respond=respond)
    assert response is not None
    return response


def as_api_error(exc: Exception) -> errors.ApiError:
    """Any refusal of the steps above in the catalog's shape (for per-item bulk results)."""
    if isinstance(exc, errors.ApiError):
        return exc
    if isinstance(exc, InputError):
        return errors.from_input(exc)
    raise exc
