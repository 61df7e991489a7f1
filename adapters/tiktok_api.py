"""TikTok's wire rules (platforms.md §4), apart from the adapter: the error envelope and its
classification, the OAuth token endpoint and the connect flow, the post settings a post carries,
the FILE_UPLOAD chunk plan and an MP4's duration.

Every API answer carries ``{"error": {"code", "message", "log_id"}}``, ``"ok"`` on success, and
TikTok may answer an error with HTTP 200, so the code is read whatever the status:

    rate_limit_exceeded (any status), 429        -> RetryableError, Retry-After or a minute
    spam_risk_too_many_posts, ..._pending_share,
    reached_active_user_cap                      -> RetryableError after the window (an hour)
    access_token_invalid, scope_not_authorized,
    scope_permission_missed, 401                 -> AuthError (a 401 refreshes once first)
    internal_error, 5xx, timeouts                -> AmbiguousError on the final call (init),
                                                    RetryableError elsewhere
    anything else                                -> PermanentError with TikTok's code
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from adapters import _http, _tokens, base

PRODUCTION_API = "https://open.tiktokapis.com"
# The authorization page is on www.tiktok.com; against any other api_base (a fake, a proxy) it
# is <api_base>/v2/auth/authorize/.
AUTHORIZE_URL = "https://www.tiktok.com/v2/auth/authorize/"
TOKEN_PATH = "/v2/oauth/token/"
USER_INFO_PATH = "/v2/user/info/"
SCOPES = ("user.info.basic", "video.publish", "video.upload", "video.list")
JSON_TYPE = "application/json; charset=UTF-8"

RATE_LIMIT_WAIT = 60.0  # TikTok's limits are per minute
WINDOW_WAIT = 3600.0  # the daily caps are rolling 24 h windows whose reset TikTok does not say
WINDOW_CODES = frozenset(
    {"spam_risk_too_many_posts", "spam_risk_too_many_pending_share", "reached_active_user_cap"}
)
AUTH_CODES = frozenset({"access_token_invalid", "scope_not_authorized", "scope_permission_missed"})
REFRESH_REFUSED = frozenset({"invalid_grant"})

PRIVACY_LEVELS = (
    "PUBLIC_TO_EVERYONE",
    "MUTUAL_FOLLOW_FRIENDS",
    "FOLLOWER_OF_CREATOR",
    "SELF_ONLY",
)
_PRIVACY_ALIASES = {
    "public": "PUBLIC_TO_EVERYONE",
    "everyone": "PUBLIC_TO_EVERYONE",
    "friends": "MUTUAL_FOLLOW_FRIENDS",
    "mutual_follow_friends": "MUTUAL_FOLLOW_FRIENDS",
    "followers": "FOLLOWER_OF_CREATOR",
    "follower_of_creator": "FOLLOWER_OF_CREATOR",
    "private": "SELF_ONLY",
    "self_only": "SELF_ONLY",
    "only_me": "SELF_ONLY",
}
DEFAULT_PRIVACY = "SELF_ONLY"  # TikTok has no default; the most private one is postd's
_FLAGS = ("disable_comment", "disable_duet", "disable_stitch")
_TOGGLES = ("brand_content_toggle", "brand_organic_toggle", "is_aigc")

# fail_reason of a FAILED publish -> how a later try treats it (platforms.md §4 "Status polling")
RETRYABLE_FAIL_REASONS = frozenset({"internal", "video_pull_failed", "photo_pull_failed"})
WINDOW_FAIL_REASONS = frozenset({"spam_risk_too_many_posts"})
AUTH_FAIL_REASONS = frozenset({"auth_removed"})


def authorize_url(api_base: str) -> str:
    base_url = api_base.rstrip("/")
    return AUTHORIZE_URL if base_url == PRODUCTION_API else f"{base_url}/v2/auth/authorize/"


# --- errors -----------------------------------------------------------------------------------


def parse_error(body: Any) -> tuple[str | None, str | None]:
    """TikTok's ``error`` object (API) or OAuth error string (token endpoint)."""
    if not isinstance(body, dict):
        return None, None
    error = body.get("error")
    if isinstance(error, dict):
        code = error.get("code")
        return (str(code) if code else None), (str(error.get("message") or "") or None)
    if isinstance(error, str) and error:
        return error, str(body.get("error_description") or "") or None
    return None, None


def classify(
    response: httpx.Response, *, final: bool, now: datetime, what: str
) -> base.AdapterError | None:
    """The typed error of an API answer, or ``None`` when it is a success (code ``ok``)."""
    body = _http.body_json(response)
    code, message = parse_error(body)
    status = response.status_code
    if response.is_success:
        if not isinstance(body, dict):
            return _http.unreadable(response, final=final, what=f"tiktok {what}")
        if code in (None, "ok"):
            return None
    text = f"tiktok {what}: HTTP {status} {code or ''}".rstrip() + (
        f": {message}" if message else ""
    )
    kw: dict[str, Any] = {"http_status": status, "excerpt": _http.excerpt(response)}
    wait = _http.retry_after(response.headers, now)
    if code == "rate_limit_exceeded" or status == 429:
        return base.RetryableError(
            text, code=code or "RATE_LIMITED", retry_after=wait or RATE_LIMIT_WAIT, **kw
        )
    if code in WINDOW_CODES:
        return base.RetryableError(text, code=code, retry_after=wait or WINDOW_WAIT, **kw)
    if code in AUTH_CODES or status == 401:
        return base.AuthError(text, code=code or "AUTH_EXPIRED", **kw)
    if status >= 500 or code == "internal_error":
        error = base.AmbiguousError if final else base.RetryableError
        return error(text, code=code or f"HTTP_{status}", **kw)
    return base.PermanentError(text, code=code or f"HTTP_{status}", **kw)


def data_of(response: httpx.Response, *, final: bool, what: str) -> dict[str, Any]:
    """The ``data`` object of a successful answer."""
    data = _http.json_object(response, final=final, what=f"tiktok {what}").get("data")
    if not isinstance(data, dict):
        raise _http.unreadable(response, final=final, what=f"tiktok {what}")
    return data


def failed_publish(publish_id: str, reason: str) -> base.AdapterError:
    """The error of a publish TikTok reports FAILED with ``fail_reason``."""
    text = f"tiktok: publish {publish_id} failed: {reason or 'no reason given'}"
    if reason in RETRYABLE_FAIL_REASONS:
        return base.RetryableError(text, code=reason)
    if reason in WINDOW_FAIL_REASONS:
        return base.RetryableError(text, code=reason, retry_after=WINDOW_WAIT)
    if reason in AUTH_FAIL_REASONS:
        return base.AuthError(text, code=reason)
    return base.PermanentError(text, code=reason or "PUBLISH_FAILED")


# --- the token endpoint and the connect flow --------------------------------------------------


OAuthApp = _http.OAuthApp  # the operator's app ([platforms.<name>])


async def token_request(
    client: httpx.AsyncClient, api_base: str, app: OAuthApp, form: Mapping[str, str], now: datetime
) -> dict[str, Any]:
    """``POST /v2/oauth/token/`` (form-encoded, client key and secret in the form). A refused
    grant (``invalid_grant``) is AuthError; 5xx, 429 and timeouts RetryableError; any other
    OAuth error (a misconfigured app) PermanentError with its code."""
    response = await _http.send(
        client,
        "POST",
        api_base.rstrip("/") + TOKEN_PATH,
        final=False,
        what="tiktok token",
        data={"client_key": app.client_id, "client_secret": app.client_secret, **form},
        headers={"Cache-Control": "no-cache"},
    )
    body = _http.body_json(response)
    code, message = parse_error(body)
    status = response.status_code
    if response.is_success and code is None:
        if not isinstance(body, dict) or not body.get("access_token"):
            raise _http.unreadable(response, final=False, what="tiktok token")
        return body
    if status == 429 or status >= 500:
        raise _http.status_error(
            response, final=False, now=now, what="tiktok token", parse=parse_error
        )
    text = f"tiktok token: HTTP {status} {code or ''}".rstrip() + (
        f": {message}" if message else ""
    )
    kw: dict[str, Any] = {"http_status": status, "excerpt": _http.excerpt(response)}
    if code in REFRESH_REFUSED or status == 401:
        raise base.AuthError(text, code="REFRESH_REFUSED", **kw)
    raise base.PermanentError(text, code=code or f"HTTP_{status}", **kw)


def token_credentials(data: Mapping[str, Any], now: datetime) -> dict[str, str]:
    """The stored form of a token answer (expiries in epoch seconds)."""
    return _tokens.credentials_of(
        data,
        now,
        what="tiktok token",
        default_seconds=86400,
        refresh_lifetime="refresh_expires_in",
        keep=("open_id",),
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
    """Exchange an authorization ``code`` (web apps take no PKCE verifier: ``verifier`` is sent
    only when given) and read the account with ``GET /v2/user/info/``."""
    form = _tokens.code_form(code, verifier, redirect_uri)
    async with _http.make_client(timeouts or _http.Timeouts(), transport) as client:
        creds = token_credentials(await token_request(client, api_base, app, form, now()), now())
        response = await _http.send(
            client,
            "GET",
            api_base.rstrip("/") + USER_INFO_PATH,
            final=False,
            what="tiktok user info",
            params={"fields": "open_id,union_id,avatar_url,display_name"},
            headers={"Authorization": f"Bearer {creds['access_token']}"},
        )
    error = classify(response, final=False, now=now(), what="user info")
    if error is not None:
        raise error
    user = data_of(response, final=False, what="user info").get("user") or {}
    open_id = str(user.get("open_id") or creds.get("open_id") or "")
    if not open_id:
        raise base.PermanentError("tiktok: no open_id in the answer", code="BAD_RESPONSE")
    name = str(user.get("display_name") or open_id)
    return _http.Connected(
        credentials={**creds, "open_id": open_id, "display_name": name},
        external_id=open_id,
        username=name,
        name=name,
    )


# --- what a post asks for ---------------------------------------------------------------------


def settings_of(post: base.PostPayload) -> Mapping[str, Any]:
    found = post.options.get("tiktok_settings") if post.options else None
    return found if isinstance(found, Mapping) else {}


def privacy_level(post: base.PostPayload) -> str | None:
    """The post's TikTok privacy level (``tiktok_settings.privacy_level`` or ``privacy``, TikTok's
    names or public/friends/followers/private); ``None`` when it names none TikTok knows."""
    settings = settings_of(post)
    wanted = settings.get("privacy_level", settings.get("privacy"))
    if wanted is None:
        return DEFAULT_PRIVACY
    text = str(wanted).strip()
    if text.upper() in PRIVACY_LEVELS:
        return text.upper()
    return _PRIVACY_ALIASES.get(text.lower())


def post_info(post: base.PostPayload, privacy: str, creator: Mapping[str, Any]) -> dict[str, Any]:
    """``post_info`` of a video init: the caption as ``title``, the privacy level, the
    interaction switches (off where the creator turned them off in the app) and the toggles."""
    settings = settings_of(post)
    info: dict[str, Any] = {"title": post.message or "", "privacy_level": privacy}
    for flag in _FLAGS:
        disabled_in_app = bool(creator.get(flag.removeprefix("disable_") + "_disabled"))
        info[flag] = bool(settings.get(flag, False)) or disabled_in_app
    if isinstance(settings.get("video_cover_timestamp_ms"), int):
        info["video_cover_timestamp_ms"] = settings["video_cover_timestamp_ms"]
    for toggle in _TOGGLES:
        if toggle in settings:
            info[toggle] = bool(settings[toggle])
    return info


def utf16_length(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


# --- media ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChunkPlan:
    """FILE_UPLOAD chunks (Media Transfer Guide): files under ``min_chunk`` go whole; otherwise
    ``floor(size / chunk)`` chunks, the last one taking the remainder."""

    size: int
    chunk: int
    count: int

    @classmethod
    def of(cls, size: int, chunk: int, min_chunk: int) -> ChunkPlan:
        if size < min_chunk or size <= chunk:
            return cls(size, size, 1)
        return cls(size, chunk, size // chunk)

    def ranges(self) -> list[tuple[int, int]]:
        """(first, last) byte of every chunk, inclusive."""
        bounds = [i * self.chunk for i in range(self.count)] + [self.size]
        return [(bounds[i], bounds[i + 1] - 1) for i in range(self.count)]
