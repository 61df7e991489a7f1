"""Google OAuth 2.0 for the YouTube adapter (platforms.md §6 "Auth"): the consent and token
endpoints, the token answer's stored form, the connect exchange, and Google's error bodies.

The token endpoint takes the client's id and secret in the form (Google's web-server flow). Only
``invalid_grant`` (a revoked or expired refresh token, a used code) is an AuthError; a 401
``invalid_client`` is the operator's app, not the page (PermanentError); 5xx, 429 and timeouts
are RetryableError, so an outage never marks a page for re-connect.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import httpx

from adapters import _http, _tokens, base

PRODUCTION_API = "https://www.googleapis.com"
TOKEN_URL = "https://oauth2.googleapis.com/token"
AUTHORIZE_URL = "https://accounts.google.com/o/oauth2/v2/auth"
SCOPES = (
    "https://www.googleapis.com/auth/youtube.upload",
    "https://www.googleapis.com/auth/youtube.force-ssl",
)
API = "/youtube/v3"


def _google_url(api_base: str, production: str, path: str) -> str:
    base_url = api_base.rstrip("/")
    return production if base_url == PRODUCTION_API else base_url + path


def token_url(api_base: str) -> str:
    """Google's token endpoint; ``<api_base>/token`` against a fake or proxy."""
    return _google_url(api_base, TOKEN_URL, "/token")


def authorize_url(api_base: str) -> str:
    """Google's consent page; ``<api_base>/o/oauth2/v2/auth`` against a fake or proxy."""
    return _google_url(api_base, AUTHORIZE_URL, "/o/oauth2/v2/auth")


def error_body(body: Any) -> tuple[str | None, str | None]:
    """Google's envelope (``error.errors[0].reason``) or an OAuth error (``error``)."""
    if not isinstance(body, dict):
        return None, None
    error = body.get("error")
    if isinstance(error, str):
        return error, body.get("error_description")
    if not isinstance(error, dict):
        return None, None
    errors = error.get("errors")
    first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
    reason = first.get("reason") or error.get("status")
    return (str(reason) if reason else None), error.get("message")


OAuthApp = _http.OAuthApp  # the operator's app ([platforms.<name>])


# --- the token endpoint -----------------------------------------------------------------------


async def token_request(
    client: httpx.AsyncClient, api_base: str, app: OAuthApp, form: Mapping[str, str], now: datetime
) -> dict[str, Any]:
    """``POST`` to Google's token endpoint (client credentials in the form). ``invalid_grant``
    is AuthError (the grant is dead); other 4xx PermanentError; 5xx, 429, timeouts Retryable."""
    secret = {"client_secret": app.client_secret} if app.client_secret else {}
    response = await _http.send(
        client,
        "POST",
        token_url(api_base),
        final=False,
        what="token",
        data={**form, "client_id": app.client_id, **secret},
    )
    if response.is_success:
        return _http.json_object(response, final=False, what="token")
    error = _http.status_error(
        response, final=False, now=now, what="google token", parse=error_body
    )
    if error.code == "invalid_grant":
        raise base.AuthError(
            error.message, code="REFRESH_REFUSED", http_status=error.http_status
        ) from error
    if isinstance(error, base.AuthError):  # 401 invalid_client: the app, not the page
        raise base.PermanentError(
            error.message, code=error.code, http_status=error.http_status
        ) from error
    raise error


def token_credentials(data: Mapping[str, Any], now: datetime) -> dict[str, str]:
    """The stored form of a token answer (``expires_at`` in epoch seconds; Google sends a
    refresh token at consent, and refreshes keep the old one)."""
    return _tokens.credentials_of(data, now, what="google token", default_seconds=3600)


async def connect(
    code: str,
    verifier: str,
    redirect_uri: str,
    *,
    api_base: str,
    app: OAuthApp,
    now: _http.Now,
    timeouts: _http.Timeouts | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> _http.Connected:
    """Exchange an authorization ``code`` (PKCE ``verifier``) and read the user's channel."""
    async with _http.make_client(timeouts or _http.Timeouts(), transport) as client:
        form = _tokens.code_form(code, verifier, redirect_uri)
        creds = token_credentials(await token_request(client, api_base, app, form, now()), now())
        response = await _http.send(
            client,
            "GET",
            api_base.rstrip("/") + API + "/channels",
            final=False,
            what="channels",
            params={"part": "snippet", "mine": "true"},
            headers={"Authorization": f"Bearer {creds['access_token']}"},
        )
    if not response.is_success:
        raise _http.status_error(
            response, final=False, now=now(), what="channels", parse=error_body
        )
    items = _http.json_object(response, final=False, what="channels").get("items") or []
    if not items or not items[0].get("id"):
        raise base.PermanentError("youtube: the account has no channel", code="NO_CHANNEL")
    if "refresh_token" not in creds:
        raise base.PermanentError(
            "youtube: Google sent no refresh token (consent was not asked again)",
            code="NO_REFRESH_TOKEN",
        )
    channel = items[0]
    snippet = channel.get("snippet") or {}
    title = str(snippet.get("title") or channel["id"])
    username = str(snippet.get("customUrl") or channel["id"]).removeprefix("@")
    return _http.Connected(
        credentials={**creds, "channel_id": str(channel["id"]), "channel_title": title},
        external_id=str(channel["id"]),
        username=username,
        name=title,
    )
