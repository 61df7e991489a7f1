"""Connecting a YouTube channel through Google OAuth 2.0 with PKCE (daemon/oauth.py): the
authorization URL (offline access, consent, S256), the fake consent's redirect to the daemon's
callback, the code exchange, the channel read, the page stored encrypted, and the stored token
refreshed before it expires. The daemon's HTTP app is driven in-process; Google is the fake."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import func, select

from adapters import base, youtube_oauth
from daemon import credentials, oauth
from daemon.clock import FakeClock
from daemon.store.models import Page
from tests.contract import connect_support as support
from tests.contract.connect_support import connect_app
from tests.fakes import youtube as fake_yt

PUBLIC = support.PUBLIC
CALLBACK = PUBLIC + "/oauth/callback/youtube"


@pytest.fixture
async def fake(clock: FakeClock) -> AsyncIterator[fake_yt.FakeYouTube]:
    made = fake_yt.FakeYouTube(clock.now)
    await made.start()
    yield made
    await made.stop()
    assert made.violations == []


@pytest.fixture
async def app(tmp_path: Path, clock: FakeClock, fake: fake_yt.FakeYouTube) -> AsyncIterator[Any]:
    conf = {
        "api_base": fake.base_url,
        "client_id": fake_yt.CLIENT_ID,
        "client_secret": fake_yt.CLIENT_SECRET,
    }
    async with connect_app(tmp_path, clock, {"youtube": conf}) as made:
        yield made


_client = support.client
_database_bytes = support.database_bytes
_pages = support.pages
_consent = support.consent


async def _connect(app: Any) -> Page:
    url = oauth.authorization_url(app.settings, "youtube", app.clock.now(), brand_id=app.brand_id)
    back = await _consent(url)
    async with _client(app) as client:
        answer = await client.get(back.path, params=dict(back.params))
    assert answer.status_code == 200, answer.text
    (page,) = await _pages(app)
    assert page.id in answer.text
    return page


async def test_authorization_url_asks_offline_access_with_pkce(
    app: Any, fake: fake_yt.FakeYouTube
) -> None:
    """Google's consent page with code flow, client id, callback, both YouTube scopes, offline
    access with consent (so a refresh token comes back), an opaque state and S256."""
    url = oauth.authorization_url(app.settings, "youtube", app.clock.now(), brand_id=app.brand_id)

    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == fake.base_url + "/o/oauth2/v2/auth"
    assert (query["response_type"], query["client_id"]) == ("code", fake_yt.CLIENT_ID)
    assert query["redirect_uri"] == CALLBACK
    assert set(query["scope"].split()) == set(fake_yt.SCOPES)
    assert (query["access_type"], query["prompt"]) == ("offline", "consent")
    assert query["include_granted_scopes"] == "true"
    assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
    assert app.brand_id not in query["state"]  # encrypted, not merely signed


def test_production_endpoints_are_googles() -> None:
    """Against the real API the consent page and token endpoint are Google's own hosts."""
    api = "https://www.googleapis.com"
    assert youtube_oauth.authorize_url(api) == "https://accounts.google.com/o/oauth2/v2/auth"
    assert youtube_oauth.token_url(api) == "https://oauth2.googleapis.com/token"


async def test_callback_exchanges_the_code_and_stores_the_channel_encrypted(
    app: Any, fake: fake_yt.FakeYouTube, tmp_path: Path
) -> None:
    """Consent -> callback: the code is exchanged with the matching verifier and the client's
    credentials, channels?mine=true names the page, the tokens are stored encrypted."""
    url = oauth.authorization_url(app.settings, "youtube", app.clock.now(), brand_id=app.brand_id)
    challenge = parse_qs(urlsplit(url).query)["code_challenge"][0]
    page = await _connect_from(app, url)

    assert (page.platform, page.username, page.external_id) == (
        "youtube",
        "alice",
        fake.alice["id"],
    )
    (exchange,) = fake.calls("token")
    form = {k: v[0] for k, v in parse_qs(exchange.body.decode()).items()}
    assert form["grant_type"] == "authorization_code"
    assert (form["client_id"], form["client_secret"]) == (fake_yt.CLIENT_ID, fake_yt.CLIENT_SECRET)
    digest = hashlib.sha256(form["code_verifier"].encode()).digest()
    assert base64.urlsafe_b64encode(digest).rstrip(b"=").decode() == challenge
    assert form["redirect_uri"] == CALLBACK
    (channels,) = fake.calls("channels")
    assert channels.query == {"part": ["snippet"], "mine": ["true"]}
    creds = await credentials.PageCredentials(app.engine, app.settings).load(page.id)
    assert creds["refresh_token"] in fake.refresh_tokens and creds["access_token"] in fake.tokens
    assert creds["channel_id"] == fake.alice["id"]
    raw = _database_bytes(tmp_path)
    assert page.id.encode() in raw  # the page row is on disk, so the check below can see it
    for secret in (creds["access_token"], creds["refresh_token"]):
        assert secret.encode() not in raw


async def _connect_from(app: Any, url: str) -> Page:
    back = await _consent(url)
    async with _client(app) as client:
        answer = await client.get(back.path, params=dict(back.params))
    assert answer.status_code == 200, answer.text
    (page,) = await _pages(app)
    return page


async def test_the_stored_token_is_refreshed_before_it_expires(
    app: Any, fake: fake_yt.FakeYouTube
) -> None:
    """Four minutes before the hour is up, the daemon's adapter refreshes first, stores the new
    access token (encrypted) and keeps the refresh token; Google's hour is honoured."""
    page = await _connect(app)
    store = credentials.PageCredentials(app.engine, app.settings)
    before = dict(await store.load(page.id))
    app.clock.advance(float(before["expires_at"]) - app.clock.now().timestamp() - 240)
    adapter = app.adapters["youtube"]
    post = base.PostPayload("p", page.id, "youtube", "x", page_external_id=page.external_id)

    assert await adapter.find_published(post, app.clock.now()) is None

    assert [r.route for r in fake.requests[-3:]] == ["token", "channels", "playlist_items"]
    after = dict(await store.load(page.id))
    assert after["access_token"] != before["access_token"]
    assert after["refresh_token"] == before["refresh_token"]
    assert int(after["expires_at"]) == int(app.clock.now().timestamp()) + 3599


async def test_without_offline_access_no_page_is_stored(
    app: Any, fake: fake_yt.FakeYouTube
) -> None:
    """A grant without a refresh token (no access_type=offline) would die within the hour: the
    connect fails and stores nothing."""
    url = oauth.authorization_url(app.settings, "youtube", app.clock.now(), brand_id=app.brand_id)
    back = await _consent(url.replace("access_type=offline", "access_type=online"))

    async with _client(app) as client:
        answer = await client.get(back.path, params=dict(back.params))

    assert answer.status_code == 502 and "NO_REFRESH_TOKEN" in answer.text
    assert await _pages(app) == []


async def test_token_outage_during_callback_stores_nothing(
    app: Any, fake: fake_yt.FakeYouTube
) -> None:
    """A token endpoint outage during the callback answers 502 and stores nothing."""
    url = oauth.authorization_url(app.settings, "youtube", app.clock.now(), brand_id=app.brand_id)
    back = await _consent(url)
    fake.fail("token", "unavailable")

    async with _client(app) as client:
        answer = await client.get(back.path, params=dict(back.params))

    assert answer.status_code == 502
    async with app.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Page)) == 0
