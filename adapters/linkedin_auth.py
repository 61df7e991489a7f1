"""LinkedIn's OAuth 2.0 (3-legged, no PKCE for web apps), its error bodies and the "little" text
format of post commentary (platforms.md §3); used by :mod:`adapters.linkedin` and the connect
flow (``daemon/oauth.py``).

The authorization page and token endpoint live on ``www.linkedin.com/oauth/v2``, the OpenID
``userinfo`` on ``api.linkedin.com/v2``; against any other ``api_base`` (a fake, a proxy) all three
are on that base's host (``<scheme>://<host>/oauth/v2/...``, ``/v2/userinfo``). The client
authenticates with ``client_id``/``client_secret`` in the form body. Refusals of a grant (400
``invalid_grant``/``invalid_request``, 401) are AuthError; 5xx, 429 and timeouts RetryableError,
so a passing outage never marks a page for re-connect.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from adapters import _http, _tokens, base

PRODUCTION_API = "https://api.linkedin.com/rest"
AUTHORIZE_URL = "https://www.linkedin.com/oauth/v2/authorization"
TOKEN_URL = "https://www.linkedin.com/oauth/v2/accessToken"
USERINFO_URL = "https://api.linkedin.com/v2/userinfo"
SCOPES = ("openid", "profile", "w_member_social")
DEFAULT_TOKEN_SECONDS = 60 * 24 * 3600  # LinkedIn access tokens last 60 days

# The "little" text format's reserved characters (platforms.md §3 [C3]); an unescaped one makes
# LinkedIn cut the commentary there while answering 201.
_RESERVED = r"|{}@[]()<>#\*_~"
_ESCAPE = re.compile(r"#(?=\w)|([" + re.escape(_RESERVED) + r"])")
_UNESCAPE = re.compile(r"\\([" + re.escape(_RESERVED) + r"])")
_DUPLICATE_OF = re.compile(r"urn:li:(?:share|ugcPost):[0-9]+")


OAuthApp = _http.OAuthApp  # the operator's app ([platforms.<name>])


def _host(api_base: str) -> str | None:
    """``scheme://host`` of a non-production ``api_base``; ``None`` for LinkedIn's own."""
    base_url = api_base.rstrip("/")
    if base_url == PRODUCTION_API:
        return None
    parts = urlsplit(base_url)
    return f"{parts.scheme}://{parts.netloc}"


def authorize_url(api_base: str) -> str:
    host = _host(api_base)
    return AUTHORIZE_URL if host is None else f"{host}/oauth/v2/authorization"


def token_url(api_base: str) -> str:
    host = _host(api_base)
    return TOKEN_URL if host is None else f"{host}/oauth/v2/accessToken"


def userinfo_url(api_base: str) -> str:
    host = _host(api_base)
    return USERINFO_URL if host is None else f"{host}/v2/userinfo"


# --- text ---------------------------------------------------------------------------------------


def escape(text: str) -> str:
    """``text`` as "little" commentary: reserved characters backslash-escaped, except ``#``
    starting a hashtag, which LinkedIn is meant to render as one."""
    return _ESCAPE.sub(lambda m: "\\" + m.group(1) if m.group(1) else m.group(0), text)


def unescape(text: str) -> str:
    return _UNESCAPE.sub(r"\1", text)


def comparable(text: str | None) -> str:
    """Commentary both sides agree on: unescaped, whitespace collapsed."""
    return " ".join(unescape(text or "").split())


def duplicate_of(error: base.AdapterError) -> str | None:
    """The post URN a DUPLICATE_POST answer names ("Content is a duplicate of urn:li:share:…")."""
    found = _DUPLICATE_OF.search(f"{error.message} {error.excerpt or ''}")
    return found.group(0) if found else None


# --- errors -------------------------------------------------------------------------------------


def parse_error(body: Any) -> tuple[str | None, str | None]:
    """LinkedIn's REST envelope (``status``/``message``/``serviceErrorCode``/``code`` and
    ``errorDetails.inputErrors[].code``) or an OAuth error (``error``/``error_description``)."""
    if not isinstance(body, dict):
        return None, None
    if isinstance(body.get("error"), str):
        return body["error"], body.get("error_description")
    message = body.get("message")
    details = body.get("errorDetails")
    inputs = details.get("inputErrors") if isinstance(details, dict) else None
    for item in inputs if isinstance(inputs, list) else ():
        if isinstance(item, dict) and item.get("code"):
            return str(item["code"]), str(message or item.get("description") or "")
    if isinstance(body.get("code"), str):
        return body["code"], str(message) if message else None
    if body.get("serviceErrorCode") is not None:
        return f"LINKEDIN_{body['serviceErrorCode']}", str(message) if message else None
    return None, str(message) if message else None


def enc(urn: str) -> str:
    """A URN as one path segment or query value (Rest.li 2.0 wants them URL-encoded)."""
    return quote(urn, safe="")


def next_midnight(now: datetime) -> datetime:
    """LinkedIn's daily limits reset at midnight UTC."""
    day = now.astimezone(UTC).date() + timedelta(days=1)
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def classify(
    response: httpx.Response, *, final: bool, now: datetime, what: str
) -> base.AdapterError:
    """The typed error of a non-2xx LinkedIn answer (platforms.md §3 "Errors", §0.1)."""
    status = response.status_code
    error = _http.status_error(response, final=final, now=now, what=what, parse=parse_error)
    kwargs: dict[str, Any] = {"http_status": status, "excerpt": error.excerpt}
    if status == 429:
        wait = _http.retry_after(response.headers, now)
        if wait is None:
            wait = (next_midnight(now) - now).total_seconds()
        return base.RetryableError(error.message, code=error.code, retry_after=wait, **kwargs)
    if final and status == 503:  # a 5xx of the publish call may have published (platforms.md §3)
        return base.AmbiguousError(error.message, code="HTTP_503", **kwargs)
    if status == 403:
        return base.AuthError(error.message, code=_code(error, "ACCESS_DENIED"), **kwargs)
    return error


def _code(error: base.AdapterError, fallback: str) -> str:
    return fallback if error.code.startswith("HTTP_") else error.code


class Account(_tokens.Tokens):
    """A page's stored credentials: the token, the author URN, expiries (epoch seconds)."""

    @property
    def author(self) -> str:
        return self.creds.get("author", "")


# --- the token endpoint -------------------------------------------------------------------------


async def token_request(
    client: httpx.AsyncClient, api_base: str, app: OAuthApp, form: Mapping[str, str], now: datetime
) -> dict[str, Any]:
    """``POST /oauth/v2/accessToken`` (form, client credentials in the body)."""
    response = await _http.send(
        client,
        "POST",
        token_url(api_base),
        final=False,
        what="linkedin token",
        data={**form, "client_id": app.client_id, "client_secret": app.client_secret},
    )
    if response.is_success:
        return _http.json_object(response, final=False, what="linkedin token")
    error = _http.status_error(
        response, final=False, now=now, what="linkedin token", parse=parse_error
    )
    refused = response.status_code == 401 or (
        response.status_code == 400 and error.code in ("invalid_grant", "invalid_request")
    )
    if refused:
        raise base.AuthError(
            error.message, code="REFRESH_REFUSED", http_status=error.http_status
        ) from error
    raise error


def token_credentials(data: Mapping[str, Any], now: datetime) -> dict[str, str]:
    """The stored form of a token answer (``expires_at``/``refresh_expires_at`` epoch seconds)."""
    return _tokens.credentials_of(
        data,
        now,
        what="linkedin token",
        default_seconds=DEFAULT_TOKEN_SECONDS,
        refresh_lifetime="refresh_token_expires_in",
    )


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
    """Exchange an authorization ``code`` (``verifier`` is unused: no PKCE) and read the member
    through OpenID ``userinfo``; the page posts as ``urn:li:person:<sub>``."""
    async with _http.make_client(timeouts or _http.Timeouts(), transport) as client:
        form = _tokens.code_form(code, "", redirect_uri)
        creds = token_credentials(await token_request(client, api_base, app, form, now()), now())
        response = await _http.send(
            client,
            "GET",
            userinfo_url(api_base),
            final=False,
            what="userinfo",
            headers={"Authorization": f"Bearer {creds['access_token']}"},
        )
    if not response.is_success:
        raise _http.status_error(
            response, final=False, now=now(), what="userinfo", parse=parse_error
        )
    member = _http.json_object(response, final=False, what="userinfo")
    if not member.get("sub"):
        raise base.PermanentError("linkedin: no member in userinfo", code="BAD_RESPONSE")
    author = f"urn:li:person:{member['sub']}"
    name = str(member.get("name") or member["sub"])
    return _http.Connected(
        credentials={**creds, "author": author, "name": name},
        external_id=author,
        username=name,
        name=name,
    )
