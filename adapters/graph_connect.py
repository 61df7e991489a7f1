"""Connecting Facebook Pages and Instagram professional accounts through Facebook Login
(OAuth 2.0 authorization code with PKCE S256; platforms.md §1-§2 "Auth"), for ``daemon/oauth.py``.

The operator opens Facebook's login dialog (:func:`authorize_url`) and picks the Pages to grant;
the daemon's callback then calls :func:`connect`:

1. ``POST /{version}/oauth/access_token`` (``client_id``, ``client_secret``, ``redirect_uri``,
   ``code``, ``code_verifier``) -> a short-lived User token;
2. ``POST /{version}/oauth/access_token`` (``grant_type=fb_exchange_token``) -> a long-lived
   (about 60 days) User token;
3. ``GET /{version}/me/accounts`` with that token (``fields=id,name,access_token,``
   ``instagram_business_account{id,username}``), page after page (``paging.cursors.after``
   while ``paging.next`` is there).

A Page token read with a long-lived User token does not expire [U], so no User token is kept:
each granted Page becomes one :class:`adapters._http.Connected`. Facebook: ``access_token`` (the
Page token) and ``page_id``, what :mod:`adapters.facebook` loads. Instagram: one per Page that has
an ``instagram_business_account``, with ``access_token`` (the Page token) and ``ig_user_id``,
what :mod:`adapters.instagram` loads. A Page listed without a token (the user cannot act on it)
is left out. No usable Page at all: an empty list, which ``daemon/oauth.py`` refuses
(``OAUTH_NO_PAGES``).

Errors come back in Graph's envelope and are classified as for publishing (``_graph.classify``):
a refused code (100) is permanent, a refused token (190) an AuthError.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from adapters import _graph, _http, base

# Facebook Login's dialog lives on www.facebook.com under the same version path as the API
# (graph.facebook.com/v24.0 -> www.facebook.com/v24.0/dialog/oauth); against any other
# api_base (a fake, a proxy) it is <api_base>/dialog/oauth.
PRODUCTION_HOST = "graph.facebook.com"
DIALOG_HOST = "https://www.facebook.com"
TOKEN_PATH = "/oauth/access_token"
ACCOUNTS_FIELDS = "id,name,access_token,instagram_business_account{id,username}"
ACCOUNTS_PAGE_SIZE = 100
MAX_ACCOUNT_PAGES = 50
# platforms.md §1 Auth, with pages_show_list for /me/accounts. The Pages guides also name
# "pages_read_user_engagement", which the permissions reference does not list (an unknown scope
# makes the dialog refuse the whole login); pages_read_user_content is the listed one.
FACEBOOK_SCOPES = (
    "pages_show_list",
    "pages_read_engagement",
    "pages_manage_posts",
    "pages_read_user_content",
    "pages_manage_engagement",
)
# platforms.md §2 (Instagram API with Facebook Login): publish and comment permissions, plus the
# Page permissions /me/accounts needs to list the Pages and their Instagram accounts.
INSTAGRAM_SCOPES = (
    "instagram_basic",
    "instagram_content_publish",
    "instagram_manage_comments",
    "pages_show_list",
    "pages_read_engagement",
)
SCOPES = {"facebook": FACEBOOK_SCOPES, "instagram": INSTAGRAM_SCOPES}
SCOPE_SEPARATOR = ","


GraphApp = _http.OAuthApp  # the operator's app ([platforms.<name>])


def authorize_url(api_base: str) -> str:
    """The login dialog for ``api_base`` (which includes the Graph version)."""
    base_url = (api_base or _graph.GRAPH_API_BASE).rstrip("/")
    parts = urlsplit(base_url)
    if parts.hostname == PRODUCTION_HOST:
        return f"{DIALOG_HOST}{parts.path}/dialog/oauth"
    return f"{base_url}/dialog/oauth"


async def connect(
    platform: str,
    code: str,
    verifier: str,
    redirect_uri: str,
    *,
    api_base: str,
    app: GraphApp,
    now: _http.Now,
    timeouts: _http.Timeouts | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> list[_http.Connected]:
    """Exchange the code (with the PKCE ``verifier`` when not empty), make the User token
    long-lived and return one account per granted Page (``platform`` "facebook") or per granted
    Page with an Instagram professional account ("instagram")."""
    if platform not in SCOPES:
        raise ValueError(f"not a Graph platform: {platform!r}")
    base_url = (api_base or _graph.GRAPH_API_BASE).rstrip("/")
    async with _http.make_client(timeouts or _http.Timeouts(), transport) as client:
        form = {"redirect_uri": redirect_uri, "code": code}
        if verifier:
            form["code_verifier"] = verifier
        short = await _token(client, base_url, app, form, now, "code exchange")
        exchange = {"grant_type": "fb_exchange_token", "fb_exchange_token": short}
        long_lived = await _token(client, base_url, app, exchange, now, "long-lived token")
        pages = await _granted_pages(client, base_url, long_lived, now)
    made = (_facebook(page) if platform == "facebook" else _instagram(page) for page in pages)
    return [account for account in made if account is not None]


async def _token(
    client: httpx.AsyncClient,
    base_url: str,
    app: GraphApp,
    form: Mapping[str, str],
    now: _http.Now,
    what: str,
) -> str:
    """One ``oauth/access_token`` request (form-encoded, so the secret stays out of URLs)."""
    body = {**form, "client_id": app.client_id, "client_secret": app.client_secret}
    url = base_url + TOKEN_PATH
    response = await _http.send(client, "POST", url, final=False, what=what, data=body)
    if not response.is_success:
        raise _graph.classify(response, final=False, now=now(), what=f"graph {what}")
    token = _http.json_object(response, final=False, what=what).get("access_token")
    if not isinstance(token, str) or not token:
        raise base.PermanentError(
            f"graph {what}: no access_token in the answer", code="BAD_RESPONSE"
        )
    return token


async def _granted_pages(
    client: httpx.AsyncClient, base_url: str, user_token: str, now: _http.Now
) -> list[Mapping[str, Any]]:
    """Every Page of ``/me/accounts``, following the ``after`` cursor."""
    params: dict[str, Any] = {
        "fields": ACCOUNTS_FIELDS,
        "limit": ACCOUNTS_PAGE_SIZE,
        "access_token": user_token,
    }
    pages: list[Mapping[str, Any]] = []
    for _ in range(MAX_ACCOUNT_PAGES):
        response = await _http.send(
            client, "GET", base_url + "/me/accounts", final=False, what="me/accounts", params=params
        )
        if not response.is_success:
            raise _graph.classify(response, final=False, now=now(), what="graph me/accounts")
        answer = _http.json_object(response, final=False, what="me/accounts")
        data = answer.get("data")
        if not isinstance(data, list):
            raise base.RetryableError("graph me/accounts: data is not a list", code="BAD_RESPONSE")
        pages += [_graph.mapping(item) for item in data]
        after = _graph.next_cursor(answer)
        if after is None:
            return pages
        params["after"] = after
    raise base.PermanentError(
        f"graph me/accounts: more than {ACCOUNTS_PAGE_SIZE * MAX_ACCOUNT_PAGES} Pages granted;"
        " grant fewer Pages in the login dialog",
        code="TOO_MANY_PAGES",
    )


def _facebook(page: Mapping[str, Any]) -> _http.Connected | None:
    page_id, token = str(page.get("id") or ""), page.get("access_token")
    if not page_id or not isinstance(token, str) or not token:
        return None
    name = str(page.get("name") or page_id)
    return _http.Connected(
        credentials={"access_token": token, "page_id": page_id},
        external_id=page_id,
        username=name,
        name=name,
    )


def _instagram(page: Mapping[str, Any]) -> _http.Connected | None:
    account = _graph.mapping(page.get("instagram_business_account"))
    ig_user_id, token = str(account.get("id") or ""), page.get("access_token")
    if not ig_user_id or not isinstance(token, str) or not token:
        return None
    username = str(account.get("username") or ig_user_id)
    return _http.Connected(
        credentials={"access_token": token, "ig_user_id": ig_user_id},
        external_id=ig_user_id,
        username=username,
        name=username,
    )
