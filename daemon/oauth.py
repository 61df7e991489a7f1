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

Platforms plug in as a :class:`Provider` in :func:`provider` (X today).

errors.PostdError
 └── OAuthError      unknown platform, no app configured, a forged/expired/mismatched state,
                     or the user denied access; ``code`` says which
"""

from __future__ import annotations

import base64
import hashlib
import html
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlencode

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.ext.asyncio import AsyncSession

from adapters import _http, x
from adapters import base as adapter_base
from daemon import config, credentials, services
from daemon.errors import PostdError

log = structlog.get_logger("postd.oauth")
STATE_LIFETIME = timedelta(minutes=10)
CALLBACK_PATH = "/oauth/callback/{name}"

Exchange = Callable[[str, str, str], Awaitable[_http.Connected]]  # code, verifier, redirect_uri


class OAuthError(PostdError):
    code = "OAUTH"

    def __init__(self, message: str, code: str = "OAUTH") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Provider:
    """One OAuth platform: ``name`` in URLs and the CLI, ``platform`` in postd."""

    name: str
    platform: str
    authorize_url: str
    scopes: tuple[str, ...]
    client_id: str
    exchange: Exchange


def provider(settings: config.Settings, name: str, now: _http.Now) -> Provider:
    """The provider ``name``, or OAuthError when unknown or its app is not configured."""
    conf = settings.platforms
    timeouts = _http.Timeouts(connect=conf.connect_timeout_seconds, read=conf.read_timeout_seconds)
    if name == "x":
        app = conf.twitter
        if not app.client_id:
            raise OAuthError(
                "set [platforms.twitter] client_id (and client_secret for a confidential app)",
                code="OAUTH_NOT_CONFIGURED",
            )
        oauth_app = x.OAuthApp(app.client_id, app.client_secret)

        async def exchange(code: str, verifier: str, redirect_uri: str) -> _http.Connected:
            return await x.connect(
                code,
                verifier,
                redirect_uri,
                api_base=app.api_base,
                app=oauth_app,
                now=now,
                timeouts=timeouts,
            )

        return Provider(
            "x", "twitter", x.authorize_url(app.api_base), x.SCOPES, app.client_id, exchange
        )
    raise OAuthError(f"no OAuth connect flow for {name!r} (known: x)", code="OAUTH_UNKNOWN")


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
        "client_id": found.client_id,
        "redirect_uri": redirect_uri(settings, name),
        "scope": " ".join(found.scopes),
        "state": state,
        "code_challenge": pkce_challenge(verifier),
        "code_challenge_method": "S256",
    }
    return f"{found.authorize_url}?{urlencode(query)}"


async def complete(
    session: AsyncSession,
    settings: config.Settings,
    name: str,
    code: str,
    state_token: str,
    now: _http.Now,
) -> tuple[str, _http.Connected]:
    """Check the state, exchange the code, store the page; its id and the account."""
    vault = _vault(settings)
    state = read_state(vault, state_token, name, now())
    found = provider(settings, name, now)
    connected = await found.exchange(code, state.verifier, redirect_uri(settings, name))
    if state.page_id:
        page = await services.get_page(session, state.page_id)
        if page.platform != found.platform:
            raise OAuthError(f"page {page.id} is a {page.platform} page, not {found.platform}")
        page.username, page.external_id = connected.username, connected.external_id
    else:
        page = await services.add_page(
            session,
            brand_id=state.brand_id,
            platform=found.platform,
            name=state.page_name or connected.name,
            now=now(),
            username=connected.username,
            external_id=connected.external_id,
        )
    await credentials.store(session, page, vault, connected.credentials)
    return page.id, connected


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
            page_id, connected = await complete(
                session, app.settings, name, code, state, app.clock.now
            )
    except OAuthError as exc:
        log.warning("oauth_callback_refused", platform=name, code=exc.code)
        return _page(400, "Not connected", f"{exc.code}: {exc}")
    except adapter_base.AdapterError as exc:
        log.warning("oauth_exchange_failed", platform=name, code=exc.code)
        return _page(502, "Not connected", f"{name} refused: {exc.code}: {exc.message}")
    except PostdError as exc:
        log.warning("oauth_callback_refused", platform=name, code=exc.code)
        return _page(400, "Not connected", str(exc))
    log.info("page_connected", platform=name, page_id=page_id, username=connected.username)
    return _page(200, "Connected", f"page {page_id} is @{connected.username} on {name}")
