"""End to end, in process, on SQLite and PostgreSQL: the daemon publishes scheduled video posts to
the YouTube fake through a used-up daily quota, throttles, a lost final-chunk answer (asked of
the session, and once only found by reconciliation), a dropped chunk and an expired session:
every post ends published exactly once at the fake, its bytes uploaded into one video."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from adapters import youtube_oauth
from daemon import credentials, services
from daemon.clock import FakeClock
from daemon.store.models import AdapterProgress, Post, PublishAttempt
from tests.conftest import make_settings
from tests.contract.youtube_harness import video_bytes
from tests.fakes import youtube as fake_yt
from tests.support import run_until_idle, states

POSTS = 5
START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)  # 01:00 PST
RESET = datetime(2026, 1, 6, 8, 0, tzinfo=UTC)  # the next midnight Pacific time


async def _seed(app: Any, fake: fake_yt.FakeYouTube, key: str) -> list[str]:
    """One channel (tokens as the connect flow stores them), five video posts; their ids."""
    vault = credentials.Vault([key])
    creds = {
        **youtube_oauth.token_credentials(fake.issue(fake.alice), app.clock.now()),
        "channel_id": fake.alice["id"],
        "channel_title": fake.alice["title"],
    }
    now, ids = app.clock.now(), []
    async with app.sessions() as session, session.begin():
        brand = await services.add_brand(session, "Acme", now)
        await session.flush()
        page = await services.add_page(
            session, brand_id=brand.id, platform="youtube", name="YT", now=now
        )
        await credentials.store(session, page, vault, creds)
        await session.flush()
        for i in range(POSTS):
            clip = fake.serve_file(f"clip{i}.mp4", video_bytes(3000 + i), "video/mp4")
            new = services.NewPost(
                page_id=page.id,
                scheduled_at=now + timedelta(minutes=15, seconds=90 * i),
                message=f"Video {i}\nabout postd",
                media=({"src": clip, "type": "video"},),
            )
            post = await services.schedule_post(
                session, new, now=now, scheduling=app.settings.scheduling,
                check_lead=False, adapter=app.adapters["youtube"],
            )  # fmt: skip
            ids.append(post.id)
    return ids


async def test_each_video_publishes_exactly_once_through_failures(
    tmp_path: Path, db_url: str, app_factory: Any
) -> None:
    """Five videos through quotaExceeded (waits for Pacific midnight), a 429, a final chunk
    answered 503 after creating the video, one whose status query failed too (in doubt, then
    found), a chunk lost to a 500 (resumed) and an expired session (restarted): all published,
    each exactly once at the fake, no upload session left behind."""
    clock = FakeClock(START)
    fake = fake_yt.FakeYouTube(clock.now)
    await fake.start()
    key = credentials.generate_key()
    settings = make_settings(
        tmp_path,
        db_url,
        security={"secret_key": key},
        platforms={
            "youtube": {
                "api_base": fake.base_url,
                "client_id": fake_yt.CLIENT_ID,
                "client_secret": fake_yt.CLIENT_SECRET,
            },
            "read_timeout_seconds": 1,
        },
        netguard={"allow_loopback": True, "allow_http": True},
        retry={"max_attempts": 10, "deadline_seconds": 2 * 86400},
        dispatch={"concurrency": 1},  # one upload at a time: the scripted failures meet in order
    )
    app = await app_factory(settings, clock=clock)
    try:
        post_ids = await _seed(app, fake, key)
        for mode in ("quota", "rate_limit"):
            fake.fail("start", mode)
        # per video: the final chunk's 503 after creating it, then the status query finds it;
        # a 503 after creating it and a failing status query (in doubt); a 500 that lost the
        # chunk; an expired session
        for mode in ("ambiguous_after", "ok", "ambiguous_after", "server_error", "server_error"):
            fake.fail("chunk", mode)
        fake.fail("chunk", "ok")  # the status query after the lost chunk: 308
        fake.fail("chunk", "expired")

        await run_until_idle(app)

        assert await states(app) == Counter({"published": POSTS})
        async with app.sessions() as session:
            rows = (await session.execute(select(Post.id, Post.message, Post.remote_id))).all()
            progress = list(await session.scalars(select(AdapterProgress)))
            attempts = list(await session.scalars(select(PublishAttempt)))
        assert sorted(fake.descriptions()) == sorted(m for _, m, _ in rows)
        videos = {v["snippet"]["description"]: v for v in fake.videos}
        for post_id, message, remote_id in rows:
            assert remote_id == videos[message]["id"]
            assert videos[message]["_bytes"] == video_bytes(3000 + post_ids.index(post_id))
        assert len(fake.videos) == POSTS
        outcomes = Counter((a.outcome, a.error_code) for a in attempts if a.error_code)
        assert outcomes == Counter(
            {
                ("retry", "quotaExceeded"): POSTS,  # one answer; the others wait unasked
                ("retry", "rateLimitExceeded"): 1,
                ("in_doubt>reconciled_published", "backendError"): 1,
                ("retry", "UPLOAD_INCOMPLETE"): 1,  # the lost chunk, resumed next try
            }
        )
        published_at = [a.started_at for a in attempts if a.outcome == "published"]
        assert min(when.replace(tzinfo=UTC) for when in published_at) >= RESET
        # 1 quotaExceeded + 1 throttled + 5 uploads + 1 restart after the expired session
        assert len(fake.calls("start")) == POSTS + 3 and len(fake.sessions) == POSTS  # one expired
        in_doubt = {a.post_id for a in attempts if a.outcome.startswith("in_doubt")}
        left = {p.post_id for p in progress if not p.key.startswith("yt_video")}
        assert left == in_doubt  # the one settled by reconciliation keeps its session rows
    finally:
        await fake.stop()
