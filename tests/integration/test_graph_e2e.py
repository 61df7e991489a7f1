"""End to end, in process, on SQLite and PostgreSQL: the daemon publishes to a Facebook Page and
an Instagram account on the Graph fake through injected throttles, 5xx, ambiguous answers, slow
containers; every post ends published exactly once at the fake, no
Instagram container is published twice, and the container ids live in the adapter_progress
table."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from daemon import credentials, services
from daemon.clock import FakeClock
from daemon.store.models import AdapterProgress, Post, PublishAttempt
from tests.conftest import make_settings
from tests.contract.conftest import PNG
from tests.fakes import graph
from tests.support import run_until_idle, states

POSTS_PER_PLATFORM = 5


async def _seed(app: Any, fake: graph.FakeGraph, key: str) -> dict[str, str]:
    """One Page and one Instagram account, five posts each (Facebook: two with a photo;
    Instagram: all photos); returns post id -> platform."""
    vault = credentials.Vault([key])
    connected = {
        "facebook": {"access_token": graph.PAGE_TOKEN, "page_id": graph.PAGE_ID},
        "instagram": {"access_token": graph.IG_TOKEN, "ig_user_id": graph.IG_USER_ID},
    }
    image = fake.serve_file("cat.jpg", PNG, "image/png")
    now, out = app.clock.now(), {}
    async with app.sessions() as session, session.begin():
        brand = await services.add_brand(session, "Acme", now)
        await session.flush()
        for platform, creds in connected.items():
            page = await services.add_page(
                session, brand_id=brand.id, platform=platform, name=platform, now=now
            )
            await credentials.store(session, page, vault, creds)
            await session.flush()
            for i in range(POSTS_PER_PLATFORM):
                photo = platform == "instagram" or i < 2
                new = services.NewPost(
                    page_id=page.id,
                    scheduled_at=now + timedelta(minutes=15, seconds=90 * i),
                    message=f"{platform} post {i} #postd",
                    media=({"src": image, "type": "photo"},) if photo else (),
                )
                post = await services.schedule_post(
                    session, new, now=now, scheduling=app.settings.scheduling,
                    check_lead=False, adapter=app.adapters[platform],
                )  # fmt: skip
                out[post.id] = platform
    return out


async def test_each_post_publishes_exactly_once_through_graph_failures(
    tmp_path: Path, db_url: str, app_factory: Any, clock: FakeClock
) -> None:
    """10 posts on Facebook and Instagram through Graph throttles (codes 4, 32), 5xx before and
    after Graph recorded the post, a slow and an expired container: all
    published, each once at the fake, each Instagram container published at most once."""
    fake = graph.FakeGraph(clock.now, processing_polls=2)
    await fake.start()
    key = credentials.generate_key()
    base = fake.base_url + graph.PREFIX
    settings = make_settings(
        tmp_path,
        db_url,
        security={"secret_key": key},
        platforms={
            "facebook": {"api_base": base},
            "instagram": {"api_base": base},
            "media_poll_seconds": 1,
        },
        netguard={"allow_loopback": True, "allow_http": True},
        retry={"max_attempts": 10},
    )
    app = await app_factory(settings)
    try:
        posts = await _seed(app, fake, key)
        for mode in ("rate_limit", "ambiguous_after", "server_error"):
            fake.fail("feed", mode)
        fake.fail("photos", "page_rate_limit")
        for mode in ("server_error", "not_ready", "expired"):
            fake.fail("container", mode)
        for mode in ("rate_limit", "ambiguous_after", "server_error"):
            fake.fail("media_publish", mode)

        await run_until_idle(app)

        assert await states(app) == Counter({"published": 10})
        async with app.sessions() as session:
            rows = (await session.execute(select(Post.id, Post.message, Post.remote_id))).all()
            progress = (await session.scalars(select(AdapterProgress))).all()
            attempts = list(await session.scalars(select(PublishAttempt)))
        for post_id, message, remote_id in rows:
            at_fake = fake.by_text(message)
            assert len(at_fake) == 1, f"{message!r} reached Graph {len(at_fake)} times"
            assert remote_id == at_fake[0]["id"], posts[post_id]
        assert fake.republished == []
        assert sum(fake.publishes.values()) == POSTS_PER_PLATFORM
        assert all(n == 1 for n in fake.publishes.values())
        published_containers = {p.value for p in progress if p.key.startswith("ig_container")}
        assert published_containers == set(fake.publishes)
        outcomes = Counter((a.outcome, a.error_code) for a in attempts if a.error_code)
        assert outcomes == Counter(
            {
                ("retry", "GRAPH_4"): 2,  # throttled feed and media_publish
                ("retry", "GRAPH_32"): 1,  # Page throttle on photos
                ("retry", "GRAPH_2"): 1,  # container 500: not the final call
                ("in_doubt>reconciled_published", "GRAPH_1"): 2,  # recorded, then 500
                ("in_doubt>reconciled_absent", "GRAPH_2"): 2,  # 500, nothing recorded
            }
        )
        assert len(fake.of_kind("container")) == POSTS_PER_PLATFORM + 1  # one expired at once
        assert len(fake.calls("media_publish")) == POSTS_PER_PLATFORM + 2  # two failed tries
    finally:
        await fake.stop()
