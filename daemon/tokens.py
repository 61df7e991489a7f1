"""API tokens, users and brand collaborators: issuing, rotating, revoking and authenticating.

A token is ``outreply_live_`` (sandbox: ``outreply_test_``) + 48 characters of [a-z0-9] drawn
from :mod:`secrets`; legacy ``orply_live_`` tokens brought over with :func:`import_token` still
authenticate. Only the SHA-256 hex of the whole token is stored (``secret_hash``, looked up by
its unique index and compared in constant time) plus its first 19 characters (``prefix``) for
display. A token is returned once, when issued or rotated, and never logged.

Every function takes the session and ``now``; the caller owns the transaction. Bad input raises
InputError with a stable code (catalog codes such as TOO_MANY_KEYS keep their HTTP status when
an API route re-raises them) and writes nothing.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import re
import secrets
import string
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, select, union, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from daemon import config, ids
from daemon.api import deps
from daemon.api.errors import ApiError
from daemon.errors import InputError, NotFoundError
from daemon.store.hot import Hot
from daemon.store.models import ApiToken, Brand, BrandAuditEntry, Collaborator, User, UTCDateTime
from daemon.store.sync_sqlite import Reads
from daemon.timefmt import iso

LIVE_PREFIX = "outreply_live_"
SANDBOX_PREFIX = "outreply_test_"
LEGACY_PREFIX = "orply_live_"
SECRET_LENGTH = 48
DISPLAY_LENGTH = 19  # "outreply_live_ab12c": enough to recognise a token, useless to replay it
MAX_LIFETIME = timedelta(days=730)
MAX_IP_ENTRIES = 100
TIERS = ("free", "pro", "elite")
ACCESS_LEVELS = ("full", "limited")
COLLABORATOR_REMOVED = "collaborator_removed"

_ALPHABET = string.ascii_lowercase + string.digits
_WELL_FORMED = re.compile(
    rf"(?:{LIVE_PREFIX}|{SANDBOX_PREFIX})[a-z0-9]{{{SECRET_LENGTH}}}"
    rf"|{LEGACY_PREFIX}[A-Za-z0-9_-]{{16,128}}"
)
_EXPIRY = re.compile(r"(\d{1,6})([dh])")
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class AuthError(ApiError):
    """An authentication failure. ``token_id``/``user_id`` name the token when it was found (so
    uses of revoked or expired tokens can be audited); they never reach the response body."""

    def __init__(
        self,
        code: str,
        message: str | None = None,
        *,
        token_id: str | None = None,
        user_id: str | None = None,
    ) -> None:
        super().__init__(code, message)
        self.token_id: str | None = token_id
        self.user_id: str | None = user_id


# -- format -------------------------------------------------------------------------------------


def mint(kind: str = "live") -> str:
    """A new random token of ``kind`` ("live" or "sandbox")."""
    prefix = SANDBOX_PREFIX if kind == "sandbox" else LIVE_PREFIX
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(SECRET_LENGTH))


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def well_formed(raw: str) -> bool:
    return _WELL_FORMED.fullmatch(raw) is not None


def parse_expiry(text: str | None) -> timedelta | None:
    """``"30d"``, ``"12h"``, ``"never"`` (or empty): a lifetime, None meaning no expiry."""
    value = (text or "").strip().lower()
    if value in ("", "never", "none"):
        return None
    match = _EXPIRY.fullmatch(value)
    if match is None:
        raise InputError(
            "INVALID_REQUEST",
            f"expiry {text!r} is not <N>d or <N>h (e.g. 7d, 30d, 90d, 180d, 365d) or 'never'",
            field="expires",
        )
    amount = int(match.group(1))
    return timedelta(days=amount) if match.group(2) == "d" else timedelta(hours=amount)


def check_scopes(scopes: Iterable[str], *, sandbox: bool = False) -> tuple[str, ...]:
    """The scopes, deduplicated in order; each one of deps.SCOPES or "*"."""
    allowed = deps.SANDBOX_SCOPES if sandbox else (*deps.SCOPES, "*")
    out = tuple(dict.fromkeys(s.strip() for s in scopes if s.strip()))
    if not out:
        raise InputError("INVALID_REQUEST", "a token needs at least one scope", field="scopes")
    unknown = [s for s in out if s not in allowed]
    if unknown:
        raise InputError(
            "INVALID_REQUEST",
            f"unknown or disallowed scope(s) {', '.join(unknown)}; allowed: {' '.join(allowed)}",
            field="scopes",
        )
    return out


def check_ip_allowlist(entries: Iterable[str]) -> tuple[str, ...]:
    """Addresses or CIDR ranges (IPv4, or IPv6), normalised; host bits set are refused."""
    out: list[str] = []
    for entry in entries:
        text = entry.strip()
        if not text:
            continue
        try:
            net = ipaddress.ip_network(text, strict=True)
        except ValueError as exc:
            raise InputError(
                "INVALID_REQUEST", f"ip allowlist entry {text!r}: {exc}", field="ip_allowlist"
            ) from None
        out.append(str(net))
    if len(out) > MAX_IP_ENTRIES:
        raise InputError(
            "INVALID_REQUEST", f"at most {MAX_IP_ENTRIES} allowlist entries", field="ip_allowlist"
        )
    return tuple(dict.fromkeys(out))


@functools.lru_cache(maxsize=4096)
def _networks(entries: tuple[str, ...]) -> tuple[IpNetwork, ...]:
    return tuple(ipaddress.ip_network(e, strict=False) for e in entries)


def ip_allowed(ip: str | None, allowlist: Sequence[str]) -> bool:
    """True when the allowlist is empty or ``ip`` falls in one of its ranges."""
    if not allowlist:
        return True
    if ip is None:
        return False
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in net for net in _networks(tuple(allowlist)))


def status_of(token: ApiToken, now: datetime) -> str:
    if token.revoked_at is not None:
        return "revoked"
    if token.expires_at is not None and token.expires_at <= now:
        return "expired"
    return "active"


def token_dict(token: ApiToken, now: datetime) -> dict[str, Any]:
    """What may be shown of a token: never its secret or hash."""
    return {
        "id": token.id,
        "user_id": token.user_id,
        "name": token.name,
        "kind": token.kind,
        "prefix": token.prefix,
        "status": status_of(token, now),
        "scopes": list(token.scopes),
        "brand_ids": list(token.brand_ids),
        "ip_allowlist": list(token.ip_allowlist),
        "expires_at": iso(token.expires_at),
        "revoked_at": iso(token.revoked_at),
        "revoke_reason": token.revoke_reason,
        "issued_by_collaborator_id": token.issued_by_collaborator_id,
        "on_behalf_of_brand_id": token.on_behalf_of_brand_id,
        "created_at": iso(token.created_at),
        "rotated_at": iso(token.rotated_at),
        "last_used_at": iso(token.last_used_at),
        "request_count": token.request_count,
    }


# -- users --------------------------------------------------------------------------------------


async def add_user(
    session: AsyncSession,
    email: str,
    now: datetime,
    tier: str = "free",
    firstname: str | None = None,
    lastname: str | None = None,
) -> tuple[User, str]:
    """A new user and its sandbox token (returned once, as the signup response does)."""
    email = email.strip()
    local, at, domain = email.partition("@")
    if not (local and at and "." in domain) or len(email) > 320 or any(c.isspace() for c in email):
        raise InputError("INVALID_REQUEST", f"not an email address: {email!r}", field="email")
    if tier not in TIERS:
        raise InputError("INVALID_REQUEST", f"tier must be one of {', '.join(TIERS)}", field="tier")
    taken = await session.scalar(select(User.id).where(func.lower(User.email) == email.lower()))
    if taken is not None:
        raise InputError("INVALID_REQUEST", f"a user with email {email} exists", field="email")
    user = User(
        id=ids.new_id(now.timestamp()),
        email=email,
        firstname=firstname,
        lastname=lastname,
        tier=tier,
        created_at=now,
    )
    session.add(user)
    await session.flush()
    _, sandbox = await issue_sandbox_token(session, user.id, now)
    return user, sandbox


async def find_user(session: AsyncSession, ref: str | None) -> User:
    """A user by id or email; with ``ref`` None, the only user (an error when not exactly one)."""
    if ref is None:
        users = list(await session.scalars(select(User).limit(2)))
        if len(users) != 1:
            raise InputError(
                "INVALID_REQUEST",
                "pass --user: there is no user yet (postd user add)"
                if not users
                else "pass --user: there are several users",
                field="user",
            )
        return users[0]
    column = func.lower(User.email) if "@" in ref else User.id
    user = await session.scalar(select(User).where(column == (ref.lower() if "@" in ref else ref)))
    if user is None:
        raise NotFoundError(f"unknown user {ref!r}")
    return user


async def list_users(session: AsyncSession) -> list[User]:
    return list(await session.scalars(select(User).order_by(User.created_at, User.id)))


async def issue_sandbox_token(
    session: AsyncSession, user_id: str, now: datetime
) -> tuple[ApiToken, str]:
    """The user's one sandbox token (read-only scopes, no expiry). One per user, ever: a second
    one would reset the 100-request lifetime cap; rotate it instead if it leaked."""
    existing = await session.scalar(
        select(ApiToken.id).where(ApiToken.user_id == user_id, ApiToken.kind == "sandbox")
    )
    if existing is not None:
        raise InputError(
            "INVALID_REQUEST", f"user {user_id} already has a sandbox token ({existing}): rotate it"
        )
    raw = mint("sandbox")
    token = _new_token(
        raw,
        user_id=user_id,
        name="Sandbox",
        kind="sandbox",
        scopes=deps.SANDBOX_SCOPES,
        now=now,
    )
    session.add(token)
    return token, raw


# -- tokens -------------------------------------------------------------------------------------


def _new_token(
    raw: str,
    *,
    user_id: str,
    name: str,
    kind: str,
    scopes: Sequence[str],
    now: datetime,
    brand_ids: Sequence[str] = (),
    ip_allowlist: Sequence[str] = (),
    expires_at: datetime | None = None,
    collaborator: Collaborator | None = None,
) -> ApiToken:
    return ApiToken(
        id=ids.new_id(now.timestamp()),
        user_id=user_id,
        name=name,
        kind=kind,
        prefix=raw[:DISPLAY_LENGTH],
        secret_hash=hash_token(raw),
        scopes=list(scopes),
        brand_ids=list(brand_ids),
        ip_allowlist=list(ip_allowlist),
        expires_at=expires_at,
        issued_by_collaborator_id=collaborator.id if collaborator else None,
        on_behalf_of_brand_id=collaborator.brand_id if collaborator else None,
        created_at=now,
        request_count=0,
    )


async def reachable_brand_ids(db: AsyncSession | AsyncConnection, user_id: str) -> set[str]:
    """Brands the user owns plus brands where the user is a (non-removed) collaborator."""
    return set((await db.execute(_REACH, {"uid": user_id})).scalars())


async def create_token(
    session: AsyncSession,
    *,
    user_id: str,
    name: str,
    scopes: Iterable[str],
    now: datetime,
    brand_ids: Iterable[str] = (),
    expires_in: timedelta | None = None,
    ip_allowlist: Iterable[str] = (),
    collaborator_id: str | None = None,
    tiers: config.TierSettings | None = None,
    actor_user_id: str | None = None,
) -> tuple[ApiToken, str]:
    """A new live token; returns the row and the token (the only time it exists in clear)."""
    raw = mint("live")
    token = await _issue(
        session,
        raw,
        user_id=user_id,
        name=name,
        scopes=scopes,
        now=now,
        brand_ids=brand_ids,
        expires_in=expires_in,
        ip_allowlist=ip_allowlist,
        collaborator_id=collaborator_id,
        tiers=tiers,
        actor_user_id=actor_user_id,
    )
    return token, raw


async def import_token(session: AsyncSession, raw_token: str, **kwargs: Any) -> ApiToken:
    """Adopt an existing token (e.g. an ``orply_live_`` one from OutReply) so integrations keep
    working; same keyword arguments and checks as :func:`create_token`."""
    raw = raw_token.strip()
    if not well_formed(raw) or raw.startswith(SANDBOX_PREFIX):
        raise InputError("INVALID_REQUEST", "not a live API token", field="token")
    taken = await session.scalar(select(ApiToken.id).where(ApiToken.secret_hash == hash_token(raw)))
    if taken is not None:
        raise InputError("INVALID_REQUEST", f"this token is already known as {taken}")
    return await _issue(session, raw, **kwargs)


async def _issue(
    session: AsyncSession,
    raw: str,
    *,
    user_id: str,
    name: str,
    scopes: Iterable[str],
    now: datetime,
    brand_ids: Iterable[str] = (),
    expires_in: timedelta | None = None,
    ip_allowlist: Iterable[str] = (),
    collaborator_id: str | None = None,
    tiers: config.TierSettings | None = None,
    actor_user_id: str | None = None,
) -> ApiToken:
    user = await session.scalar(select(User).where(User.id == user_id).with_for_update())
    if user is None:
        raise NotFoundError(f"unknown user {user_id!r}")
    name = name.strip()
    if not name or len(name) > 200:
        raise InputError("MISSING_FIELD", "a token needs a name (1-200 characters)", field="name")
    checked_scopes = check_scopes(scopes)
    if expires_in is not None and not timedelta(0) < expires_in <= MAX_LIFETIME:
        raise InputError(
            "INVALID_REQUEST", "expiry must be between 1 hour and 2 years", field="expires"
        )
    allowlist = check_ip_allowlist(ip_allowlist)
    brands = tuple(dict.fromkeys(b.strip() for b in brand_ids if b.strip()))
    collab = None
    if collaborator_id is not None:
        collab = await _issuing_collaborator(session, collaborator_id, user_id, brands)
        brands = (collab.brand_id,)
    else:
        unreachable = set(brands) - await reachable_brand_ids(session, user_id)
        if unreachable:
            raise InputError(
                "BRAND_NOT_AUTHORIZED",
                f"user {user_id} cannot reach brand(s) {', '.join(sorted(unreachable))}",
                field="brand_ids",
            )
    await _check_key_limit(session, user, now, tiers or config.TierSettings())
    token = _new_token(
        raw,
        user_id=user_id,
        name=name,
        kind="live",
        now=now,
        scopes=checked_scopes,
        brand_ids=brands,
        ip_allowlist=allowlist,
        expires_at=None if expires_in is None else now + expires_in,
        collaborator=collab,
    )
    session.add(token)
    _audit_token(session, token, "token.create", now, actor_user_id)
    return token


async def _issuing_collaborator(
    session: AsyncSession, collaborator_id: str, user_id: str, brands: tuple[str, ...]
) -> Collaborator:
    collab = await session.get(Collaborator, collaborator_id)
    if collab is None or collab.removed_at is not None:
        raise NotFoundError(f"unknown collaborator {collaborator_id!r}")
    if collab.user_id != user_id:
        raise InputError(
            "INVALID_REQUEST",
            f"collaborator {collaborator_id} is user {collab.user_id}, not {user_id}",
            field="collaborator_id",
        )
    if collab.access != "full":
        raise InputError(
            "COLLABORATOR_INSUFFICIENT", "only collaborators with full access can create keys"
        )
    if brands and brands != (collab.brand_id,):
        raise InputError(
            "BRAND_NOT_AUTHORIZED",
            f"a collaborator-issued key is bound to brand {collab.brand_id} only",
            field="brand_ids",
        )
    return collab


async def _check_key_limit(
    session: AsyncSession, user: User, now: datetime, tiers: config.TierSettings
) -> None:
    limit = tiers.get(user.tier).active_keys
    active = await session.scalar(
        select(func.count())
        .select_from(ApiToken)
        .where(
            ApiToken.user_id == user.id,
            ApiToken.kind == "live",
            ApiToken.revoked_at.is_(None),
            (ApiToken.expires_at.is_(None)) | (ApiToken.expires_at > now),
        )
    )
    if (active or 0) >= limit:
        raise InputError(
            "TOO_MANY_KEYS",
            f"the {user.tier} tier allows {limit} active keys; revoke one first",
            limit=limit,
        )


def _token_brands(token: ApiToken) -> tuple[str, ...]:
    if token.on_behalf_of_brand_id:
        return (token.on_behalf_of_brand_id,)
    return tuple(token.brand_ids)


def _audit_token(
    session: AsyncSession, token: ApiToken, action: str, now: datetime, actor: str | None
) -> None:
    """The brand's timeline: a row per brand the token is bound to (collaborator-issued keys
    and brand-restricted keys; an unrestricted key belongs to no single brand)."""
    for brand_id in _token_brands(token):
        session.add(
            BrandAuditEntry(
                brand_id=brand_id,
                actor_user_id=actor or token.user_id,
                collaborator_id=token.issued_by_collaborator_id,
                action=action,
                token_id=token.id,
                detail={
                    "name": token.name,
                    "prefix": token.prefix,
                    "scopes": list(token.scopes),
                    **({"reason": token.revoke_reason} if token.revoke_reason else {}),
                },
                created_at=now,
            )
        )


async def get_token(session: AsyncSession, token_id: str) -> ApiToken:
    token = await session.get(ApiToken, token_id)
    if token is None:
        raise NotFoundError(f"unknown token {token_id!r}")
    return token


async def list_tokens(session: AsyncSession, user_id: str | None = None) -> list[ApiToken]:
    stmt = select(ApiToken).order_by(ApiToken.created_at, ApiToken.id)
    if user_id is not None:
        stmt = stmt.where(ApiToken.user_id == user_id)
    return list(await session.scalars(stmt))


async def revoke_token(
    session: AsyncSession,
    token_id: str,
    now: datetime,
    *,
    reason: str = "revoked",
    actor_user_id: str | None = None,
) -> ApiToken:
    """Revoke at once; revoking a revoked token changes nothing."""
    token = await get_token(session, token_id)
    if token.revoked_at is None:
        token.revoked_at = now
        token.revoke_reason = reason
        _audit_token(session, token, "token.revoke", now, actor_user_id)
    return token


async def rotate_token(
    session: AsyncSession, token_id: str, now: datetime, *, actor_user_id: str | None = None
) -> tuple[ApiToken, str]:
    """A new secret for the same token (id, name, scopes, brands, expiry, usage); the previous
    secret stops working when this transaction commits."""
    token = await get_token(session, token_id)
    if token.revoked_at is not None:
        raise InputError("TOKEN_REVOKED", f"token {token_id} is revoked; create a new one")
    raw = mint(token.kind)
    token.secret_hash = hash_token(raw)
    token.prefix = raw[:DISPLAY_LENGTH]
    token.rotated_at = now
    _audit_token(session, token, "token.rotate", now, actor_user_id)
    return token, raw


# -- collaborators ------------------------------------------------------------------------------


def _check_access(access: str) -> str:
    if access not in ACCESS_LEVELS:
        raise InputError(
            "INVALID_REQUEST", f"access must be one of {', '.join(ACCESS_LEVELS)}", field="access"
        )
    return access


def _audit_collaborator(
    session: AsyncSession, collab: Collaborator, action: str, now: datetime, **detail: Any
) -> None:
    session.add(
        BrandAuditEntry(
            brand_id=collab.brand_id,
            actor_user_id=None,
            collaborator_id=collab.id,
            action=action,
            detail={"user_id": collab.user_id, "access": collab.access, **detail},
            created_at=now,
        )
    )


async def _brand_for(session: AsyncSession, brand_id: str, user_id: str) -> Brand:
    """The brand, once both it and the user exist (NotFoundError naming the one that does not)."""
    brand = await session.get(Brand, brand_id)
    if brand is None:
        raise NotFoundError(f"unknown brand {brand_id!r}")
    if await session.get(User, user_id) is None:
        raise NotFoundError(f"unknown user {user_id!r}")
    return brand


async def _collaboration(session: AsyncSession, brand_id: str, user_id: str) -> Collaborator | None:
    """The user's collaborator row on the brand, removed or not (one per pair)."""
    return await session.scalar(
        select(Collaborator).where(
            Collaborator.brand_id == brand_id, Collaborator.user_id == user_id
        )
    )


async def add_collaborator(
    session: AsyncSession, *, brand_id: str, user_id: str, now: datetime, access: str = "full"
) -> Collaborator:
    """Make a user a collaborator of a brand (re-adding a removed one reuses its row; the keys
    it issued before stay revoked)."""
    _check_access(access)
    brand = await _brand_for(session, brand_id, user_id)
    if brand.owner_id == user_id:
        raise InputError("INVALID_REQUEST", f"user {user_id} owns brand {brand_id}")
    collab = await _collaboration(session, brand_id, user_id)
    if collab is not None and collab.removed_at is None:
        raise InputError(
            "INVALID_REQUEST", f"user {user_id} already collaborates on it ({collab.id})"
        )
    if collab is None:
        collab = Collaborator(
            id=ids.new_id(now.timestamp()),
            brand_id=brand_id,
            user_id=user_id,
            access=access,
            created_at=now,
        )
        session.add(collab)
    else:
        collab.removed_at = None
        collab.access = access
    _audit_collaborator(session, collab, "collaborator.add", now)
    return collab


async def set_brand_owner(
    session: AsyncSession, *, brand_id: str, user_id: str, now: datetime
) -> Brand:
    """Give a brand to a user (a brand made before its user has none, and no token reaches it).
    Reach is computed per request, so the new owner's tokens reach it at once and the previous
    owner's no longer do; recorded in the brand's audit log as ``brand.owner``."""
    brand = await _brand_for(session, brand_id, user_id)
    sharing = await _collaboration(session, brand_id, user_id)
    if sharing is not None and sharing.removed_at is None:
        raise InputError(
            "INVALID_REQUEST",
            f"user {user_id} collaborates on brand {brand_id} ({sharing.id}): remove the "
            "collaborator first",
        )
    if brand.owner_id != user_id:
        session.add(
            BrandAuditEntry(
                brand_id=brand_id,
                actor_user_id=None,
                action="brand.owner",
                detail={"from": brand.owner_id, "to": user_id},
                created_at=now,
            )
        )
        brand.owner_id = user_id
    return brand


async def _active_collaborator(session: AsyncSession, collaborator_id: str) -> Collaborator:
    collab = await session.get(Collaborator, collaborator_id)
    if collab is None or collab.removed_at is not None:
        raise NotFoundError(f"unknown collaborator {collaborator_id!r}")
    return collab


async def collaborator_user(session: AsyncSession, collaborator_id: str) -> User:
    """The user behind an active collaborator."""
    collab = await _active_collaborator(session, collaborator_id)
    member = await session.get(User, collab.user_id)
    assert member is not None  # a foreign key
    return member


async def set_access(
    session: AsyncSession, collaborator_id: str, access: str, now: datetime
) -> Collaborator:
    """Change a collaborator's access. Its keys are kept: below "full" they answer
    COLLABORATOR_INSUFFICIENT, and work again if full access is restored."""
    _check_access(access)
    collab = await _active_collaborator(session, collaborator_id)
    if collab.access != access:
        previous, collab.access = collab.access, access
        _audit_collaborator(session, collab, "collaborator.access", now, previous=previous)
    return collab


async def remove_collaborator(
    session: AsyncSession, collaborator_id: str, now: datetime
) -> list[str]:
    """Remove a collaborator and revoke every key it issued; returns the revoked token ids."""
    collab = await _active_collaborator(session, collaborator_id)
    collab.removed_at = now
    issued = await session.scalars(
        select(ApiToken).where(
            ApiToken.issued_by_collaborator_id == collab.id, ApiToken.revoked_at.is_(None)
        )
    )
    revoked: list[str] = []
    for token in issued:
        token.revoked_at = now
        token.revoke_reason = COLLABORATOR_REMOVED
        _audit_token(session, token, "token.revoke", now, None)
        revoked.append(token.id)
    _audit_collaborator(session, collab, "collaborator.remove", now, revoked_tokens=revoked)
    return revoked


# -- authentication (every request) -------------------------------------------------------------

# Core statements on the tables, built once: authentication runs on every request, and the ORM's
# per-call overhead (not the database) dominated its cost.
_TOKENS = cast(Table, ApiToken.__table__)
_USERS = cast(Table, User.__table__)
_COLLABS = cast(Table, Collaborator.__table__)
_BRANDS = cast(Table, Brand.__table__)
_SHARERS = _COLLABS.alias("sharers")
# The brands the token's user reaches, as space-separated ids, so that authentication is one
# statement (aggregate_strings: group_concat on SQLite, string_agg on PostgreSQL).
_OWNED = (
    select(func.aggregate_strings(_BRANDS.c.id, " "))
    .where(_BRANDS.c.owner_id == _TOKENS.c.user_id)
    .scalar_subquery()
)
_SHARED = (
    select(func.aggregate_strings(_SHARERS.c.brand_id, " "))
    .where(_SHARERS.c.user_id == _TOKENS.c.user_id, _SHARERS.c.removed_at.is_(None))
    .scalar_subquery()
)
_AUTH = Hot(
    select(
        *(
            _TOKENS.c[name]
            for name in (
                "id",
                "name",
                "prefix",
                "kind",
                "user_id",
                "secret_hash",
                "scopes",
                "brand_ids",
                "ip_allowlist",
                "expires_at",
                "revoked_at",
                "revoke_reason",
                "issued_by_collaborator_id",
                "on_behalf_of_brand_id",
                "request_count",
            )
        ),
        _USERS.c.email,
        _USERS.c.firstname,
        _USERS.c.lastname,
        _USERS.c.tier,
        _COLLABS.c.access,
        _COLLABS.c.removed_at,
        _OWNED.label("owned"),
        _SHARED.label("shared"),
    )
    .select_from(
        _TOKENS.join(_USERS, _USERS.c.id == _TOKENS.c.user_id).outerjoin(
            _COLLABS, _COLLABS.c.id == _TOKENS.c.issued_by_collaborator_id
        )
    )
    .where(_TOKENS.c.secret_hash == bindparam("digest"))
)
_REACH = union(
    select(_BRANDS.c.id).where(_BRANDS.c.owner_id == bindparam("uid")),
    select(_COLLABS.c.brand_id).where(
        _COLLABS.c.user_id == bindparam("uid"), _COLLABS.c.removed_at.is_(None)
    ),
)
_TOUCH = (
    update(_TOKENS)
    .where(_TOKENS.c.id == bindparam("tid"))
    .values(
        last_used_at=bindparam("at", type_=UTCDateTime()),
        request_count=_TOKENS.c.request_count + 1,
    )
)


async def authenticate(
    db: AsyncSession | AsyncConnection | Reads,
    raw_token: str | None,
    client_ip: str | None,
    now: datetime,
    *,
    touch: bool = True,
) -> deps.Principal:
    """The Principal of a request's token, or AuthError (an ApiError) with MISSING_TOKEN,
    INVALID_TOKEN, TOKEN_REVOKED, TOKEN_EXPIRED (401), IP_NOT_ALLOWED or
    COLLABORATOR_INSUFFICIENT (403).

    One indexed statement (token, user, issuing collaborator and the brands the user reaches);
    ``db`` may be a session or a connection. The Principal counts this request
    (``request_count`` + 1, ``last_used_at`` = now); with ``touch`` one UPDATE stores that, and
    without it the caller records the use itself (the API gate batches them).
    """
    if not raw_token:
        raise AuthError("MISSING_TOKEN", "No API token in the request")
    if not well_formed(raw_token):
        raise AuthError("INVALID_TOKEN", "This API token is malformed or not found")
    digest = hash_token(raw_token)
    row = await _AUTH.first(db, {"digest": digest})
    if row is None or not hmac.compare_digest(row.secret_hash, digest):
        raise AuthError("INVALID_TOKEN", "This API token is malformed or not found")
    _check_usable(row, client_ip, now)
    restricted = (row.on_behalf_of_brand_id,) if row.on_behalf_of_brand_id else tuple(row.brand_ids)
    if row.issued_by_collaborator_id:
        reach = {row.on_behalf_of_brand_id}
    else:
        reach = set(f"{row.owned or ''} {row.shared or ''}".split())
    if restricted:
        reach &= set(restricted)
    scopes = tuple(row.scopes)
    if row.kind == "sandbox":
        scopes = tuple(s for s in scopes if s in deps.SANDBOX_SCOPES)
    if touch:
        await db.execute(_TOUCH, {"tid": row.id, "at": now})
    return deps.Principal(
        token_id=row.id,
        token_name=row.name,
        token_prefix=row.prefix,
        kind=row.kind,
        user_id=row.user_id,
        email=row.email,
        firstname=row.firstname,
        lastname=row.lastname,
        tier=row.tier,
        scopes=scopes,
        brand_ids=frozenset(reach),
        restricted_brand_ids=restricted,
        expires_at=row.expires_at,
        last_used_at=now,
        request_count=row.request_count + 1,
        collaborator_id=row.issued_by_collaborator_id,
    )


def _check_usable(row: Any, client_ip: str | None, now: datetime) -> None:
    who = {"token_id": row.id, "user_id": row.user_id}
    if row.revoked_at is not None:
        why = (
            ": its issuing collaborator was removed from the brand"
            if row.revoke_reason == COLLABORATOR_REMOVED
            else ""
        )
        raise AuthError("TOKEN_REVOKED", f"This API token was revoked{why}", **who)
    if row.issued_by_collaborator_id and row.removed_at is not None:
        raise AuthError("TOKEN_REVOKED", "This API token's collaborator was removed", **who)
    if row.expires_at is not None and row.expires_at <= now:
        raise AuthError("TOKEN_EXPIRED", f"This API token expired at {iso(row.expires_at)}", **who)
    if not ip_allowed(client_ip, row.ip_allowlist):
        raise AuthError(
            "IP_NOT_ALLOWED",
            f"Requests from {client_ip or 'an unknown address'} are not allowed for this token",
            **who,
        )
    if row.issued_by_collaborator_id and row.access != "full":
        raise AuthError(
            "COLLABORATOR_INSUFFICIENT",
            "The collaborator who issued this API token no longer has full access",
            **who,
        )
