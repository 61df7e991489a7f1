"""Connecting an X page through OAuth 2.0 with PKCE (daemon/oauth.py): the authorization URL, the
fake authorization server's redirect back to the daemon's callback, the token exchange, the
encrypted page, and refused states. The daemon's HTTP app is driven in-process; X is the
loopback fake."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from daemon import credentials, oauth
from daemon.cli import main
from daemon.clock import FakeClock
from daemon.store.models import Page
from tests.contract import connect_support as support
from tests.contract.connect_support import connect_app
from tests.fakes import x as fake_x

PUBLIC = support.PUBLIC


@pytest.fixture
async def fake(clock: FakeClock) -> AsyncIterator[fake_x.FakeX]:
    made = fake_x.FakeX(clock.now)
    await made.start()
    yield made
    await made.stop()
    assert made.violations == []


@pytest.fixture
async def app(tmp_path: Path, clock: FakeClock, fake: fake_x.FakeX) -> AsyncIterator[Any]:
    conf = {
        "api_base": fake.base_url,
        "client_id": fake_x.CLIENT_ID,
        "client_secret": fake_x.CLIENT_SECRET,
    }
    async with connect_app(tmp_path, clock, {"twitter": conf}) as made:
        yield made


_client = support.client
_database_bytes = support.database_bytes
_pages = support.pages


async def _consent(fake: fake_x.FakeX, url: str) -> httpx.URL:
    """The browser at X: the fake signs alice in, consents, and redirects to the callback."""
    async with httpx.AsyncClient() as browser:
        answer = await browser.get(url)
    assert answer.status_code == 302, answer.text
    return httpx.URL(answer.headers["location"])


async def test_authorization_url_has_state_and_pkce_s256(app: Any, fake: fake_x.FakeX) -> None:
    """The URL goes to X's authorize endpoint with code flow, client id, callback, scopes,
    an opaque state and an S256 challenge."""
    url = oauth.authorization_url(app.settings, "x", app.clock.now(), brand_id=app.brand_id)

    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == fake.base_url + "/i/oauth2/authorize"
    assert query["response_type"] == "code"
    assert query["client_id"] == fake_x.CLIENT_ID
    assert query["redirect_uri"] == PUBLIC + "/oauth/callback/x"
    assert set(query["scope"].split()) >= {"tweet.write", "offline.access", "media.write"}
    assert query["code_challenge_method"] == "S256"
    assert len(query["code_challenge"]) == 43  # base64url of 32 bytes, no padding
    assert app.brand_id not in query["state"]  # encrypted, not merely signed


async def test_production_authorize_url_is_on_x_com() -> None:
    """Against the real API the user is sent to x.com/i/oauth2/authorize (X's docs, xdk)."""
    from adapters import x

    assert x.authorize_url("https://api.x.com") == "https://x.com/i/oauth2/authorize"


async def test_callback_exchanges_code_with_verifier_and_stores_encrypted_page(
    app: Any, fake: fake_x.FakeX, tmp_path: Path
) -> None:
    """Consent -> callback: the code is exchanged with the verifier matching the challenge
    (Basic client auth), /2/users/me names the page, credentials are stored encrypted."""
    url = oauth.authorization_url(app.settings, "x", app.clock.now(), brand_id=app.brand_id)
    challenge = parse_qs(urlsplit(url).query)["code_challenge"][0]
    back = await _consent(fake, url)

    async with _client(app) as client:
        answer = await client.get(back.path, params=dict(back.params))

    assert answer.status_code == 200, answer.text
    (page,) = await _pages(app)
    assert page.id in answer.text
    assert (page.platform, page.username, page.external_id) == (
        "twitter",
        "alice",
        fake.alice["id"],
    )
    (exchange,) = fake.calls("token")
    form = {k: v[0] for k, v in parse_qs(exchange.body.decode()).items()}
    assert form["grant_type"] == "authorization_code"
    verifier_hash = hashlib.sha256(form["code_verifier"].encode()).digest()
    assert base64.urlsafe_b64encode(verifier_hash).rstrip(b"=").decode() == challenge
    assert form["redirect_uri"] == PUBLIC + "/oauth/callback/x"
    assert exchange.headers["authorization"].startswith("Basic ")
    stored = credentials.PageCredentials(app.engine, app.settings)
    creds = await stored.load(page.id)
    assert creds["access_token"] in fake.tokens and creds["refresh_token"] in fake.refresh_tokens
    raw = _database_bytes(tmp_path)
    assert page.id.encode() in raw  # the page row is on disk, so the check below can see it
    for secret in (creds["access_token"], creds["refresh_token"]):
        assert secret.encode() not in raw


@pytest.mark.parametrize("tamper", ["forged", "altered", "expired", "other_platform"])
async def test_bad_state_is_refused_and_nothing_is_stored(
    app: Any, fake: fake_x.FakeX, tamper: str
) -> None:
    """A state postd did not issue, one altered in transit, or one older than 10 minutes is
    refused with a clear error before any token exchange; no page appears."""
    url = oauth.authorization_url(app.settings, "x", app.clock.now(), brand_id=app.brand_id)
    back = await _consent(fake, url)
    params = dict(back.params)
    if tamper == "forged":
        other = credentials.Vault([credentials.generate_key()])
        state = oauth.State("x", app.brand_id, "", "", "attacker-verifier")
        params["state"] = oauth.make_state(other, state, app.clock.now())
    elif tamper == "altered":
        state = params["state"]
        middle = len(state) // 2
        params["state"] = (
            state[:middle] + ("A" if state[middle] != "A" else "B") + state[middle + 1 :]
        )
    elif tamper == "expired":
        app.clock.advance(oauth.STATE_LIFETIME.total_seconds() + 1)
    path = back.path.replace("/x", "/linkedin") if tamper == "other_platform" else back.path

    async with _client(app) as client:
        answer = await client.get(path, params=params)

    assert answer.status_code == 400
    wanted = "OAUTH_STATE_EXPIRED" if tamper == "expired" else "OAUTH_STATE_INVALID"
    assert wanted in answer.text
    assert await _pages(app) == []
    assert fake.calls("token") == []


async def test_denied_consent_stores_nothing(app: Any) -> None:
    """X redirecting with error=access_denied answers 400 naming the error; nothing stored."""
    async with _client(app) as client:
        answer = await client.get("/oauth/callback/x", params={"error": "access_denied"})

    assert answer.status_code == 400 and "access_denied" in answer.text
    assert await _pages(app) == []


async def test_cli_prints_the_authorization_url(app: Any, tmp_path: Path) -> None:
    """postd page connect x --brand ID prints a URL whose state opens under the key."""
    toml = tmp_path / "postd.toml"
    settings = app.settings
    toml.write_text(
        "[database]\n"
        f'url = "{settings.database.url}"\n'
        "[server]\n"
        f'public_url = "{PUBLIC}"\n'
        "[security]\n"
        f'secret_key = "{settings.security.secret_key}"\n'
        "[platforms.twitter]\n"
        f'api_base = "{settings.platforms.twitter.api_base}"\n'
        f'client_id = "{fake_x.CLIENT_ID}"\n'
    )
    result = CliRunner().invoke(
        main,
        ["--config", str(toml), "page", "connect", "x", "--brand", app.brand_id],
    )

    assert result.exit_code == 0, result.output
    query = parse_qs(urlsplit(result.output.strip()).query)
    vault = credentials.Vault([settings.security.secret_key])
    state = oauth.read_state(vault, query["state"][0], "x", app.clock.now())
    assert state.brand_id == app.brand_id and state.page_id == ""


async def test_token_outage_during_callback_stores_nothing(app: Any, fake: fake_x.FakeX) -> None:
    """A token endpoint outage during the callback answers 502 and stores nothing."""
    url = oauth.authorization_url(app.settings, "x", app.clock.now(), brand_id=app.brand_id)
    back = await _consent(fake, url)
    fake.fail("token", "unavailable")

    async with _client(app) as client:
        answer = await client.get(back.path, params=dict(back.params))

    assert answer.status_code == 502
    async with app.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Page)) == 0
