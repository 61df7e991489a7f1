"""Connecting pages through an OAuth 2.0 Authorization Code flow with PKCE (S256), without a
database table for flows in progress.

``postd page connect x --brand ID`` prints :func:`authorization_url`; the operator opens it, the
platform redirects the browser to ``<[server] public_url>/oauth/callback/<name>?code&state``,
served by the daemon (:data:`router`, outside ``/api/v1``, no API token), which calls
:func:`complete`: the state is checked, the code exchanged with the PKCE verifier, the account
read, and the page stored with its credentials encrypted.

The ``state`` is a Fernet token under the credential key ([security]): authenticated (it cannot be
forged or altered without the key) and encrypted (the PKCE verifier it carries stays secret). It
holds the platform, the brand or page, the verifier, a nonce and an expiry 10 minutes out, checked
against the injected clock. A state can be presented again within those 10 minutes, but the
platform accepts each code once and only with its own verifier, so a replay gains nothing.

Platforms plug in as an entry of :data:`PROVIDERS` (X, Facebook, Instagram, LinkedIn, TikTok,
YouTube).

errors.PostdError
 └── OAuthError      unknown platform, no app configured, a forged/expired/mismatched state,
                     or the user denied access; ``code`` says which
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol
from urllib.parse import urlencode

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.ext.asyncio import AsyncSession

from adapters import _http, graph_connect, linkedin_auth, tiktok_api, x, youtube_oauth
from adapters import base as adapter_base
from daemon import config, credentials, services
from daemon.errors import PostdError

log = structlog.get_logger("postd.oauth")
STATE_LIFETIME = timedelta(minutes=10)
CALLBACK_PATH = "/oauth/callback/{name}"

Exchange = Callable[[str, str, str], Awaitable["Sequence[_http.Connected] | _http.Connected"]]
"""code, PKCE verifier ("" when the provider takes no PKCE), redirect_uri -> the account(s)."""


class OAuthError(PostdError):
    code = "OAUTH"

    def __init__(self, message: str, code: str = "OAUTH") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Provider:
    """One OAuth platform: ``name`` in URLs and the CLI, ``platform`` in postd.

    ``exchange`` returns every account the grant covers (a Facebook user's Pages, say); each
    becomes a page. The authorization URL is built from the standard parameters, renamed or
    extended per platform: ``client_id_param`` (TikTok says ``client_key``), ``scope_separator``
    (TikTok and Facebook use commas), ``pkce`` (False where the platform has no PKCE for web
    apps), ``extra_params`` (Google's ``access_type=offline``, say). ``same_account``: a
    re-connect must come back with the page's own account (a grant of several accounts picked
    by the user, as Facebook's Pages), never another one."""

    name: str
    platform: str
    authorize_url: str
    scopes: tuple[str, ...]
    client_id: str
    exchange: Exchange
    pkce: bool = True
    client_id_param: str = "client_id"
    scope_separator: str = " "
    extra_params: tuple[tuple[str, str], ...] = ()
    same_account: bool = False


ProviderFactory = Callable[[config.Settings, _http.Now, _http.Timeouts], Provider]


class _Connect(Protocol):
    async def __call__(
        self,
        code: str,
        verifier: str,
        redirect_uri: str,
        *,
        api_base: str,
        app: _http.OAuthApp,
        now: _http.Now,
        timeouts: _http.Timeouts,
    ) -> Sequence[_http.Connected] | _http.Connected: ...


def _code_flow(
    name: str,
    section: str,
    connect: _Connect,
    authorize_url: Callable[[str], str],
    scopes: tuple[str, ...],
    **options: Any,
) -> tuple[str, ProviderFactory]:
    """The registry entry of an authorization-code platform: its adapter module's ``connect``
    (code, verifier, redirect_uri -> the account(s)) and ``authorize_url(api_base)``, the app of
    ``[platforms.<section>]``, and the :class:`Provider` options that differ."""

    def factory(settings: config.Settings, now: _http.Now, timeouts: _http.Timeouts) -> Provider:
        conf = getattr(settings.platforms, section)
        app = _http.OAuthApp(conf.client_id, conf.client_secret)

        async def exchange(
            code: str, verifier: str, redirect: str
        ) -> Sequence[_http.Connected] | _http.Connected:
            return await connect(
                code,
                verifier,
                redirect,
                api_base=conf.api_base,
                app=app,
                now=now,
                timeouts=timeouts,
            )

        return Provider(
            name,
            section,
            authorize_url(conf.api_base),
            scopes,
            conf.client_id,
            exchange,
            **options,
        )

    return section, factory


PROVIDERS: dict[str, tuple[str, ProviderFactory]] = {
    # CLI/URL name: (the [platforms.<section>] of its app, which is also postd's platform name)
    "x": _code_flow("x", "twitter", x.connect, x.authorize_url, x.SCOPES),
    # Facebook Login: one page per Page (or Instagram account) the user granted; a re-connect
    # must come back with the page's own account.
    **{
        name: _code_flow(
            name,
            name,
            functools.partial(graph_connect.connect, name),
            graph_connect.authorize_url,
            graph_connect.SCOPES[name],
            scope_separator=graph_connect.SCOPE_SEPARATOR,
            same_account=True,
        )
        for name in ("facebook", "instagram")
    },
    # LinkedIn's 3-legged flow for web apps takes no PKCE; the member posts as themselves.
    "linkedin": _code_flow(
        "linkedin",
        "linkedin",
        linkedin_auth.connect,
        linkedin_auth.authorize_url,
        linkedin_auth.SCOPES,
        pkce=False,
    ),
    # TikTok Login Kit for web: client_key, comma-separated scopes, no PKCE (TikTok wants a
    # code_verifier from desktop and mobile apps only).
    "tiktok": _code_flow(
        "tiktok",
        "tiktok",
        tiktok_api.connect,
        tiktok_api.authorize_url,
        tiktok_api.SCOPES,
        pkce=False,
        client_id_param="client_key",
        scope_separator=",",
    ),
    # Google, with PKCE; access_type=offline and prompt=consent make Google send a refresh
    # token (on every consent, re-connects included).
    "youtube": _code_flow(
        "youtube",
        "youtube",
        youtube_oauth.connect,
        youtube_oauth.authorize_url,
        youtube_oauth.SCOPES,
        extra_params=(
            ("access_type", "offline"),
            ("prompt", "consent"),
            ("include_granted_scopes", "true"),
        ),
    ),
}


def provider(settings: config.Settings, name: str, now: _http.Now) -> Provider:
    """The provider ``name``, or OAuthError when unknown or its app is not configured."""
    conf = settings.platforms
    if name not in PROVIDERS:
        known = ", ".join(sorted(PROVIDERS))
        raise OAuthError(
            f"no OAuth connect flow for {name!r} (known: {known})", code="OAUTH_UNKNOWN"
        )
    section, factory = PROVIDERS[name]
    if not getattr(conf, section).client_id:
        raise OAuthError(
            f"set [platforms.{section}] client_id (and client_secret for a confidential app)",
            code="OAUTH_NOT_CONFIGURED",
        )
    timeouts = _http.Timeouts(connect=conf.connect_timeout_seconds, read=conf.read_timeout_seconds)
    return factory(settings, now, timeouts)


def redirect_uri(settings: config.Settings, name: str) -> str:
    return settings.server.public_url + CALLBACK_PATH.format(name=name)


def pkce_challenge(verifier: str) -> str:
    """RFC 7636 S256: base64url(sha256(verifier)) without padding."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _vault(settings: config.Settings) -> credentials.Vault:
    return credentials.Vault(credentials.key_source(settings).keys)


@dataclass(frozen=True, slots=True)
class State:
    name: str
    brand_id: str
    page_id: str
    page_name: str
    verifier: str


def make_state(vault: credentials.Vault, state: State, now: datetime) -> str:
    payload = {
        "p": state.name,
        "b": state.brand_id,
        "g": state.page_id,
        "m": state.page_name,
        "v": state.verifier,
        "n": secrets.token_urlsafe(8),
        "e": str(int((now + STATE_LIFETIME).timestamp())),
    }
    return vault.encrypt(payload).decode("ascii")


def read_state(vault: credentials.Vault, token: str, name: str, now: datetime) -> State:
    """The state, or OAuthError: forged or altered, expired, or issued for another platform."""
    try:
        payload = vault.decrypt(token.encode("ascii"))
        expires = int(payload["e"])
        state = State(payload["p"], payload["b"], payload["g"], payload["m"], payload["v"])
    except (credentials.KeyProblem, UnicodeError, KeyError, ValueError) as exc:
        raise OAuthError("the state is not one postd issued", code="OAUTH_STATE_INVALID") from exc
    if state.name != name:
        raise OAuthError(f"the state was issued for {state.name}", code="OAUTH_STATE_INVALID")
    if now.timestamp() >= expires:
        raise OAuthError(
            "the authorization link expired (10 minutes): run page connect again",
            code="OAUTH_STATE_EXPIRED",
        )
    return state


def connect_command(platform: str) -> str:
    """The ``postd page connect`` subcommand for pages of ``platform`` (X's pages are
    ``twitter``, its command ``x``)."""
    return next((name for name, (section, _) in PROVIDERS.items() if section == platform), platform)


def authorization_url(
    settings: config.Settings,
    name: str,
    now: datetime,
    *,
    brand_id: str = "",
    page_id: str = "",
    page_name: str = "",
) -> str:
    """The URL the operator opens to connect a new page of ``brand_id`` (or re-connect
    ``page_id``); valid for 10 minutes."""
    if bool(brand_id) == bool(page_id):
        raise OAuthError("pass a brand (a new page) or a page (re-connect), not both")
    found = provider(settings, name, lambda: now)
    verifier = secrets.token_urlsafe(48)  # 64 characters of the 43..128 RFC 7636 allows
    state = make_state(_vault(settings), State(name, brand_id, page_id, page_name, verifier), now)
    query = {
        "response_type": "code",
        found.client_id_param: found.client_id,
        "redirect_uri": redirect_uri(settings, name),
        "scope": found.scope_separator.join(found.scopes),
        "state": state,
    }
    if found.pkce:
        query |= {"code_challenge": pkce_challenge(verifier), "code_challenge_method": "S256"}
    query |= dict(found.extra_params)
    return f"{found.authorize_url}?{urlencode(query)}"


async def store_connected(
    session: AsyncSession,
    vault: credentials.Vault,
    platform: str,
    accounts: Sequence[_http.Connected],
    *,
    brand_id: str,
    page_id: str,
    page_name: str,
    now: datetime,
    same_account: bool = False,
) -> list[tuple[str, _http.Connected]]:
    """Store what a connect verified, encrypted: one new page of ``brand_id`` per account, or
    the credentials of ``page_id`` again (re-connect: the account with the page's external id,
    or the only one unless ``same_account``). Page ids with their accounts; PostdError when
    nothing fits."""
    if not accounts:
        raise OAuthError("the grant covers no account postd can publish to", code="OAUTH_NO_PAGES")
    if page_id:
        page = await services.get_page(session, page_id)
        if page.platform != platform:
            raise OAuthError(f"page {page.id} is a {page.platform} page, not {platform}")
        same = [a for a in accounts if a.external_id == page.external_id]
        if not same and (len(accounts) > 1 or (same_account and page.external_id)):
            raise OAuthError(
                f"the grant does not cover page {page.id} ({page.external_id})",
                code="OAUTH_PAGE_NOT_GRANTED",
            )
        account = (same or list(accounts))[0]
        page.username, page.external_id = account.username, account.external_id
        await credentials.store(session, page, vault, account.credentials)
        return [(page.id, account)]
    stored = []
    for account in accounts:
        page = await services.add_page(
            session,
            brand_id=brand_id,
            platform=platform,
            name=(page_name if len(accounts) == 1 else "") or account.name,
            now=now,
            username=account.username,
            external_id=account.external_id,
        )
        await credentials.store(session, page, vault, account.credentials)
        stored.append((page.id, account))
    return stored


async def complete(
    session: AsyncSession,
    settings: config.Settings,
    name: str,
    code: str,
    state_token: str,
    now: _http.Now,
) -> list[tuple[str, _http.Connected]]:
    """Check the state, exchange the code, store the page(s); their ids and accounts."""
    vault = _vault(settings)
    state = read_state(vault, state_token, name, now())
    found = provider(settings, name, now)
    got = await found.exchange(
        code, state.verifier if found.pkce else "", redirect_uri(settings, name)
    )
    accounts = [got] if isinstance(got, _http.Connected) else list(got)
    return await store_connected(
        session,
        vault,
        found.platform,
        accounts,
        brand_id=state.brand_id,
        page_id=state.page_id,
        page_name=state.page_name,
        now=now(),
        same_account=found.same_account,
    )


# --- the daemon's callback --------------------------------------------------------------------

router = APIRouter()


def _page(status: int, title: str, text: str) -> HTMLResponse:
    body = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"</head><body><h1>{html.escape(title)}</h1><p>{html.escape(text)}</p></body></html>"
    )
    return HTMLResponse(body, status, headers={"Cache-Control": "no-store"})


@router.get(CALLBACK_PATH, include_in_schema=False)
async def callback(
    request: Request, name: str, code: str = "", state: str = "", error: str = ""
) -> HTMLResponse:
    """Where the platform sends the browser back; answers a page naming the connected page."""
    app = request.app.state.postd
    if error or not code or not state:
        reason = error or "the redirect carries no code or state"
        return _page(400, "Not connected", f"{name}: {reason}")
    try:
        async with app.sessions() as session, session.begin():
            stored = await complete(session, app.settings, name, code, state, app.clock.now)
    except OAuthError as exc:
        log.warning("oauth_callback_refused", platform=name, code=exc.code)
        return _page(400, "Not connected", f"{exc.code}: {exc}")
    except adapter_base.AdapterError as exc:
        log.warning("oauth_exchange_failed", platform=name, code=exc.code)
        return _page(502, "Not connected", f"{name} refused: {exc.code}: {exc.message}")
    except PostdError as exc:
        log.warning("oauth_callback_refused", platform=name, code=exc.code)
        return _page(400, "Not connected", str(exc))
    for page_id, account in stored:
        log.info("page_connected", platform=name, page_id=page_id, username=account.username)
    listed = ", ".join(f"page {page_id} is @{account.username}" for page_id, account in stored)
    return _page(200, "Connected", f"{listed} on {name}")
