"""Connecting a LinkedIn member through OAuth 2.0 (daemon/oauth.py; LinkedIn's 3-legged web flow
takes no PKCE): the authorization URL, the fake's redirect back to the daemon's callback, the code
exchange with the client credentials, OpenID userinfo naming the author URN, the encrypted page,
and the stored page refreshed before its token expires. The daemon's HTTP app is driven
in-process; LinkedIn is the loopback fake."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import select

from adapters import linkedin_auth
from daemon import credentials, oauth
from daemon.clock import FakeClock
from daemon.store.models import Page
from tests.contract import connect_support as support
from tests.contract.connect_support import connect_app
from tests.fakes import linkedin as fake_li

PUBLIC = support.PUBLIC


@pytest.fixture
async def fake(clock: FakeClock) -> AsyncIterator[fake_li.FakeLinkedIn]:
    made = fake_li.FakeLinkedIn(clock.now)
    await made.start()
    yield made
    await made.stop()
    assert made.violations == []


@pytest.fixture
async def app(tmp_path: Path, clock: FakeClock, fake: fake_li.FakeLinkedIn) -> AsyncIterator[Any]:
    conf = {
        "api_base": fake.base_url + "/rest",
        "client_id": fake_li.CLIENT_ID,
        "client_secret": fake_li.CLIENT_SECRET,
    }
    async with connect_app(tmp_path, clock, {"linkedin": conf}) as made:
        yield made


_client = support.client
_database_bytes = support.database_bytes
_consent = support.consent


async def _connect(app: Any) -> Page:
    url = oauth.authorization_url(app.settings, "linkedin", app.clock.now(), brand_id=app.brand_id)
    back = await _consent(url)
    async with _client(app) as client:
        answer = await client.get(back.path, params=dict(back.params))
    assert answer.status_code == 200, answer.text
    async with app.sessions() as session:
        (page,) = list(await session.scalars(select(Page)))
    assert page.id in answer.text
    return page


def test_production_urls_are_linkedins_own() -> None:
    """Against api.linkedin.com/rest the user goes to www.linkedin.com/oauth/v2, the code is
    exchanged there, and the member is read from api.linkedin.com/v2/userinfo."""
    api = "https://api.linkedin.com/rest"
    assert linkedin_auth.authorize_url(api) == "https://www.linkedin.com/oauth/v2/authorization"
    assert linkedin_auth.token_url(api) == "https://www.linkedin.com/oauth/v2/accessToken"
    assert linkedin_auth.userinfo_url(api) == "https://api.linkedin.com/v2/userinfo"
    assert linkedin_auth.token_url("http://127.0.0.1:9/rest") == (
        "http://127.0.0.1:9/oauth/v2/accessToken"
    )


async def test_authorization_url_has_state_and_no_pkce(
    app: Any, fake: fake_li.FakeLinkedIn
) -> None:
    """The URL goes to the authorization endpoint with code flow, client id, callback, the
    OpenID + w_member_social scopes and an opaque state; no PKCE parameters."""
    url = oauth.authorization_url(app.settings, "linkedin", app.clock.now(), brand_id=app.brand_id)

    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == (
        fake.base_url + "/oauth/v2/authorization"
    )
    assert query["response_type"] == "code"
    assert query["client_id"] == fake_li.CLIENT_ID
    assert query["redirect_uri"] == PUBLIC + "/oauth/callback/linkedin"
    assert query["scope"].split() == ["openid", "profile", "w_member_social"]
    assert "code_challenge" not in query and "code_challenge_method" not in query
    assert app.brand_id not in query["state"]  # encrypted, not merely signed


async def test_callback_exchanges_the_code_and_stores_the_member_encrypted(
    app: Any, fake: fake_li.FakeLinkedIn, tmp_path: Path
) -> None:
    """Consent -> /oauth/callback/linkedin: the code is exchanged with the client credentials in
    the form (no verifier), userinfo's sub names the author URN, the credentials are stored
    encrypted: no token's bytes appear in the SQLite file."""
    page = await _connect(app)

    assert (page.platform, page.external_id, page.username) == (
        "linkedin",
        "urn:li:person:alice01",
        "Alice Example",
    )
    (exchange,) = fake.calls("token")
    form = {k: v[0] for k, v in parse_qs(exchange.body.decode()).items()}
    assert form == {
        "grant_type": "authorization_code",
        "code": form["code"],
        "redirect_uri": PUBLIC + "/oauth/callback/linkedin",
        "client_id": fake_li.CLIENT_ID,
        "client_secret": fake_li.CLIENT_SECRET,
    }
    (userinfo,) = fake.calls("userinfo")
    creds = await credentials.PageCredentials(app.engine, app.settings).load(page.id)
    assert userinfo.headers["authorization"] == f"Bearer {creds['access_token']}"
    assert creds["author"] == "urn:li:person:alice01"
    assert creds["access_token"] in fake.tokens and creds["refresh_token"] in fake.refresh_tokens
    raw = _database_bytes(tmp_path)
    assert page.id.encode() in raw  # the page row is on disk, so the check below can see it
    for secret in (creds["access_token"], creds["refresh_token"], fake_li.CLIENT_SECRET):
        assert secret.encode() not in raw


async def test_connected_page_is_refreshed_before_its_token_expires(
    app: Any, fake: fake_li.FakeLinkedIn
) -> None:
    """An hour before the 60-day token expires the daemon's adapter refreshes it (refresh_token
    grant) before its call, saves the new token encrypted and calls with it."""
    from adapters import base

    page = await _connect(app)
    store = credentials.PageCredentials(app.engine, app.settings)
    before = await store.load(page.id)
    app.clock.advance(float(before["expires_at"]) - app.clock.now().timestamp() - 3600)
    post = base.PostPayload("p1", page.id, "linkedin", "Hello after two months")

    found = await app.adapters["linkedin"].find_published(post, app.clock.now())

    after = await store.load(page.id)
    assert found is None
    assert after["access_token"] != before["access_token"]
    assert float(after["expires_at"]) > float(before["expires_at"])
    assert after["refresh_token"] == before["refresh_token"]
    assert [c.route for c in fake.requests][-2:] == ["token", "list_posts"]
    listing = fake.calls("list_posts")[0]
    assert listing.headers["authorization"] == f"Bearer {after['access_token']}"


async def test_token_outage_during_callback_stores_nothing(
    app: Any, fake: fake_li.FakeLinkedIn
) -> None:
    """A token endpoint outage during the callback answers 502 and stores no page."""
    url = oauth.authorization_url(app.settings, "linkedin", app.clock.now(), brand_id=app.brand_id)
    back = await _consent(url)
    fake.fail("token", "unavailable")

    async with _client(app) as client:
        answer = await client.get(back.path, params=dict(back.params))

    assert answer.status_code == 502
    async with app.sessions() as session:
        assert list(await session.scalars(select(Page))) == []
