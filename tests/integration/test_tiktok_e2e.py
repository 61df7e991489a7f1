"""End to end, in process, on SQLite and PostgreSQL: the daemon publishes scheduled TikTok video
posts to the fake through throttles (429 and TikTok's HTTP-200 rate limit), the daily cap, a 5xx
after TikTok created the publish, upload and status outages, and slow processing. Each post ends
published exactly once at the fake; no publish is inited twice for one try's publish_id, which
lives in the adapter_progress table."""

from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from adapters import tiktok_api
from daemon import credentials, services
from daemon.clock import FakeClock
from daemon.store.models import AdapterProgress, Post, PublishAttempt
from tests.conftest import make_settings
from tests.fakes import tiktok as fake_tiktok
from tests.support import run_until_idle, states

POSTS = 5


async def _seed(app: Any, fake: fake_tiktok.FakeTikTok, key: str) -> dict[str, str]:
    """One TikTok page (tokens from the fake, as the connect flow stores them) and five public
    video posts 90 s apart; returns post id -> message."""
    vault = credentials.Vault([key])
    creds = {**tiktok_api.token_credentials(fake.issue(), app.clock.now()), "open_id": "open-alice"}
    clip = fake.serve_file("clip.mp4", fake_tiktok.make_mp4(12, 20_000), "video/mp4")
    now, out = app.clock.now(), {}
    async with app.sessions() as session, session.begin():
        brand = await services.add_brand(session, "Acme", now)
        await session.flush()
        page = await services.add_page(
            session, brand_id=brand.id, platform="tiktok", name="TikTok", now=now
        )
        await credentials.store(session, page, vault, creds)
        await session.flush()
        for i in range(POSTS):
            new = services.NewPost(
                page_id=page.id,
                scheduled_at=now + timedelta(minutes=15, seconds=90 * i),
                message=f"tiktok post {i} #postd",
                media=({"src": clip, "type": "video"},),
                options={"tiktok_settings": {"privacy_level": "PUBLIC_TO_EVERYONE"}},
            )
            post = await services.schedule_post(
                session, new, now=now, scheduling=app.settings.scheduling,
                check_lead=False, adapter=app.adapters["tiktok"],
            )  # fmt: skip
            out[post.id] = new.message or ""
    return out


async def test_each_video_publishes_exactly_once_through_tiktok_failures(
    tmp_path: Path, db_url: str, app_factory: Any, clock: FakeClock
) -> None:
    """5 videos through 429 and HTTP-200 rate limits, the daily cap, a 5xx after TikTok
    recorded the init, an upload 5xx, a status outage and processing slower than the poll
    budget: all published, each exactly once at the fake, every completed publish init once."""
    fake = fake_tiktok.FakeTikTok(clock.now, processing_polls=1)
    await fake.start()
    key = credentials.generate_key()
    settings = make_settings(
        tmp_path,
        db_url,
        security={"secret_key": key},
        platforms={
            "tiktok": {
                "api_base": fake.base_url,
                "client_id": fake_tiktok.CLIENT_KEY,
                "client_secret": fake_tiktok.CLIENT_SECRET,
            },
            "media_poll_seconds": 1,
            "media_poll_max_seconds": 3,
        },
        netguard={"allow_loopback": True, "allow_http": True},
        retry={"max_attempts": 10},
    )
    app = await app_factory(settings)
    try:
        posts = await _seed(app, fake, key)
        for mode in ("rate_limit", "ambiguous_after", "rate_limit_200", "spam_risk"):
            fake.fail("video_init", mode)
        fake.fail("upload", "server_error")
        fake.fail("status", "server_error")
        fake.fail("status", "not_ready", times=5)

        await run_until_idle(app)

        assert await states(app) == Counter({"published": POSTS})
        assert Counter(fake.posted_titles()) == Counter(posts.values())
        async with app.sessions() as session:
            rows = (await session.execute(select(Post.message, Post.remote_id))).all()
            progress = (await session.scalars(select(AdapterProgress))).all()
            attempts = list(await session.scalars(select(PublishAttempt)))
        by_title = {p["title"]: p for p in fake.posts}
        for message, remote_id in rows:
            assert remote_id == by_title[message]["id"]
        completed = {p["publish_id"] for p in fake.posts}
        stored = {json.loads(p.value)["publish_id"] for p in progress if not p.key.endswith(":up")}
        assert stored == completed  # the publish_id of every post was kept, and it went out
        # one orphan publish: the init whose answer was lost never got its bytes
        assert len(fake.publishes) == POSTS + 1
        orphans = [p for p in fake.publishes.values() if p["post_id"] is None]
        assert len(orphans) == 1 and orphans[0]["received"] == 0
        outcomes = Counter((a.outcome, a.error_code) for a in attempts if a.error_code)
        assert outcomes == Counter(
            {
                ("retry", "rate_limit_exceeded"): 2,
                ("retry", "spam_risk_too_many_posts"): 1,
                ("retry", "internal_error"): 2,  # upload 5xx, status 5xx: not the final call
                ("retry", "MEDIA_NOT_READY"): 1,
                ("in_doubt>reconciled_absent", "internal_error"): 1,
            }
        )
        assert app.adapters["tiktok"].limits().per_24h == 15
    finally:
        await fake.stop()


async def test_publish_cut_off_mid_upload_resumes_its_publish_id(
    tmp_path: Path, db_url: str, app_factory: Any, clock: FakeClock
) -> None:
    """The publish outlives the daemon's publish timeout while uploading (TikTok stops
    answering): in doubt; reconciliation asks the kept publish_id (not out yet); the next try
    uploads to that same publish, never a second init; one post at the fake."""
    fake = fake_tiktok.FakeTikTok(clock.now)
    await fake.start()
    key = credentials.generate_key()
    settings = make_settings(
        tmp_path,
        db_url,
        security={"secret_key": key},
        platforms={
            "tiktok": {
                "api_base": fake.base_url,
                "client_id": fake_tiktok.CLIENT_KEY,
                "client_secret": fake_tiktok.CLIENT_SECRET,
            },
            "read_timeout_seconds": 30,
        },
        dispatch={"publish_timeout_seconds": 2},
        publish={"in_doubt": "fail"},
        netguard={"allow_loopback": True, "allow_http": True},
    )
    app = await app_factory(settings)
    try:
        posts = await _seed(app, fake, key)
        first = min(posts, key=lambda p: posts[p])
        fake.fail("upload", "hang")

        await run_until_idle(app)

        assert await states(app) == Counter({"published": POSTS})
        assert Counter(fake.posted_titles()) == Counter(posts.values())
        assert len(fake.calls("video_init")) == POSTS == len(fake.publishes)
        async with app.sessions() as session:
            attempts = list(await session.scalars(select(PublishAttempt)))
        doubted = {(a.post_id, a.error_code) for a in attempts if a.outcome.startswith("in_doubt")}
        # the hung upload's post (a loaded machine may cut another slow publish too: same path)
        assert (first, "PUBLISH_TIMEOUT") in doubted
        assert {code for _, code in doubted} == {"PUBLISH_TIMEOUT"}
    finally:
        await fake.stop()
