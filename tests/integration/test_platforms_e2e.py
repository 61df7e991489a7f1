"""End to end, in process: the daemon publishes to the Mastodon and Bluesky fakes through
injected 429s, 5xx, ambiguous answers and an expired session; every post ends published exactly
once at its fake, and the attempt log explains every retry."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from adapters import bluesky
from daemon import credentials, services
from daemon.clock import FakeClock
from daemon.store.models import Post, PublishAttempt
from tests.conftest import make_settings
from tests.contract.conftest import PNG
from tests.fakes.bluesky import FakeBluesky
from tests.fakes.mastodon import FakeMastodon
from tests.support import run_until_idle, states

POSTS_PER_PAGE = 5


async def _seed(app: Any, masto: FakeMastodon, sky: FakeBluesky, key: str) -> dict[str, str]:
    """Two connected pages per platform, five posts each (two with an image per platform);
    returns post id -> platform."""
    vault = credentials.Vault([key])
    bob = masto.add_account("token-bob", "bob", "Bob")
    sky.add_account("bob.test", "bob-pass")
    logins = [
        await bluesky.connect(handle, pw, api_base=sky.base_url)
        for handle, pw in (("alice.test", "app-pass-1234"), ("bob.test", "bob-pass"))
    ]
    connected = {
        "mastodon": [
            {"instance": masto.base_url, "access_token": "token-alice",
             "account_id": masto.alice["id"], "acct": "alice"},
            {"instance": masto.base_url, "access_token": "token-bob",
             "account_id": bob["id"], "acct": "bob"},
        ],
        "bluesky": [dict(login.credentials) for login in logins],
    }  # fmt: skip
    images = {
        "mastodon": masto.serve_file("m.png", PNG, "image/png"),
        "bluesky": sky.serve_file("b.png", PNG, "image/png"),
    }
    now, out = app.clock.now(), {}
    async with app.sessions() as session, session.begin():
        brand = await services.add_brand(session, "Acme", now)
        await session.flush()
        for platform, creds in connected.items():
            for n, page_creds in enumerate(creds):
                page = await services.add_page(
                    session, brand_id=brand.id, platform=platform, name=f"{platform} {n}", now=now
                )
                await credentials.store(session, page, vault, page_creds)
                await session.flush()
                for i in range(POSTS_PER_PAGE):
                    media = ({"src": images[platform], "type": "photo"},) if i == n else ()
                    new = services.NewPost(
                        page_id=page.id,
                        scheduled_at=now + timedelta(minutes=15, seconds=90 * i),
                        message=f"{platform} page {n} post {i} #postd",
                        media=media,
                    )
                    post = await services.schedule_post(
                        session, new, now=now, scheduling=app.settings.scheduling,
                        check_lead=False, adapter=app.adapters[platform],
                    )  # fmt: skip
                    out[post.id] = platform
    return out


async def _attempts(app: Any) -> list[PublishAttempt]:
    async with app.sessions() as session:
        return list(await session.scalars(select(PublishAttempt).order_by(PublishAttempt.id)))


async def test_each_post_publishes_exactly_once_through_platform_failures(
    tmp_path: Path, db_url: str, app_factory: Any, clock: FakeClock
) -> None:
    """20 posts on 4 pages, through 429s, 503s, ambiguous 5xx (before and after the platform
    recorded the post), a failed upload, media processing and an expired session: all published,
    each once at its fake, every retry explained by an attempt row."""
    masto, sky = FakeMastodon(clock.now, processing_polls=2), FakeBluesky(clock.now)
    await masto.start()
    await sky.start()
    key = credentials.generate_key()
    settings = make_settings(
        tmp_path,
        db_url,
        security={"secret_key": key},
        platforms={"bluesky": {"api_base": sky.base_url}, "media_poll_seconds": 1},
        netguard={"allow_loopback": True, "allow_http": True},
        retry={"max_attempts": 10},
    )
    app = await app_factory(settings)
    try:
        posts = await _seed(app, masto, sky, key)
        for mode in ("rate_limit", "rate_limit", "unavailable", "ambiguous_after", "server_error"):
            masto.fail("statuses", mode)
        for mode in ("server_error", "media_not_ready"):
            masto.fail("media", mode)
        for mode in ("expired_token", "rate_limit", "ambiguous_after", "server_error"):
            sky.fail("create_record", mode)
        sky.fail("upload_blob", "unavailable")

        await run_until_idle(app)

        assert await states(app) == Counter({"published": 20})
        async with app.sessions() as session:
            rows = (await session.execute(select(Post.id, Post.message, Post.remote_id))).all()
        for post_id, message, remote_id in rows:
            fake = masto if posts[post_id] == "mastodon" else sky
            at_fake = fake.by_text(message)
            assert len(at_fake) == 1, f"{message!r} reached its platform {len(at_fake)} times"
            assert remote_id == at_fake[0].get("id", at_fake[0].get("uri"))
        attempts = await _attempts(app)
        retries = Counter((a.error_code, a.http_status) for a in attempts if a.outcome == "retry")
        assert retries == Counter(
            {
                ("RATE_LIMITED", 429): 2,  # Mastodon 429s
                ("UNAVAILABLE", 503): 1,  # Mastodon 503
                ("HTTP_500", 500): 1,  # Mastodon media upload 500: not the final call
                ("RateLimitExceeded", 429): 1,  # Bluesky 429
                ("InternalServerError", 503): 1,  # Bluesky uploadBlob 503
            }
        )
        ambiguous = [a for a in attempts if a.error_class == "ambiguous"]
        in_doubt = Counter((a.outcome, a.error_code) for a in ambiguous)
        assert in_doubt == Counter(
            {
                ("in_doubt>reconciled_published", "HTTP_500"): 1,  # recorded, then 500
                ("in_doubt>reconciled_published", "UpstreamFailure"): 1,  # recorded, then 502
                ("in_doubt>reconciled_absent", "HTTP_500"): 1,  # 500, nothing recorded
                ("in_doubt>reconciled_absent", "InternalServerError"): 1,
            }
        )
        assert all(a.error_class is None for a in attempts if a.outcome == "published")
        assert len(sky.calls("refresh_session")) == 1
        assert len(sky.calls("create_session")) == 2  # the two connects; never per post
        assert len(masto.calls("media_status")) == 3
    finally:
        await masto.stop()
        await sky.stop()
