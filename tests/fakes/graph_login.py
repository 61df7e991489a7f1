"""Facebook Login on the Graph fake (tests/fakes/graph.py): the login dialog (``dialog``; on
www.facebook.com in production: the user consents at once and is redirected with a code for the
Pages in :attr:`FakeGraph.granted`), ``oauth/access_token`` (``token``: code exchange with PKCE,
``fb_exchange_token``) and ``/me/accounts`` (``accounts``, :attr:`FakeGraph.accounts_page_size`
per page). The state (codes, User and Page tokens) lives on the :class:`FakeGraph`."""

from __future__ import annotations

import base64
import hashlib
import secrets
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from adapters import _graph
from tests.fakes._server import Recorded

if TYPE_CHECKING:
    from tests.fakes.graph import FakeGraph

CLIENT_ID = "meta-app-1234"
CLIENT_SECRET = "meta-secret-5678"
SHORT_LIVED = 5400  # seconds; a short-lived User token lasts an hour or two
LONG_LIVED = 5_183_944  # about 60 days (the docs' sample answer)
PREFIX = f"/{_graph.GRAPH_VERSION}"


def error(code: int, message: str, subcode: int | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"message": message, "type": "OAuthException", "code": code}
    if subcode is not None:
        body["error_subcode"] = subcode
    return {"error": {**body, **extra, "fbtrace_id": "AbCdEf"}}


def _params(rec: Recorded) -> dict[str, str]:
    params = {k: v[0] for k, v in rec.query.items()}
    if rec.method == "POST":
        params.update({k: v[0] for k, v in parse_qs(rec.body.decode()).items()})
    return params


class FakeLogin:
    """The Facebook Login handlers of one :class:`FakeGraph`."""

    def __init__(self, fake: FakeGraph) -> None:
        self.fake = fake

    async def dialog(self, _r: Request, rec: Recorded, _mode: str | None) -> Response:
        """The user signs in and consents at once to the Pages in :attr:`granted` (or denies)."""
        params = _params(rec)
        missing = [n for n in ("client_id", "redirect_uri", "state", "scope") if not params.get(n)]
        if missing or params.get("response_type", "code") != "code":
            return self.fake._json(error(100, f"Invalid parameter: missing {missing}"), 400)
        if params["client_id"] != CLIENT_ID:
            message = "Error validating application. Invalid application ID."
            return self.fake._json(error(101, message), 400)
        if "code_challenge" in params and params.get("code_challenge_method") != "S256":
            return self.fake._json(error(100, "Invalid code_challenge_method"), 400)
        if self.fake.deny:
            query = {
                "error": "access_denied",
                "error_code": "200",
                "error_description": "Permissions error",
                "error_reason": "user_denied",
                "state": params["state"],
            }
        else:
            code = f"AQ{secrets.token_hex(12)}"
            self.fake.codes[code] = {
                "challenge": params.get("code_challenge"),
                "redirect_uri": params["redirect_uri"],
                "pages": list(self.fake.granted),
                "scopes": params["scope"].split(","),
            }
            query = {"code": code, "state": params["state"]}
        return RedirectResponse(f"{params['redirect_uri']}?{urlencode(query)}", 302)

    def _user_token(self, pages: list[str], long_lived: bool) -> dict[str, Any]:
        token = f"EAA{'L' if long_lived else 'S'}{secrets.token_hex(12)}"
        self.fake.user_tokens[token] = {"pages": pages, "long_lived": long_lived}
        lifetime = LONG_LIVED if long_lived else SHORT_LIVED
        return {"access_token": token, "token_type": "bearer", "expires_in": lifetime}

    async def token(self, _r: Request, rec: Recorded, mode: str | None) -> Response:
        params = _params(rec)
        if params.get("client_id") != CLIENT_ID or params.get("client_secret") != CLIENT_SECRET:
            return self.fake._json(error(1, "Error validating client secret."), 400)
        if mode == "used_code":
            return self.fake._json(error(100, "This authorization code has been used.", 36009), 400)
        if params.get("grant_type") == "fb_exchange_token":
            user = self.fake.user_tokens.get(params.get("fb_exchange_token", ""))
            if user is None:
                return self.fake._json(error(190, "Invalid OAuth access token."), 400)
            return self.fake._json(self._user_token(user["pages"], long_lived=True))
        grant = self.fake.codes.pop(params.get("code", ""), None)
        if grant is None:
            return self.fake._json(error(100, "Invalid verification code format."), 400)
        if params.get("redirect_uri") != grant["redirect_uri"]:
            message = "Error validating verification code. Please make sure your redirect_uri"
            return self.fake._json(error(100, message + " is identical", 36008), 400)
        if grant["challenge"] is not None:
            verifier = params.get("code_verifier", "")
            digest = hashlib.sha256(verifier.encode()).digest()
            if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != grant["challenge"]:
                return self.fake._json(error(100, "Invalid code verifier."), 400)
        return self.fake._json(self._user_token(grant["pages"], long_lived=False))

    async def accounts(self, _r: Request, rec: Recorded, _mode: str | None) -> Response:
        """The Pages the token's grant covers, each with a Page token, ``limit`` (at most
        :attr:`accounts_page_size`) per page, the cursor an index."""
        params = _params(rec)
        user = self.fake.user_tokens.get(params.get("access_token", ""))
        if user is None:
            return self.fake._json(error(190, "Invalid OAuth access token."), 400)
        fields = params.get("fields", "id,name")
        pages = [p for p in self.fake.pages if p in user["pages"]]
        start = int(params.get("after", 0))
        size = min(int(params.get("limit", 25)), self.fake.accounts_page_size)
        data = []
        for page_id in pages[start : start + size]:
            item: dict[str, Any] = {"id": page_id, "name": self.fake.pages[page_id]["name"]}
            if "access_token" in fields:
                token = f"EAAP{secrets.token_hex(12)}"
                self.fake.tokens[token] = page_id
                self.fake.page_tokens[page_id] = token
                item["access_token"] = token
            ig = self.fake.pages[page_id]["ig"]
            if "instagram_business_account" in fields and ig is not None:
                item["instagram_business_account"] = dict(ig)
            data.append(item)
        answer: dict[str, Any] = {"data": data}
        if data:
            answer["paging"] = {"cursors": {"before": str(start), "after": str(start + size)}}
            if start + size < len(pages):
                after = urlencode({**params, "after": str(start + size)})
                answer["paging"]["next"] = f"{self.fake.base_url}{PREFIX}/me/accounts?{after}"
        return self.fake._json(answer)
