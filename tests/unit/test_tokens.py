"""Token format, validation helpers and request-side parsing: pure functions, no database."""

from __future__ import annotations

import hashlib
import ipaddress
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon import tokens
from daemon.api import auth, deps, gate
from daemon.errors import ConfigError, InputError

TRUSTED = auth.parse_trusted_proxies(["10.0.0.0/8", "192.0.2.1"])


def _scope(peer: str | None, *headers: tuple[str, str]) -> dict[str, Any]:
    return {
        "type": "http",
        "client": None if peer is None else (peer, 5000),
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
    }


def test_minted_tokens_have_the_documented_shape() -> None:
    """Live tokens are outreply_live_ + 48 [a-z0-9]; sandbox ones outreply_test_; all distinct."""
    live = {tokens.mint("live") for _ in range(200)}
    assert len(live) == 200
    for raw in live:
        assert raw.startswith("outreply_live_") and len(raw) == 14 + 48
        assert set(raw[14:]) <= set("abcdefghijklmnopqrstuvwxyz0123456789")
        assert tokens.well_formed(raw)
    sandbox = tokens.mint("sandbox")
    assert sandbox.startswith("outreply_test_") and tokens.well_formed(sandbox)


def test_hash_is_sha256_hex_of_the_whole_token() -> None:
    """secret_hash is the SHA-256 hex digest of the full token string."""
    raw = tokens.mint()
    assert tokens.hash_token(raw) == hashlib.sha256(raw.encode()).hexdigest()
    assert len(raw[: tokens.DISPLAY_LENGTH]) == 19


@pytest.mark.parametrize(
    ("raw", "ok"),
    [
        ("outreply_live_" + "a1" * 24, True),
        ("outreply_test_" + "z9" * 24, True),
        ("orply_live_" + "AbC123xyz_-" * 3, True),
        ("outreply_live_" + "a1" * 23, False),  # 46 characters
        ("outreply_live_" + "A1" * 24, False),  # upper case is not minted
        ("outreply_prod_" + "a1" * 24, False),
        ("orply_live_short", False),
        ("Bearer outreply_live_" + "a1" * 24, False),
        ("", False),
    ],
)
def test_well_formed_accepts_the_three_prefixes_only(raw: str, ok: bool) -> None:
    """Format check before any lookup: two current prefixes plus the legacy orply_live_."""
    assert tokens.well_formed(raw) is ok


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7d", timedelta(days=7)),
        ("30d", timedelta(days=30)),
        ("365d", timedelta(days=365)),
        ("12h", timedelta(hours=12)),
        (" 90D ", timedelta(days=90)),
        ("never", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_expiry(text: str | None, expected: timedelta | None) -> None:
    """Expiry presets and custom values parse to a lifetime; 'never' means none."""
    assert tokens.parse_expiry(text) == expected


@pytest.mark.parametrize("text", ["30", "1w", "-3d", "3.5d", "tomorrow"])
def test_parse_expiry_rejects_other_spellings(text: str) -> None:
    """Anything but <N>d, <N>h or never is INVALID_REQUEST naming the field."""
    with pytest.raises(InputError) as err:
        tokens.parse_expiry(text)
    assert err.value.code == "INVALID_REQUEST" and err.value.extra["field"] == "expires"


def test_check_scopes() -> None:
    """Known scopes and * pass (deduplicated); unknown ones and an empty set are refused."""
    assert tokens.check_scopes(["read:posts", " write:posts", "read:posts"]) == (
        "read:posts",
        "write:posts",
    )
    assert tokens.check_scopes(["*"]) == ("*",)
    for bad in (["read:everything"], [], ["  "]):
        with pytest.raises(InputError) as err:
            tokens.check_scopes(bad)
        assert err.value.code == "INVALID_REQUEST"
    with pytest.raises(InputError):
        tokens.check_scopes(["write:posts"], sandbox=True)
    assert tokens.check_scopes(deps.SANDBOX_SCOPES, sandbox=True) == deps.SANDBOX_SCOPES


def test_check_ip_allowlist() -> None:
    """Addresses and CIDRs normalise; garbage, bad prefixes and host bits are refused."""
    assert tokens.check_ip_allowlist(["203.0.113.7", "198.51.100.0/24", ""]) == (
        "203.0.113.7/32",
        "198.51.100.0/24",
    )
    for bad in ("999.1.1.1", "10.0.0.0/33", "10.0.0.5/24", "example.com"):
        with pytest.raises(InputError):
            tokens.check_ip_allowlist([bad])


@pytest.mark.parametrize(
    ("ip", "allowlist", "ok"),
    [
        ("203.0.113.7", [], True),
        (None, [], True),
        ("203.0.113.7", ["203.0.113.0/24"], True),
        ("203.0.114.7", ["203.0.113.0/24"], False),
        ("::ffff:203.0.113.7", ["203.0.113.7/32"], True),
        ("2001:db8::1", ["203.0.113.0/24"], False),
        (None, ["203.0.113.0/24"], False),
        ("not-an-ip", ["0.0.0.0/0"], False),
    ],
)
def test_ip_allowed(ip: str | None, allowlist: list[str], ok: bool) -> None:
    """The allowlist matches IPv4 (and IPv4-mapped IPv6); an unknown address never matches."""
    assert tokens.ip_allowed(ip, allowlist) is ok


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([("Authorization", "Bearer tok1")], "tok1"),
        ([("Authorization", "bearer   tok1  ")], "tok1"),
        ([("X-API-Key", "tok2")], "tok2"),
        ([("Authorization", "Bearer tok1"), ("X-API-Key", "tok2")], "tok1"),
        ([("Authorization", "Basic dXNlcjpwYXNz"), ("X-API-Key", "tok2")], "tok2"),
        ([("Authorization", "Basic dXNlcjpwYXNz")], None),
        ([("Authorization", "Bearer ")], None),
        ([], None),
    ],
)
def test_token_from_headers(headers: list[tuple[str, str]], expected: str | None) -> None:
    """Bearer first, then X-API-Key; other schemes carry no token."""
    assert auth.token_from_headers(_scope("1.2.3.4", *headers)["headers"]) == expected


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        ("203.0.113.7", None, "203.0.113.7"),
        ("203.0.113.7", "198.51.100.1", "203.0.113.7"),  # untrusted peer: XFF ignored
        ("10.0.0.2", None, "10.0.0.2"),
        ("10.0.0.2", "198.51.100.1", "198.51.100.1"),
        ("10.0.0.2", "6.6.6.6, 198.51.100.1", "198.51.100.1"),  # right-most untrusted
        ("10.0.0.2", "198.51.100.1, 10.1.1.1, 192.0.2.1", "198.51.100.1"),
        ("10.0.0.2", "10.1.1.1", "10.1.1.1"),  # only proxies: the farthest one
        ("10.0.0.2", "198.51.100.1:4711", "198.51.100.1"),
        ("10.0.0.2", "[2001:db8::7]:443", "2001:db8::7"),
        ("10.0.0.2", "garbage, 10.1.1.1", None),
        ("::ffff:203.0.113.7", None, "203.0.113.7"),
        (None, "198.51.100.1", None),
    ],
)
def test_client_ip(peer: str | None, xff: str | None, expected: str | None) -> None:
    """Socket peer, or the right-most untrusted X-Forwarded-For hop behind trusted proxies."""
    headers = [] if xff is None else [("X-Forwarded-For", xff)]
    assert auth.client_ip(_scope(peer, *headers), TRUSTED) == expected


def test_client_ip_joins_repeated_forwarded_headers() -> None:
    """Several X-Forwarded-For headers read as one list, in order."""
    scope = _scope("10.0.0.2", ("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "10.3.3.3"))
    assert auth.client_ip(scope, TRUSTED) == "6.6.6.6"


@given(
    peer=st.ip_addresses(v=4).filter(lambda a: not any(a in n for n in TRUSTED)),
    forged=st.lists(st.ip_addresses(v=4).map(str), max_size=4),
)
def test_untrusted_peer_is_always_the_client(
    peer: ipaddress.IPv4Address, forged: list[str]
) -> None:
    """Whatever X-Forwarded-For says, an untrusted peer's own address is the client."""
    scope = _scope(str(peer), ("X-Forwarded-For", ", ".join(forged)))
    assert auth.client_ip(scope, TRUSTED) == str(peer)


def test_bad_trusted_proxy_is_a_config_error() -> None:
    """A malformed api.trusted_proxies entry fails at start naming the key."""
    with pytest.raises(ConfigError) as err:
        auth.parse_trusted_proxies(["10.0.0.0/8", "proxy.local"])
    assert err.value.key == "api.trusted_proxies"


@pytest.mark.parametrize(
    ("path", "guarded"),
    [
        ("/api/v1/", False),
        ("/api/v1", False),
        ("/api/v1/errors", False),
        ("/api/v1/openapi.json", False),
        ("/api/v1/me", True),
        ("/api/v1/posts/scheduled/abc", True),
        ("/api/v1/errors/extra", True),
        ("/api/v10/me", False),
        ("/healthz", False),
        ("/v1/engagement", False),
    ],
)
def test_gate_guards_api_paths_except_public_ones(path: str, guarded: bool) -> None:
    """Only /api/v1 paths are authenticated, minus the root probe, errors and openapi."""
    assert gate.guarded(path) is guarded


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        ({"path": "/api/v1/me"}, "/api/v1/me"),
        ({"path": "/api/v1/me", "root_path": "/api/v1", "app_root_path": ""}, "/api/v1/me"),
        ({"path": "/postd/api/v1/me", "root_path": "/postd"}, "/api/v1/me"),
        (
            {"path": "/postd/api/v1/me", "root_path": "/postd/api/v1", "app_root_path": "/postd"},
            "/api/v1/me",
        ),
        ({"path": "/api/v1/me", "root_path": "/postd"}, "/api/v1/me"),
    ],
)
def test_route_path_is_relative_to_the_application_root(
    scope: dict[str, Any], expected: str
) -> None:
    """Wrapping or mounted at /api/v1, behind a proxy root path or not: the same API path."""
    assert gate.route_path(scope) == expected
