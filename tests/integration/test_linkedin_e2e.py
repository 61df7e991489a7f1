"""End to end, in process, on SQLite and PostgreSQL: the daemon publishes scheduled LinkedIn
posts (text, an image, a video) to the LinkedIn fake through a daily throttle (429 without
Retry-After: deferred to midnight UTC), a throttle with Retry-After, a 503 on the image upload,
5xx on ``POST /rest/posts`` before and after LinkedIn recorded the post, and a video that is
still processing; every post ends published exactly once at the fake, and the uploaded media
URNs live in the adapter_progress table."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from adapters import linkedin_auth
from daemon import credentials, services
from daemon.clock import FakeClock
from daemon.store.models import AdapterProgress, Post, PublishAttempt
from tests.conftest import make_settings
from tests.contract.conftest import PNG
from tests.fakes import linkedin as fake_li
from tests.support import run_until_idle, states

MP4 = b"\x00\x00\x00\x18ftypmp42" + bytes(range(40))
KINDS = ("text", "text", "photo", "video", "text")


async def _seed(app: Any, fake: fake_li.FakeLinkedIn, key: str) -> dict[str, str]:
    """One LinkedIn page (tokens as the connect flow stores them) and five posts 30 minutes
    apart; returns post id -> message."""
    vault = credentials.Vault([key])
    creds = {
        **linkedin_auth.token_credentials(fake.issue(fake.alice), app.clock.now()),
        "author": fake.alice["urn"],
        "name": fake.alice["name"],
    }
    media = {
        "photo": fake.serve_file("cat.png", PNG, "image/png"),
        "video": fake.serve_file("clip.mp4", MP4, "video/mp4"),
    }
    now, out = app.clock.now(), {}
    async with app.sessions() as session, session.begin():
        brand = await services.add_brand(session, "Acme", now)
        await session.flush()
        page = await services.add_page(
            session, brand_id=brand.id, platform="linkedin", name="LinkedIn", now=now
        )
        await credentials.store(session, page, vault, creds)
        await session.flush()
        for i, kind in enumerate(KINDS):
            new = services.NewPost(
                page_id=page.id,
                scheduled_at=now + timedelta(minutes=15 + 30 * i),
                message=f"LinkedIn post {i} (#{kind})",
                media=({"src": media[kind], "type": kind},) if kind in media else (),
            )
            post = await services.schedule_post(
                session, new, now=now, scheduling=app.settings.scheduling,
                check_lead=False, adapter=app.adapters["linkedin"],
            )  # fmt: skip
            out[post.id] = new.message
    return out


async def test_each_post_publishes_exactly_once_through_linkedin_failures(
    tmp_path: Path, db_url: str, app_factory: Any, clock: FakeClock
) -> None:
    """Five posts through 429s, a 503, ambiguous and plain 5xx on the publish call and a slow
    video: all published, each once at the fake; the daily throttle waited for midnight UTC."""
    fake = fake_li.FakeLinkedIn(clock.now, processing_polls=2, part_size=16)
    await fake.start()
    key = credentials.generate_key()
    settings = make_settings(
        tmp_path,
        db_url,
        security={"secret_key": key},
        platforms={
            "linkedin": {
                "api_base": fake.base_url + "/rest",
                "client_id": fake_li.CLIENT_ID,
                "client_secret": fake_li.CLIENT_SECRET,
            },
            "media_poll_seconds": 1,
        },
        netguard={"allow_loopback": True, "allow_http": True},
        retry={"max_attempts": 10, "deadline_seconds": 2 * 86400},
    )
    app = await app_factory(settings)
    try:
        posts = await _seed(app, fake, key)
        for mode in ("rate_limit", "ambiguous_after", "server_error", "rate_limit_retry"):
            fake.fail("posts", mode)
        fake.fail("images", "unavailable")

        await run_until_idle(app)

        assert await states(app) == Counter({"published": 5})
        async with app.sessions() as session:
            rows = (await session.execute(select(Post.id, Post.remote_id))).all()
            progress = (await session.scalars(select(AdapterProgress))).all()
            attempts = list(await session.scalars(select(PublishAttempt)))
        for post_id, remote_id in rows:
            at_fake = fake.by_text(posts[post_id])
            assert len(at_fake) == 1, f"{posts[post_id]!r} reached LinkedIn {len(at_fake)} times"
            assert remote_id == at_fake[0]["id"]
        assert len(fake.posts) == 5 and fake.violations == []
        first = fake.by_text("LinkedIn post 0 (#text)")[0]
        midnight = datetime(2026, 1, 6, tzinfo=UTC)
        assert first["createdAt"] >= midnight.timestamp() * 1000  # waited for the daily reset
        assets = {p.value for p in progress if p.key.startswith("li_asset")}
        assert assets == set(fake.images) | set(fake.videos)
        assert len(fake.images) == 1 and len(fake.videos) == 1  # uploaded once each
        outcomes = Counter((a.outcome, a.error_code) for a in attempts if a.error_code)
        assert outcomes == Counter(
            {
                ("retry", "LINKEDIN_101"): 1,  # daily throttle: until midnight UTC
                ("retry", "RATE_LIMITED"): 1,  # Retry-After: 120
                ("retry", "UNAVAILABLE"): 1,  # image initializeUpload 503
                ("in_doubt>reconciled_published", "HTTP_500"): 1,  # recorded, then 500
                ("in_doubt>reconciled_absent", "HTTP_500"): 1,  # 500, nothing recorded
            }
        )
    finally:
        await fake.stop()
