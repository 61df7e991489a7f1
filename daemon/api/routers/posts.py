"""``/api/v1/posts``: schedule (one or a batch of 50), list, read, edit and cancel scheduled posts,
list published ones. Publishing now is in :mod:`daemon.api.routers.publish`."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy import and_, bindparam, or_, select, tuple_

from daemon import lifecycle, services
from daemon.api import errors, idempotency, posting, queries, schemas
from daemon.api.routers import ReadPosts, WritePosts, error_responses
from daemon.api.routers.brands import CURSOR
from daemon.dispatch import transitions
from daemon.store import db, notify
from daemon.store.hot import Hot
from daemon.store.models import Page, Post, PublishAttempt
from daemon.timefmt import iso, parse_instant

if TYPE_CHECKING:
    from daemon.app import App

router = APIRouter(tags=["posts"])
LIMIT = Query(default=50, ge=1, le=100, description="At most this many items (1-100)")
PAGE_ID = Query(default=None, description="Only this page's posts")
PENDING = (lifecycle.SCHEDULED, lifecycle.PUBLISHING)
VIEW_COLUMNS = tuple(Post.__table__.c[name] for name in transitions.VIEW_FIELDS)


def wire(post: Post) -> dict[str, Any]:
    return lifecycle.post_object(transitions.view(post))


@router.post(
    "/posts/schedule",
    status_code=201,
    response_model=schemas.ScheduledOne,
    response_model_exclude_unset=True,
    responses=error_responses(409),
    summary="Schedule a post",
)
async def schedule(request: Request, body: schemas.ScheduleBody, principal: WritePosts) -> Response:
    at = posting.scheduled_at(body)
    return await posting.create_answered(queries.postd(request), principal, body, at, _scheduled)


def _scheduled(post: Post) -> Response:
    """The 201 of POST /posts/schedule, rendered as the response model says (the route returns
    it as is: it is stored, in the post's transaction, under the Idempotency-Key)."""
    one = schemas.ScheduledOne.model_validate({"scheduled_post": wire(post)})
    return Response(one.model_dump_json(exclude_unset=True), 201, media_type="application/json")


def _item_error(exc: Exception) -> errors.ApiError:
    if isinstance(exc, ValidationError):
        return errors.from_validation(RequestValidationError(exc.errors()))
    return posting.as_api_error(exc)


@router.post(
    "/posts/schedule/bulk",
    response_model=schemas.BulkResult,
    response_model_exclude_unset=True,
    responses=error_responses(409),
    summary="Schedule up to 50 posts, each answered on its own",
)
async def schedule_bulk(
    request: Request, body: schemas.BulkBody, principal: WritePosts
) -> dict[str, Any]:
    """Each item is checked, counted and committed on its own (a later item's guardrails see the
    earlier ones), its post recorded on the Idempotency-Key with it: a retry that takes the key
    over from a process that died part-way answers those items with their posts and schedules
    only the rest."""
    app = queries.postd(request)
    key = idempotency.current()
    made = await _made_before(app, key.made if key is not None else {})
    results: list[dict[str, Any]] = []
    for index, raw in enumerate(body.posts):
        if index in made:
            results.append({"index": index, "status": 201, "scheduled_post": wire(made[index])})
            continue
        try:
            item = schemas.ScheduleBody.model_validate(raw)
            at = posting.scheduled_at(item)
            post = await posting.create(app, principal, item, at, remember=True, item=index)
        except Exception as exc:
            error = _item_error(exc)
            if error.spec.code == "IDEMPOTENCY_KEY_IN_USE":
                raise  # the key was taken over meanwhile: its new owner goes on from here
            results.append({"index": index, "status": error.status, "error": error.body()})
            continue
        results.append({"index": index, "status": 201, "scheduled_post": wire(post)})
    done = sum(1 for r in results if r["status"] == 201)
    return {"results": results, "scheduled": done, "failed": len(results) - done}


async def _made_before(app: App, made: dict[int, str]) -> dict[int, Post]:
    """The posts a dead run of this bulk request made, by item (none unless it is a retry)."""
    if not made:
        return {}
    async with queries.read_session(app) as session:
        found = {
            p.id: p for p in await session.scalars(select(Post).where(Post.id.in_(made.values())))
        }
    return {item: found[post_id] for item, post_id in made.items() if post_id in found}


@functools.cache
def _scheduled_statement(walk: bool, after: bool, on_page: bool) -> Hot:
    """The query of GET /posts/scheduled, built once per shape. Rows, not ORM objects: the page
    of posts is only read and turned into JSON.

    ``walk`` (SQLite, all the token's brands): read ix_posts_scheduled in order and stop at the
    page's last row. SQLite's planner (no statistics) would rather read every pending post of the
    brands through ix_posts_brand_state_due and sort them all (300 ms for 100,000 posts); a unary
    + keeps a column's own indexes out of its choice (documented SQLite planner control)."""
    state, brand = Post.state, Post.brand_id
    if walk:
        state, brand = queries.unindexed(state), queries.unindexed(brand)
    stmt = (
        select(*VIEW_COLUMNS)
        .where(state.in_(PENDING), brand.in_(bindparam("l_brands", expanding=True)))
        .order_by(Post.scheduled_at, Post.id)
        .limit(bindparam("l_limit"))
    )
    if after:
        at = bindparam("l_at", type_=Post.scheduled_at.type)
        stmt = stmt.where(tuple_(Post.scheduled_at, Post.id) > tuple_(at, bindparam("l_id")))
    if on_page:
        stmt = stmt.where(Post.page_id == bindparam("l_page"))
    return Hot(stmt)


@router.get(
    "/posts/scheduled",
    response_model=schemas.ScheduledList,
    response_model_exclude_unset=True,
    responses=error_responses(),
    summary="Pending posts, soonest first",
)
async def list_scheduled(
    request: Request,
    principal: ReadPosts,
    page_id: str | None = PAGE_ID,
    limit: int = LIMIT,
    cursor: str | None = CURSOR,
) -> dict[str, Any]:
    after = queries.decode_cursor(cursor, 2)
    app = queries.postd(request)
    walk = page_id is None and db.read_engine(app).dialect.name == "sqlite"
    stmt = _scheduled_statement(walk, after is not None, page_id is not None)
    params: dict[str, Any] = {
        "l_brands": sorted(principal.brand_ids),
        "l_limit": limit + 1,
        "l_page": page_id,
    }
    if after is not None:
        params |= {"l_at": queries.cursor_instant(after[0]), "l_id": after[1]}
    async with db.reading(app) as conn:
        if page_id is not None:
            await queries.reachable_page(conn, principal, page_id)
        rows = [row._asdict() for row in await stmt.all(conn, params)]
    rows, has_more = queries.split_page(rows, limit)
    last = rows[-1] if has_more else None
    return {
        "scheduled_posts": [lifecycle.post_object(transitions.view_of(r)) for r in rows],
        "next_cursor": queries.encode_cursor(last["scheduled_at"].isoformat(), last["id"])
        if last
        else None,
        "has_more": has_more,
    }


@router.get(
    "/posts/scheduled/{post_id}",
    response_model=schemas.ScheduledOneDetail,
    response_model_exclude_unset=True,
    responses=error_responses(),
    summary="One post, in any state, with its attempt log",
)
async def get_scheduled(request: Request, post_id: str, principal: ReadPosts) -> dict[str, Any]:
    async with queries.read_session(queries.postd(request)) as session:
        post = await queries.reachable_post(session, principal, post_id)
        attempts = list(
            await session.scalars(
                select(PublishAttempt)
                .where(PublishAttempt.post_id == post.id)
                .order_by(PublishAttempt.number, PublishAttempt.id)
            )
        )
    return {"scheduled_post": services.post_dict(post, attempts)}


@router.delete(
    "/posts/scheduled/{post_id}",
    response_model=schemas.Cancelled,
    responses=error_responses(409),
    summary="Cancel a pending post (404 once cancelled or published)",
)
async def cancel(request: Request, post_id: str, principal: WritePosts) -> dict[str, Any]:
    app = queries.postd(request)
    async with app.sessions() as session, session.begin():
        post = await queries.reachable_post(session, principal, post_id, lock=True)
        await services.cancel_post(session, post.id, app.clock.now())
    return {"success": True, "id": post_id}


@router.patch(
    "/posts/scheduled/{post_id}",
    response_model=schemas.ScheduledOne,
    response_model_exclude_unset=True,
    responses=error_responses(409),
    summary="Edit a pending post's message, first comment and/or time",
)
async def edit(
    request: Request, post_id: str, body: schemas.PatchBody, principal: WritePosts
) -> dict[str, Any]:
    app = queries.postd(request)
    now = app.clock.now()
    text = body.scheduled_at if body.scheduled_at is not None else body.publish_at
    at = parse_instant(text, "scheduled_at") if text is not None else None
    if at is None and body.message is None and body.first_comment is None:
        raise errors.ApiError(
            "MISSING_FIELD",
            "Send at least one of message, first_comment, scheduled_at",
            field="scheduled_at",
        )
    async with queries.read_session(app) as session:
        post = _editable(await queries.reachable_post(session, principal, post_id))
        page = await session.get(Page, post.page_id)
        assert page is not None  # a post's page is a foreign key
        message = body.message if body.message is not None else post.message
        comment = body.first_comment if body.first_comment is not None else post.first_comment
        media = tuple(post.media or ())
        posting.check_content(message, media, comment, page, app.adapters.get(page.platform))
        if at is not None:
            services.check_time(at, now, app.settings.scheduling)
            await posting.check_fits(session, app, page, at, exclude=post.id)
    async with app.sessions() as session, session.begin():
        post = _editable(await queries.reachable_post(session, principal, post_id, lock=True))
        post.message, post.first_comment, post.updated_at = message, comment, now
        if at is not None:
            post.scheduled_at = post.due_at = at
            post.not_before = post.defer_reason = post.first_attempt_at = None
            await notify.due(session, at)
    app.dispatcher.notify_due(post.due_at)
    return {"scheduled_post": wire(post)}


def _editable(post: Post) -> Post:
    if post.state == lifecycle.PUBLISHING:
        raise errors.ApiError("POST_PUBLISHING", f"Post {post.id} is being published right now")
    if post.state != lifecycle.SCHEDULED:
        raise errors.ApiError("NOT_FOUND", f"No pending post {post.id!r} (it is {post.state})")
    return post


@router.get(
    "/posts/published",
    response_model=schemas.PublishedList,
    responses=error_responses(),
    summary="Published posts, newest first",
)
async def list_published(
    request: Request,
    principal: ReadPosts,
    page_id: str | None = PAGE_ID,
    limit: int = LIMIT,
    since: str | None = Query(default=None, description="Only posts published after this"),
    cursor: str | None = CURSOR,
) -> dict[str, Any]:
    after = queries.decode_cursor(cursor, 2)
    stmt: Any = (
        select(Post)
        .where(Post.state == lifecycle.PUBLISHED, Post.brand_id.in_(sorted(principal.brand_ids)))
        .order_by(Post.published_at.desc(), Post.id.desc())
        .limit(limit + 1)
    )
    if since is not None:
        stmt = stmt.where(Post.published_at > parse_instant(since, "since"))
    if after is not None:
        at = queries.cursor_instant(after[0])
        stmt = stmt.where(
            or_(Post.published_at < at, and_(Post.published_at == at, Post.id < after[1]))
        )
    async with queries.read_session(queries.postd(request)) as session:
        if page_id is not None:
            await queries.reachable_page(session, principal, page_id)
            stmt = stmt.where(Post.page_id == page_id)
        posts = list(await session.scalars(stmt))
    posts, has_more = queries.split_page(posts, limit)
    last = posts[-1] if has_more else None
    return {
        "published_posts": [published_item(p) for p in posts],
        "next_cursor": queries.encode_cursor(_iso_full(last.published_at), last.id)
        if last
        else None,
        "has_more": has_more,
    }


def _iso_full(value: Any) -> str:
    return value.isoformat() if value is not None else ""


def published_item(post: Post) -> dict[str, Any]:
    return {
        "id": post.id,
        "page_id": post.page_id,
        "platform": post.platform,
        "remote_id": post.remote_id,
        "permalink": post.permalink,
        "published_at": iso(post.published_at),
        "message": post.message,
        "metrics": {"likes": None, "comments": None, "shares": None},
    }
