"""Connecting a TikTok account through Login Kit for web (daemon/oauth.py): the authorization URL
(``client_key``, comma-separated scopes, no PKCE), the fake's redirect back to the daemon's
callback, the token exchange, the page stored encrypted, and the token refreshed before it
expires. The daemon's HTTP app is driven in process; TikTok is the loopback fake."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from click.testing import CliRunner

from adapters import base, tiktok_api
from daemon import credentials, oauth
from daemon.cli import main
from daemon.clock import FakeClock
from daemon.store.models import Page
from tests.contract import connect_support as support
from tests.contract.connect_support import connect_app
from tests.fakes import tiktok as fake_tiktok

PUBLIC = support.PUBLIC


@pytest.fixture
async def fake(clock: FakeClock) -> AsyncIterator[fake_tiktok.FakeTikTok]:
    made = fake_tiktok.FakeTikTok(clock.now)
    await made.start()
    yield made
    await made.stop()
    assert made.violations == []


@pytest.fixture
async def app(tmp_path: Path, clock: FakeClock, fake: fake_tiktok.FakeTikTok) -> AsyncIterator[Any]:
    conf = {
        "api_base": fake.base_url,
        "client_id": fake_tiktok.CLIENT_KEY,
        "client_secret": fake_tiktok.CLIENT_SECRET,
    }
    async with connect_app(tmp_path, clock, {"tiktok": conf}) as made:
        yield made


_client = support.client
_database_bytes = support.database_bytes
_pages = support.pages


async def _connect(app: Any) -> tuple[Page, str]:
    """The whole flow: URL -> the fake consents and redirects -> the daemon's callback."""
    url = oauth.authorization_url(app.settings, "tiktok", app.clock.now(), brand_id=app.brand_id)
    async with httpx.AsyncClient() as browser:
        consent = await browser.get(url)
    assert consent.status_code == 302, consent.text
    back = httpx.URL(consent.headers["location"])
    async with _client(app) as client:
        answer = await client.get(back.path, params=dict(back.params))
    assert answer.status_code == 200, answer.text
    (page,) = await _pages(app)
    assert page.id in answer.text
    return page, str(back.params["code"])


async def test_authorization_url_uses_client_key_and_comma_scopes(
    app: Any, fake: fake_tiktok.FakeTikTok
) -> None:
    """<api_base>/v2/auth/authorize/ with client_key (not client_id), the four scopes joined by
    commas, the callback, an encrypted state and no PKCE (TikTok's web flow has none)."""
    url = oauth.authorization_url(app.settings, "tiktok", app.clock.now(), brand_id=app.brand_id)

    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == fake.base_url + "/v2/auth/authorize/"
    assert query["client_key"] == fake_tiktok.CLIENT_KEY and "client_id" not in query
    assert query["scope"] == "user.info.basic,video.publish,video.upload,video.list"
    assert (query["response_type"], query["redirect_uri"]) == (
        "code",
        PUBLIC + "/oauth/callback/tiktok",
    )
    assert "code_challenge" not in query and "code_challenge_method" not in query
    vault = credentials.Vault([app.settings.security.secret_key])
    state = oauth.read_state(vault, query["state"], "tiktok", app.clock.now())
    assert state.brand_id == app.brand_id and app.brand_id not in query["state"]


def test_production_authorize_url_is_on_www_tiktok_com() -> None:
    """Against the real API the user is sent to www.tiktok.com/v2/auth/authorize/."""
    assert tiktok_api.authorize_url("https://open.tiktokapis.com") == (
        "https://www.tiktok.com/v2/auth/authorize/"
    )


async def test_callback_exchanges_the_code_and_stores_the_page_encrypted(
    app: Any, fake: fake_tiktok.FakeTikTok, tmp_path: Path
) -> None:
    """The code is exchanged (form: client_key, client_secret, code, grant_type, redirect_uri;
    no verifier), /v2/user/info/ names the page; no token is readable in the SQLite file."""
    page, code = await _connect(app)

    assert (page.platform, page.username, page.external_id) == ("tiktok", "Alice", "open-alice")
    (exchange,) = fake.calls("token")
    assert {k: v[0] for k, v in parse_qs(exchange.body.decode()).items()} == {
        "client_key": fake_tiktok.CLIENT_KEY,
        "client_secret": fake_tiktok.CLIENT_SECRET,
        "code": code,
        "grant_type": "authorization_code",
        "redirect_uri": PUBLIC + "/oauth/callback/tiktok",
    }
    (info,) = fake.calls("user_info")
    assert info.param("fields") == "open_id,union_id,avatar_url,display_name"
    creds = await credentials.PageCredentials(app.engine, app.settings).load(page.id)
    assert creds["access_token"] in fake.tokens and creds["refresh_token"] in fake.refresh_tokens
    raw = _database_bytes(tmp_path)
    assert page.id.encode() in raw
    for secret in (creds["access_token"], creds["refresh_token"]):
        assert secret.encode() not in raw


async def test_token_is_refreshed_before_expiry_and_stored_encrypted(
    app: Any, fake: fake_tiktok.FakeTikTok, tmp_path: Path
) -> None:
    """Five minutes before the access token expires, the daemon's adapter refreshes first; the
    rotated pair is stored (encrypted) and the old refresh token is spent."""
    page, _code = await _connect(app)
    store = credentials.PageCredentials(app.engine, app.settings)
    old = await store.load(page.id)
    app.clock.advance(float(old["expires_at"]) - app.clock.now().timestamp() - 300)
    video = base.MediaItem("https://cdn.example/b.mp4", "video")
    post = base.PostPayload("p", page.id, "tiktok", "Hi", (video,))

    assert await app.adapters["tiktok"].find_published(post, app.clock.now()) is None

    assert [r.route for r in fake.requests][-2:] == ["token", "video_list"]
    new = await store.load(page.id)
    assert new["access_token"] != old["access_token"]
    assert new["refresh_token"] in fake.refresh_tokens
    assert old["refresh_token"] not in fake.refresh_tokens
    raw = _database_bytes(tmp_path)
    for secret in (new["access_token"], new["refresh_token"]):
        assert secret.encode() not in raw


async def test_refused_code_stores_nothing(app: Any, fake: fake_tiktok.FakeTikTok) -> None:
    """TikTok refusing the code (invalid_grant) answers 502 naming it; no page is stored."""
    url = oauth.authorization_url(app.settings, "tiktok", app.clock.now(), brand_id=app.brand_id)
    async with httpx.AsyncClient() as browser:
        back = httpx.URL((await browser.get(url)).headers["location"])
    fake.fail("token", "invalid_grant")

    async with _client(app) as client:
        answer = await client.get(back.path, params=dict(back.params))

    assert answer.status_code == 502 and "REFRESH_REFUSED" in answer.text
    assert await _pages(app) == []


async def test_cli_prints_the_authorization_url(app: Any, tmp_path: Path) -> None:
    """postd page connect tiktok --brand ID prints the URL: client_key, a state that opens."""
    settings = app.settings
    toml = tmp_path / "postd.toml"
    toml.write_text(
        f'[database]\nurl = "{settings.database.url}"\n'
        f'[server]\npublic_url = "{PUBLIC}"\n'
        f'[security]\nsecret_key = "{settings.security.secret_key}"\n'
        f'[platforms.tiktok]\napi_base = "{settings.platforms.tiktok.api_base}"\n'
        f'client_id = "{fake_tiktok.CLIENT_KEY}"\n'
    )

    result = CliRunner().invoke(
        main, ["--config", str(toml), "page", "connect", "tiktok", "--brand", app.brand_id]
    )

    assert result.exit_code == 0, result.output
    query = parse_qs(urlsplit(result.output.strip()).query)
    assert query["client_key"] == [fake_tiktok.CLIENT_KEY]
    vault = credentials.Vault([settings.security.secret_key])
    state = oauth.read_state(vault, query["state"][0], "tiktok", app.clock.now())
    assert state.brand_id == app.brand_id and state.page_id == ""
