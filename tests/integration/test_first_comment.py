"""A post's first comment (SPEC §3): posted on the post right after it goes out; its failure
leaves the post published, is recorded on it and reported in ``post.published``; a publish found
by reconciliation gets its comment once, not twice."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from adapters import base, sandbox
from daemon.store.models import OutboxEvent, Post
from tests.fakes.scripted import AMBIGUOUS_AFTER
from tests.integration.test_pipeline import make, record
from tests.support import run_until_idle, seed, terminal_events

COMMENT = "More details at acme.com"


async def one_post(app: Any) -> str:
    seeded = await seed(
        app,
        brands=1,
        pages_per_brand=1,
        posts_per_page=1,
        start=app.clock.now() + timedelta(minutes=15),
        spread_seconds=0,
        first_comment=COMMENT,
    )
    return seeded.posts[0]


async def published_event(app: Any, post_id: str) -> dict[str, Any]:
    async with app.sessions() as session:
        (payload,) = await session.scalars(
            select(OutboxEvent.payload).where(
                OutboxEvent.post_id == post_id, OutboxEvent.event == "post.published"
            )
        )
    post: dict[str, Any] = payload["data"]["post"]
    return post


async def comments_at_platform(app: Any, post_id: str) -> list[str]:
    post = await record(app, post_id)
    adapter = app.adapters["sandbox"]
    payload = base.PostPayload(post_id, post["page_id"], "sandbox", post["message"])
    return [c.message for c in await adapter.list_comments(payload, post["remote_id"])]


async def test_first_comment_is_posted_and_reported(tmp_path: Path, app_factory: Any) -> None:
    app = await make(tmp_path, app_factory, [])
    post_id = await one_post(app)
    await run_until_idle(app)
    post = await record(app, post_id)
    assert post["status"] == "published"
    assert await comments_at_platform(app, post_id) == [COMMENT]
    event = await published_event(app, post_id)
    assert (event["first_comment"], event["first_comment_status"]) == (COMMENT, "posted")


async def test_transient_comment_error_is_retried(tmp_path: Path, app_factory: Any) -> None:
    app = await make(tmp_path, app_factory, [])
    app.adapters["sandbox"].comment_script.append(
        base.RetryableError("busy", code="HTTP_503", http_status=503)
    )
    post_id = await one_post(app)
    await run_until_idle(app)
    assert app.adapters["sandbox"].comment_calls == 2
    assert await comments_at_platform(app, post_id) == [COMMENT]
    assert (await published_event(app, post_id))["first_comment_status"] == "posted"


async def test_failed_comment_leaves_the_post_published(tmp_path: Path, app_factory: Any) -> None:
    """A refused comment: the post stays published (one publish, one terminal event), the
    reason is on the post and the event says ``failed``."""
    app = await make(tmp_path, app_factory, [])
    app.adapters["sandbox"].comment_script.append(
        base.PermanentError("comments are off", code="COMMENTS_DISABLED", http_status=403)
    )
    post_id = await one_post(app)
    await run_until_idle(app)
    post = await record(app, post_id)
    assert post["status"] == "published" and post["remote_id"]
    assert await comments_at_platform(app, post_id) == []
    assert (await published_event(app, post_id))["first_comment_status"] == "failed"
    async with app.sessions() as session:
        stored = await session.get(Post, post_id)
    assert stored is not None
    assert stored.error_code == "COMMENTS_DISABLED"
    assert "first comment not posted" in (stored.error_message or "")
    assert dict(await terminal_events(app)) == {post_id: 1}
    assert len(app.adapters["sandbox"].published_records()) == 1


async def test_ambiguous_comment_is_not_repeated(tmp_path: Path, app_factory: Any) -> None:
    app = await make(tmp_path, app_factory, [])
    app.adapters["sandbox"].comment_script.append(AMBIGUOUS_AFTER)
    post_id = await one_post(app)
    await run_until_idle(app)
    assert app.adapters["sandbox"].comment_calls == 1
    assert await comments_at_platform(app, post_id) == [COMMENT]
    assert (await published_event(app, post_id))["first_comment_status"] == "in_doubt"


async def test_reconciled_publish_gets_its_comment_once(tmp_path: Path, app_factory: Any) -> None:
    """The publish reached the platform but its answer was lost: reconciliation finds it and
    posts the comment; a second reconciliation (as after a crash) would find the comment."""
    app = await make(tmp_path, app_factory, [AMBIGUOUS_AFTER])
    post_id = await one_post(app)
    await run_until_idle(app)
    post = await record(app, post_id)
    assert post["status"] == "published"
    assert len(app.adapters["sandbox"].published_records()) == 1
    assert await comments_at_platform(app, post_id) == [COMMENT]
    assert (await published_event(app, post_id))["first_comment_status"] == "posted"


async def test_reconciliation_skips_a_comment_already_there(
    tmp_path: Path, app_factory: Any
) -> None:
    """Crashed after publishing and commenting: the comment is found, not posted again."""
    app = await make(tmp_path, app_factory, [AMBIGUOUS_AFTER])
    adapter = app.adapters["sandbox"]
    real_publish = adapter.publish

    async def publish_then_comment(post: base.PostPayload) -> base.Published:
        try:
            return await real_publish(post)
        except base.AmbiguousError:
            (record_,) = adapter.published_records()
            await sandbox.SandboxAdapter.post_comment(adapter, post, record_.remote_id, COMMENT)
            raise

    adapter.publish = publish_then_comment
    post_id = await one_post(app)
    await run_until_idle(app)
    assert await comments_at_platform(app, post_id) == [COMMENT]
    assert adapter.comment_calls == 0
    assert (await published_event(app, post_id))["first_comment_status"] == "posted"
