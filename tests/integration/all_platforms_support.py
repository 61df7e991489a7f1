"""Helpers of the end-to-end test over all eight platform fakes
(tests/integration/test_all_platforms_e2e.py): start the fakes, configure postd for them,
connect one page per platform (credentials stored encrypted, as the connect flows store them),
schedule the posts, script the failures, and read back what each fake holds in one shape
(:class:`Remote`): the root posts with their text, id and the instant the platform recorded them,
and the comments under each."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from adapters import bluesky, linkedin_auth, tiktok_api, x, youtube_oauth
from daemon import config, credentials, services
from tests.conftest import make_settings
from tests.contract.conftest import PNG
from tests.contract.youtube_harness import video_bytes
from tests.fakes import graph, linkedin, tiktok, youtube
from tests.fakes import x as fake_x
from tests.fakes._server import FakePlatform
from tests.fakes.bluesky import FakeBluesky
from tests.fakes.mastodon import FakeMastodon

PLATFORMS = (
    "facebook",
    "instagram",
    "linkedin",
    "tiktok",
    "twitter",
    "youtube",
    "mastodon",
    "bluesky",
)
# Posts per platform (50 in all) and the indexes that carry media (Instagram: every post a photo;
# TikTok and YouTube: every post a video).
COUNTS = {
    "facebook": 7,
    "instagram": 7,
    "linkedin": 5,
    "tiktok": 5,
    "twitter": 7,
    "youtube": 5,
    "mastodon": 7,
    "bluesky": 7,
}
PHOTOS = {
    "facebook": {0, 3},
    "twitter": {1, 4},
    "mastodon": {2},
    "bluesky": {0, 5},
    "linkedin": {1},
}
NO_COMMENTS = {"tiktok"}  # TikTok has no comment API: validate refuses a first comment
UNCOMMENTED_INDEX = 2  # this post of each platform goes without a first comment
BRANDS = {
    "Acme": ("facebook", "instagram", "linkedin", "twitter"),
    "Beta": ("tiktok", "youtube", "mastodon", "bluesky"),
}
IG_QUOTA = 5  # the Graph fake's content_publishing_limit quota_total (posts per 24 h)
BRAND_PER_24H = 22  # each brand has more posts due in its first 24 h: some wait a day
CLUSTER = timedelta(minutes=5)  # every post is due within 5 minutes of the first


@dataclass
class Fakes:
    graph: graph.FakeGraph
    x: fake_x.FakeX
    mastodon: FakeMastodon
    bluesky: FakeBluesky
    tiktok: tiktok.FakeTikTok
    linkedin: linkedin.FakeLinkedIn
    youtube: youtube.FakeYouTube

    def all(self) -> list[FakePlatform]:
        return [
            self.graph,
            self.x,
            self.mastodon,
            self.bluesky,
            self.tiktok,
            self.linkedin,
            self.youtube,
        ]

    def of(self, platform: str) -> FakePlatform:
        return {
            "facebook": self.graph,
            "instagram": self.graph,
            "twitter": self.x,
            "mastodon": self.mastodon,
            "bluesky": self.bluesky,
            "tiktok": self.tiktok,
            "linkedin": self.linkedin,
            "youtube": self.youtube,
        }[platform]

    async def start(self) -> None:
        for fake in self.all():
            await fake.start()

    async def stop(self) -> None:
        for fake in self.all():
            if fake.port:
                await fake.stop()

    def unused_failures(self) -> dict[str, list[str]]:
        """Scripted failures no request consumed, per fake and route."""
        left = {}
        for fake in self.all():
            for route, modes in fake._failures.items():
                if modes:
                    left[f"{fake.name}.{route}"] = list(modes)
        return left

    def violations(self) -> list[str]:
        """Requests the stricter fakes found non-conforming."""
        return [
            *self.x.violations,
            *self.tiktok.violations,
            *self.linkedin.violations,
            *self.youtube.violations,
        ]


def make_fakes(now: Callable[[], datetime]) -> Fakes:
    return Fakes(
        graph=graph.FakeGraph(now, processing_polls=1, quota_total=IG_QUOTA),
        x=fake_x.FakeX(now),
        mastodon=FakeMastodon(now),
        bluesky=FakeBluesky(now),
        tiktok=tiktok.FakeTikTok(now),
        linkedin=linkedin.FakeLinkedIn(now, part_size=16),
        youtube=youtube.FakeYouTube(now),
    )


def settings_for(tmp_path: Path, db_url: str, fakes: Fakes, key: str) -> config.Settings:
    graph_base = fakes.graph.base_url + graph.PREFIX

    def oauth(api_base: str, client_id: str, secret: str) -> dict[str, str]:
        return {"api_base": api_base, "client_id": client_id, "client_secret": secret}

    return make_settings(
        tmp_path,
        db_url,
        security={"secret_key": key},
        platforms={
            "facebook": {"api_base": graph_base},
            "instagram": {"api_base": graph_base},
            "twitter": oauth(fakes.x.base_url, fake_x.CLIENT_ID, fake_x.CLIENT_SECRET),
            "bluesky": {"api_base": fakes.bluesky.base_url},
            "tiktok": oauth(fakes.tiktok.base_url, tiktok.CLIENT_KEY, tiktok.CLIENT_SECRET),
            "linkedin": oauth(
                fakes.linkedin.base_url + "/rest", linkedin.CLIENT_ID, linkedin.CLIENT_SECRET
            ),
            "youtube": oauth(fakes.youtube.base_url, youtube.CLIENT_ID, youtube.CLIENT_SECRET),
            "media_poll_seconds": 1,
        },
        netguard={"allow_loopback": True, "allow_http": True},
        retry={"max_attempts": 10, "deadline_seconds": 3 * 86400},
        guardrails={"brand_per_24h": BRAND_PER_24H},
    )


async def page_credentials(fakes: Fakes, now: datetime) -> dict[str, dict[str, str]]:
    """What each platform's connect flow stores for its page."""
    login = await bluesky.connect("alice.test", "app-pass-1234", api_base=fakes.bluesky.base_url)
    return {
        "facebook": {"access_token": graph.PAGE_TOKEN, "page_id": graph.PAGE_ID},
        "instagram": {"access_token": graph.IG_TOKEN, "ig_user_id": graph.IG_USER_ID},
        "twitter": {
            **x.token_credentials(fakes.x.issue(fakes.x.alice), now),
            "user_id": fakes.x.alice["id"],
            "username": "alice",
        },
        "mastodon": {
            "instance": fakes.mastodon.base_url,
            "access_token": "token-alice",
            "account_id": fakes.mastodon.alice["id"],
            "acct": "alice",
        },
        "bluesky": dict(login.credentials),
        "tiktok": {
            **tiktok_api.token_credentials(fakes.tiktok.issue(), now),
            "open_id": "open-alice",
        },
        "linkedin": {
            **linkedin_auth.token_credentials(fakes.linkedin.issue(fakes.linkedin.alice), now),
            "author": fakes.linkedin.alice["urn"],
            "name": fakes.linkedin.alice["name"],
        },
        "youtube": {
            **youtube_oauth.token_credentials(fakes.youtube.issue(fakes.youtube.alice), now),
            "channel_id": fakes.youtube.alice["id"],
            "channel_title": fakes.youtube.alice["title"],
        },
    }


@dataclass(frozen=True)
class Planned:
    post_id: str
    platform: str
    page_id: str
    message: str
    comment: str | None
    video: bytes | None = None


@dataclass
class Seeded:
    posts: list[Planned] = field(default_factory=list)
    pages: dict[str, str] = field(default_factory=dict)  # platform -> page id
    page_brand: dict[str, str] = field(default_factory=dict)


def _message(platform: str, i: int) -> str:
    if platform == "youtube":
        return f"Video {i} on youtube\nabout postd"  # the first line is the title
    return f"{platform} post {i} #postd"


def _media(fakes: Fakes, platform: str, i: int) -> tuple[tuple[dict[str, Any], ...], bytes | None]:
    fake = fakes.of(platform)
    if platform == "tiktok":
        clip = tiktok.make_mp4(12, 20_000 + i)
        return ({"src": fake.serve_file(f"tt{i}.mp4", clip, "video/mp4"), "type": "video"},), clip
    if platform == "youtube":
        clip = video_bytes(3000 + i)
        return ({"src": fake.serve_file(f"yt{i}.mp4", clip, "video/mp4"), "type": "video"},), clip
    if platform == "instagram" or i in PHOTOS.get(platform, ()):
        url = fake.serve_file(f"{platform}{i}.png", PNG, "image/png")
        return ({"src": url, "type": "photo"},), None
    return (), None


async def seed(app: Any, fakes: Fakes, key: str) -> Seeded:
    """Two brands over the eight pages; 50 posts due within :data:`CLUSTER` of each other,
    starting 15 minutes from now, in an interleaved order."""
    vault = credentials.Vault([key])
    now = app.clock.now()
    creds = await page_credentials(fakes, now)
    start = now + timedelta(minutes=15)
    out = Seeded()
    async with app.sessions() as session, session.begin():
        for brand_name, platforms in BRANDS.items():
            brand = await services.add_brand(session, brand_name, now)
            await session.flush()
            for platform in platforms:
                page = await services.add_page(
                    session, brand_id=brand.id, platform=platform, name=platform, now=now
                )
                await credentials.store(session, page, vault, creds[platform])
                await session.flush()
                out.pages[platform] = page.id
                out.page_brand[page.id] = brand.id
        index = 0
        for i in range(max(COUNTS.values())):
            for platform in PLATFORMS:
                if i >= COUNTS[platform]:
                    continue
                message = _message(platform, i)
                comment = None
                if platform not in NO_COMMENTS and i != UNCOMMENTED_INDEX:
                    comment = f"first comment on {platform} post {i}: more at acme.example"
                media, video = _media(fakes, platform, i)
                options = None
                if platform == "tiktok":
                    options = {"tiktok_settings": {"privacy_level": "PUBLIC_TO_EVERYONE"}}
                offset = (index * 7919 % 1000) / 1000 * CLUSTER.total_seconds()
                new = services.NewPost(
                    page_id=out.pages[platform],
                    scheduled_at=start + timedelta(seconds=offset),
                    message=message,
                    media=media,
                    first_comment=comment,
                    options=options,
                )
                post = await services.schedule_post(
                    session, new, now=now, scheduling=app.settings.scheduling,
                    check_lead=False, adapter=app.adapters[platform],
                )  # fmt: skip
                out.posts.append(
                    Planned(post.id, platform, out.pages[platform], message, comment, video)
                )
                index += 1
    return out


# --- failures ---------------------------------------------------------------------------------

# Per fake and route, the modes its next requests meet. On X, Mastodon and Bluesky a first
# comment goes through the publish route too (a reply is a post): their scripts end with the
# one failure that creates the post, so every scripted mode meets a publish, never a comment.
FAILURES: dict[str, dict[str, tuple[str, ...]]] = {
    "graph": {
        "feed": ("rate_limit", "server_error", "ambiguous_after"),  # code 4 + X-App-Usage
        "photos": ("page_rate_limit",),  # code 32 + X-Business-Use-Case-Usage
        "container": ("server_error",),  # not the final call: retried
        "media_publish": ("rate_limit", "ambiguous_after"),
    },
    "x": {"tweets": ("rate_limit", "unavailable", "ambiguous_after")},  # x-rate-limit-*
    "mastodon": {
        "statuses": ("rate_limit", "unavailable", "ambiguous_after"),  # X-RateLimit-*
        "media": ("server_error",),
    },
    "bluesky": {
        "create_record": ("rate_limit", "ambiguous_after"),  # RateLimit-* headers
        "upload_blob": ("unavailable",),
    },
    "tiktok": {
        "video_init": ("rate_limit", "ambiguous_after"),  # TikTok envelope rate_limit_exceeded
        # before the init: a 5xx after it (upload, status) resumes the publish in a later try,
        # which trips the published_at bug test_tiktok_published_at_is_when_it_went_out shows
        "creator_info": ("server_error",),
    },
    "linkedin": {
        "posts": ("rate_limit_retry", "server_error", "ambiguous_after"),  # Retry-After: 120
        "images": ("unavailable",),
    },
    "youtube": {
        "start": ("rate_limit", "server_error"),  # 429 + Retry-After: 30
        # the final chunk is taken (the video created), then 503; the status query fails too
        "chunk": ("ambiguous_after", "server_error"),
    },
}


def inject_failures(fakes: Fakes) -> None:
    by_name = {fake.name: fake for fake in fakes.all()}
    for name, routes in FAILURES.items():
        for route, modes in routes.items():
            for mode in modes:
                by_name[name].fail(route, mode)


# --- what the fakes hold ----------------------------------------------------------------------


@dataclass(frozen=True)
class Remote:
    """A root post as its platform holds it."""

    text: str
    remote_id: str
    published_at: datetime
    comments: tuple[str, ...]


@dataclass(frozen=True)
class Record:
    """A publish instant on a page, in the shape :func:`tests.support.audit_platform` takes."""

    page_id: str
    published_at: datetime


def _iso(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _graph(fakes: Fakes, platform: str) -> list[Remote]:
    fake = fakes.graph
    kind, text, comment = (
        ("fb_post", "message", "fb_comment")
        if platform == "facebook"
        else ("ig_media", "caption", "ig_comment")
    )
    return [
        Remote(
            n[text],
            n["id"],
            n["_at"],
            tuple(c["message"] for c in fake.of_kind(comment) if c["_root"] == n["id"]),
        )
        for n in fake.of_kind(kind)
    ]


def _x(fakes: Fakes) -> list[Remote]:
    tweets = fakes.x.tweets
    return [
        Remote(
            t["_text"],
            t["id"],
            _iso(t["created_at"]),
            tuple(r["_text"] for r in tweets if r["_reply_to"] == t["id"]),
        )
        for t in tweets
        if t["_reply_to"] is None
    ]


def _mastodon(fakes: Fakes) -> list[Remote]:
    statuses = fakes.mastodon.statuses
    return [
        Remote(
            s["_text"],
            s["id"],
            _iso(s["created_at"]),
            tuple(r["_text"] for r in statuses if r["in_reply_to_id"] == s["id"]),
        )
        for s in statuses
        if s["in_reply_to_id"] is None
    ]


def _bluesky(fakes: Fakes) -> list[Remote]:
    records = fakes.bluesky.records

    def parent(r: dict[str, Any]) -> str | None:
        reply = r["value"].get("reply")
        return None if reply is None else str(reply["parent"]["uri"])

    return [
        Remote(
            r["value"]["text"],
            r["uri"],
            _iso(r["value"]["createdAt"]),
            tuple(c["value"]["text"] for c in records if parent(c) == r["uri"]),
        )
        for r in records
        if parent(r) is None
    ]


def _tiktok(fakes: Fakes) -> list[Remote]:
    return [
        Remote(p["title"], p["id"], datetime.fromtimestamp(p["create_time"], UTC), ())
        for p in fakes.tiktok.posts
    ]


def _linkedin(fakes: Fakes) -> list[Remote]:
    fake = fakes.linkedin
    return [
        Remote(
            linkedin.rendered(p["commentary"]),
            p["id"],
            datetime.fromtimestamp(p["createdAt"] / 1000, UTC),
            tuple(
                c["message"]["text"]
                for c in fake.comments
                if c["object"] == p["id"] and "parentComment" not in c
            ),
        )
        for p in fake.posts
    ]


def _youtube(fakes: Fakes) -> list[Remote]:
    fake = fakes.youtube
    return [
        Remote(
            v["snippet"]["description"],
            v["id"],
            _iso(v["snippet"]["publishedAt"]),
            tuple(
                c["snippet"]["textOriginal"]
                for c in fake.comments
                if c["snippet"]["videoId"] == v["id"] and "parentId" not in c["snippet"]
            ),
        )
        for v in fake.videos
    ]


def held(fakes: Fakes, platform: str) -> list[Remote]:
    """The root posts ``platform``'s fake holds (comments and replies are not roots)."""
    if platform in ("facebook", "instagram"):
        return _graph(fakes, platform)
    readers: dict[str, Callable[[Fakes], list[Remote]]] = {
        "twitter": _x,
        "mastodon": _mastodon,
        "bluesky": _bluesky,
        "tiktok": _tiktok,
        "linkedin": _linkedin,
        "youtube": _youtube,
    }
    return readers[platform](fakes)


def youtube_bytes(fakes: Fakes, remote_id: str) -> bytes:
    video = next(v for v in fakes.youtube.videos if v["id"] == remote_id)
    data: bytes = video["_bytes"]
    return data


def max_in_window(instants: list[datetime], span: timedelta) -> int:
    """The most instants in any half-open window ``(t - span, t]``."""
    ordered = sorted(instants)
    return max(
        (sum(1 for s in ordered if t - span < s <= t) for t in ordered),
        default=0,
    )
