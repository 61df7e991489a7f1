"""Connecting Facebook Pages and Instagram accounts through Facebook Login (daemon/oauth.py,
adapters/graph_connect.py): the authorization URL, the fake login dialog's redirect to the
daemon's callback, the code exchange with PKCE, the long-lived token, every granted Page stored
encrypted, refused states and grants, re-connects, and a publish with what was stored. The
daemon's HTTP app is driven in-process; Graph is the loopback fake."""

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

from adapters import _progress, base, graph_connect, instagram
from daemon import credentials, oauth, services
from daemon.cli import main
from daemon.clock import FakeClock
from tests.contract import connect_support as support
from tests.contract.connect_support import connect_app
from tests.fakes import graph

PUBLIC = support.PUBLIC
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


@pytest.fixture
async def fake(clock: FakeClock) -> AsyncIterator[graph.FakeGraph]:
    made = graph.FakeGraph(clock.now)
    await made.start()
    yield made
    await made.stop()


@pytest.fixture
async def app(tmp_path: Path, clock: FakeClock, fake: graph.FakeGraph) -> AsyncIterator[Any]:
    app_conf = {
        "api_base": fake.base_url + graph.PREFIX,
        "client_id": graph.CLIENT_ID,
        "client_secret": graph.CLIENT_SECRET,
    }
    platforms = {"facebook": app_conf, "instagram": app_conf}
    netguard = {"allow_loopback": True, "allow_http": True}
    async with connect_app(tmp_path, clock, platforms, netguard=netguard) as made:
        yield made


_consent = support.consent
_callback = support.callback
_database_bytes = support.database_bytes
_pages = support.pages


def _query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def _form(rec: Any) -> dict[str, str]:
    fields = {k: v[0] for k, v in rec.query.items()}
    fields.update({k: v[0] for k, v in parse_qs(rec.body.decode()).items()})
    return fields


async def _connect(app: Any, name: str, **target: str) -> httpx.Response:
    """The whole flow: URL for a new page of the brand (or ``page_id``), consent, callback."""
    target = target or {"brand_id": app.brand_id}
    url = oauth.authorization_url(app.settings, name, app.clock.now(), **target)
    return await _callback(app, await _consent(url))


async def _creds(app: Any, page_id: str) -> dict[str, str]:
    return dict(await credentials.PageCredentials(app.engine, app.settings).load(page_id))


# --- the authorization URL ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["facebook", "instagram"])
async def test_authorization_url_has_state_pkce_and_comma_scopes(
    app: Any, fake: graph.FakeGraph, name: str
) -> None:
    """The login dialog under the pinned version, code flow, the app id, the daemon's callback,
    the platform's permissions joined by commas, an encrypted state and an S256 challenge."""
    url = oauth.authorization_url(app.settings, name, app.clock.now(), brand_id=app.brand_id)

    parts = urlsplit(url)
    query = _query(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == (
        fake.base_url + graph.PREFIX + "/dialog/oauth"
    )
    assert query["response_type"] == "code"
    assert query["client_id"] == graph.CLIENT_ID
    assert query["redirect_uri"] == f"{PUBLIC}/oauth/callback/{name}"
    assert " " not in query["scope"]
    assert query["scope"].split(",") == list(graph_connect.SCOPES[name])
    assert query["code_challenge_method"] == "S256"
    assert len(query["code_challenge"]) == 43
    assert app.brand_id not in query["state"]
    state = oauth.read_state(oauth._vault(app.settings), query["state"], name, app.clock.now())
    assert state.brand_id == app.brand_id


def test_scopes_follow_platforms_md() -> None:
    """Facebook: manage and read posts and comments of the Pages; Instagram: publish and
    comment, plus listing the Pages its accounts hang off."""
    assert {"pages_manage_posts", "pages_show_list", "pages_manage_engagement"} <= set(
        graph_connect.FACEBOOK_SCOPES
    )
    assert {"instagram_basic", "instagram_content_publish", "pages_read_engagement"} <= set(
        graph_connect.INSTAGRAM_SCOPES
    )


def test_production_dialog_is_on_www_facebook_com_with_the_version() -> None:
    assert (
        graph_connect.authorize_url("https://graph.facebook.com/v24.0")
        == "https://www.facebook.com/v24.0/dialog/oauth"
    )
    assert graph_connect.authorize_url("") == "https://www.facebook.com/v24.0/dialog/oauth"
    assert graph_connect.authorize_url("http://127.0.0.1:9/v24.0/") == (
        "http://127.0.0.1:9/v24.0/dialog/oauth"
    )


# --- the callback -------------------------------------------------------------------------------


async def test_facebook_callback_stores_every_granted_page_encrypted(
    app: Any, fake: graph.FakeGraph, tmp_path: Path
) -> None:
    """Code exchanged with the secret, the callback and the verifier matching the challenge;
    the User token made long-lived; /me/accounts read page after page with it; one page per
    Page, credentials (Page token + page id) encrypted on disk."""
    fake.accounts_page_size = 1  # two Pages: the cursor must be followed
    url = oauth.authorization_url(app.settings, "facebook", app.clock.now(), brand_id=app.brand_id)
    challenge = _query(url)["code_challenge"]

    answer = await _callback(app, await _consent(url))

    assert answer.status_code == 200, answer.text
    pages = await _pages(app)
    assert [(p.platform, p.external_id, p.name) for p in pages] == [
        ("facebook", graph.PAGE_ID, "Acme"),
        ("facebook", graph.PAGE2_ID, "Acme Blog"),
    ]
    assert all(p.id in answer.text for p in pages)
    code_call, exchange_call = (_form(r) for r in fake.calls("token"))
    assert code_call["client_secret"] == graph.CLIENT_SECRET
    assert code_call["redirect_uri"] == f"{PUBLIC}/oauth/callback/facebook"
    digest = hashlib.sha256(code_call["code_verifier"].encode()).digest()
    assert base64.urlsafe_b64encode(digest).rstrip(b"=").decode() == challenge
    assert exchange_call["grant_type"] == "fb_exchange_token"
    assert fake.user_tokens[exchange_call["fb_exchange_token"]]["long_lived"] is False
    listings = [_form(r) for r in fake.calls("accounts")]
    assert len(listings) == 2 and listings[1]["after"] == "1"
    assert all(fake.user_tokens[f["access_token"]]["long_lived"] for f in listings)
    assert "instagram_business_account{id,username}" in listings[0]["fields"]
    for page in pages:
        creds = await _creds(app, page.id)
        assert creds == {
            "access_token": fake.page_tokens[page.external_id],
            "page_id": page.external_id,
        }
    raw = _database_bytes(tmp_path)
    assert pages[0].id.encode() in raw  # the rows are on disk, so the check below can see them
    secrets = [*fake.page_tokens.values(), *fake.user_tokens, graph.CLIENT_SECRET]
    for secret in secrets:
        assert secret.encode() not in raw


async def test_instagram_callback_stores_pages_with_an_instagram_account(
    app: Any, fake: graph.FakeGraph, tmp_path: Path
) -> None:
    """Only the Page linked to an Instagram professional account becomes an Instagram page:
    the IG user id as external id, its username, the Page token."""
    answer = await _connect(app, "instagram")

    assert answer.status_code == 200, answer.text
    (page,) = await _pages(app)
    assert (page.platform, page.external_id, page.username) == (
        "instagram",
        graph.IG_USER_ID,
        "acme",
    )
    assert await _creds(app, page.id) == {
        "access_token": fake.page_tokens[graph.PAGE_ID],
        "ig_user_id": graph.IG_USER_ID,
    }
    assert fake.page_tokens[graph.PAGE_ID].encode() not in _database_bytes(tmp_path)


@pytest.mark.parametrize("name", ["facebook", "instagram"])
@pytest.mark.parametrize("tamper", ["forged", "altered", "expired", "other_platform"])
async def test_bad_state_is_refused_and_nothing_is_stored(
    app: Any, fake: graph.FakeGraph, name: str, tamper: str
) -> None:
    """A state postd did not issue, altered in transit, older than 10 minutes, or issued for the
    other Graph platform: 400 before any token exchange; no page appears."""
    url = oauth.authorization_url(app.settings, name, app.clock.now(), brand_id=app.brand_id)
    back = await _consent(url)
    params = dict(back.params)
    if tamper == "forged":
        other = credentials.Vault([credentials.generate_key()])
        state = oauth.State(name, app.brand_id, "", "", "attacker-verifier")
        params["state"] = oauth.make_state(other, state, app.clock.now())
    elif tamper == "altered":
        middle = len(params["state"]) // 2
        flipped = "A" if params["state"][middle] != "A" else "B"
        params["state"] = params["state"][:middle] + flipped + params["state"][middle + 1 :]
    elif tamper == "expired":
        app.clock.advance(oauth.STATE_LIFETIME.total_seconds() + 1)
    elif tamper == "other_platform":
        other_name = "instagram" if name == "facebook" else "facebook"
        back = back.copy_with(path=f"/oauth/callback/{other_name}")

    answer = await _callback(app, back.copy_with(params=params))

    assert answer.status_code == 400
    wanted = "OAUTH_STATE_EXPIRED" if tamper == "expired" else "OAUTH_STATE_INVALID"
    assert wanted in answer.text
    assert await _pages(app) == []
    assert fake.calls("token") == [] and fake.calls("accounts") == []


@pytest.mark.parametrize("name", ["facebook", "instagram"])
async def test_denied_login_stores_nothing(app: Any, fake: graph.FakeGraph, name: str) -> None:
    """The user cancels the dialog: Facebook redirects with error=access_denied; 400 naming it,
    no token call, nothing stored."""
    fake.deny = True

    answer = await _connect(app, name)

    assert answer.status_code == 400 and "access_denied" in answer.text
    assert await _pages(app) == []
    assert fake.calls("token") == []


@pytest.mark.parametrize(
    ("name", "pages"), [("facebook", []), ("instagram", []), ("instagram", [graph.PAGE2_ID])]
)
async def test_grant_without_usable_pages_is_a_clear_error(
    app: Any, fake: graph.FakeGraph, name: str, pages: list[str]
) -> None:
    """No Page granted (or, for Instagram, none with an Instagram account): 400
    OAUTH_NO_PAGES, nothing stored."""
    fake.granted = pages

    answer = await _connect(app, name)

    assert answer.status_code == 400
    assert "OAUTH_NO_PAGES" in answer.text
    assert await _pages(app) == []
    assert len(fake.calls("accounts")) == 1


async def test_refused_code_answers_502_and_stores_nothing(app: Any, fake: graph.FakeGraph) -> None:
    """Graph refusing the code (code 100, already used) is shown with Graph's code; no page."""
    fake.fail("token", "used_code")

    answer = await _connect(app, "facebook")

    assert answer.status_code == 502
    assert "GRAPH_100_36009" in answer.text
    assert await _pages(app) == []
    assert fake.calls("accounts") == []


async def test_wrong_client_secret_is_refused(app: Any, fake: graph.FakeGraph) -> None:
    """The code exchange carries the app secret; Graph refuses a wrong one (its envelope, code 1)
    and nothing else is asked."""
    url = oauth.authorization_url(app.settings, "facebook", app.clock.now(), brand_id=app.brand_id)
    back = await _consent(url)
    vault = oauth._vault(app.settings)
    state = oauth.read_state(vault, back.params["state"], "facebook", app.clock.now())

    with pytest.raises(base.AdapterError, match="Error validating client secret") as caught:
        await graph_connect.connect(
            "facebook",
            back.params["code"],
            state.verifier,
            oauth.redirect_uri(app.settings, "facebook"),
            api_base=fake.base_url + graph.PREFIX,
            app=graph_connect.GraphApp(graph.CLIENT_ID, "not-the-secret"),
            now=app.clock.now,
        )

    assert caught.value.code == "GRAPH_1"
    assert len(fake.calls("token")) == 1 and fake.calls("accounts") == []


# --- re-connect ---------------------------------------------------------------------------------


async def test_reconnect_updates_the_same_page(app: Any, fake: graph.FakeGraph) -> None:
    """page connect facebook --page ID: the grant covers both Pages again, the page's own
    Page (by external id) is stored again with its new token; no new page, the other
    untouched."""
    assert (await _connect(app, "facebook")).status_code == 200
    first, second = await _pages(app)
    before_first, before_second = await _creds(app, first.id), await _creds(app, second.id)

    answer = await _connect(app, "facebook", page_id=second.id)

    assert answer.status_code == 200, answer.text
    assert [p.id for p in await _pages(app)] == [first.id, second.id]
    after = await _creds(app, second.id)
    assert after["page_id"] == graph.PAGE2_ID
    assert after["access_token"] != before_second["access_token"]
    assert after["access_token"] == fake.page_tokens[graph.PAGE2_ID]
    assert await _creds(app, first.id) == before_first


async def test_reconnect_of_a_page_not_granted_is_refused(app: Any, fake: graph.FakeGraph) -> None:
    """The user ticks only another Page when re-connecting: refused (OAUTH_PAGE_NOT_GRANTED)
    rather than pointing the postd page at a different Facebook Page."""
    assert (await _connect(app, "facebook")).status_code == 200
    _first, second = await _pages(app)
    before = await _creds(app, second.id)
    fake.granted = [graph.PAGE_ID]

    answer = await _connect(app, "facebook", page_id=second.id)

    assert answer.status_code == 400
    assert "OAUTH_PAGE_NOT_GRANTED" in answer.text
    assert await _creds(app, second.id) == before
    assert [p.external_id for p in await _pages(app)] == [graph.PAGE_ID, graph.PAGE2_ID]


# --- publishing with what was stored ------------------------------------------------------------


async def test_facebook_page_publishes_with_the_stored_token(
    app: Any, fake: graph.FakeGraph
) -> None:
    """The daemon's Facebook adapter publishes to the connected Page with its stored token."""
    assert (await _connect(app, "facebook")).status_code == 200
    page = next(p for p in await _pages(app) if p.external_id == graph.PAGE_ID)

    published = await app.adapters["facebook"].publish(
        base.PostPayload("post_1", page.id, "facebook", "Hello from postd")
    )

    (feed,) = fake.calls("feed")
    assert feed.path == f"{graph.PREFIX}/{graph.PAGE_ID}/feed"
    assert _form(feed)["access_token"] == fake.page_tokens[graph.PAGE_ID]
    assert published.remote_id.startswith(graph.PAGE_ID + "_")  # the fake's post id form
    assert fake.root_texts("facebook") == ["Hello from postd"]


async def test_instagram_account_publishes_with_the_stored_token(
    app: Any, fake: graph.FakeGraph, fake_sleep: Any
) -> None:
    """The Instagram adapter over the daemon's credential store publishes a photo to the
    connected account (progress in memory: there is no post row behind this payload)."""
    assert (await _connect(app, "instagram")).status_code == 200
    (page,) = await _pages(app)
    image = fake.serve_file("cat.png", PNG, "image/png")
    adapter = instagram.InstagramAdapter(
        credentials.PageCredentials(app.engine, app.settings),
        _progress.MemoryProgress(),
        now=app.clock.now,
        api_base=fake.base_url + graph.PREFIX,
        sleep=fake_sleep,
        public_media_only=False,
    )

    published = await adapter.publish(
        base.PostPayload(
            "post_1", page.id, "instagram", "Hi", media=(base.MediaItem(image, "photo"),)
        )
    )

    (container,) = fake.calls("container")
    assert container.path == f"{graph.PREFIX}/{graph.IG_USER_ID}/media"
    assert _form(container)["access_token"] == fake.page_tokens[graph.PAGE_ID]
    assert published.remote_id in {n["id"] for n in fake.of_kind("ig_media")}
    await adapter.aclose()


# --- the CLI ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["facebook", "instagram"])
async def test_cli_prints_the_authorization_url(app: Any, tmp_path: Path, name: str) -> None:
    """postd page connect facebook|instagram --page ID prints the dialog URL; its state names
    the page to re-connect."""
    settings = app.settings
    async with app.sessions() as session, session.begin():
        page = await services.add_page(
            session,
            brand_id=app.brand_id,
            platform=name,
            name="Acme",
            now=app.clock.now(),
            username="acme",
            external_id="1",
        )
    toml = tmp_path / "postd.toml"
    toml.write_text(
        "[database]\n"
        f'url = "{settings.database.url}"\n'
        "[server]\n"
        f'public_url = "{PUBLIC}"\n'
        "[security]\n"
        f'secret_key = "{settings.security.secret_key}"\n'
        f"[platforms.{name}]\n"
        f'api_base = "{getattr(settings.platforms, name).api_base}"\n'
        f'client_id = "{graph.CLIENT_ID}"\n'
    )

    result = CliRunner().invoke(
        main, ["--config", str(toml), "page", "connect", name, "--page", page.id]
    )

    assert result.exit_code == 0, result.output
    url = result.output.strip()
    assert url.startswith(getattr(settings.platforms, name).api_base + "/dialog/oauth?")
    vault = credentials.Vault([settings.security.secret_key])
    state = oauth.read_state(vault, _query(url)["state"], name, app.clock.now())
    assert (state.page_id, state.brand_id) == (page.id, "")
