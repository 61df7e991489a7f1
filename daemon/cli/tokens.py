"""User, API token and collaborator commands.

A token is printed once, on the last line of ``token create`` / ``token rotate`` (and the
sandbox token on the line before the user id of ``user add``); nothing else ever prints one.
``token create`` without ``--scopes`` grants the read-only scopes: write access is asked for.
"""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Any

import click
from sqlalchemy.ext.asyncio import AsyncSession

from daemon import clock as clock_mod
from daemon import config, tokens
from daemon.api import deps
from daemon.cli._base import Context, echo_json, main, pass_ctx
from daemon.timefmt import iso

DEFAULT_SCOPES = tuple(s for s in deps.SCOPES if s.startswith("read:"))


def _now() -> datetime:
    return clock_mod.SystemClock().now()


def _split(values: tuple[str, ...]) -> list[str]:
    """Repeated options and comma/space separated lists alike."""
    return [part for value in values for part in value.replace(",", " ").split()]


@main.group()
def user() -> None:
    """Users own brands and API tokens."""


@user.command("add")
@click.argument("email")
@click.option("--tier", type=click.Choice(tokens.TIERS), default="free", show_default=True)
@click.option("--firstname", default=None)
@click.option("--lastname", default=None)
@pass_ctx
def user_add(
    ctx: Context, email: str, tier: str, firstname: str | None, lastname: str | None
) -> None:
    """Add a user; prints its sandbox token (once), then its id on the last line."""

    async def go(session: AsyncSession, _s: config.Settings) -> tuple[str, str]:
        made, sandbox = await tokens.add_user(
            session, email, _now(), tier=tier, firstname=firstname, lastname=lastname
        )
        return made.id, sandbox

    user_id, sandbox = ctx.run(go)
    click.echo(f"sandbox token (read-only, 100 requests; shown once): {sandbox}")
    click.echo(user_id)


@user.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def user_list(ctx: Context, as_json: bool) -> None:
    """List users."""

    async def go(session: AsyncSession, _s: config.Settings) -> list[dict[str, Any]]:
        return [
            {"id": u.id, "email": u.email, "tier": u.tier, "created_at": iso(u.created_at)}
            for u in await tokens.list_users(session)
        ]

    users = ctx.run(go)
    if as_json:
        echo_json(users)
        return
    for u in users:
        click.echo(f"{u['id']}  {u['tier']:<6} {u['email']}")


@main.group()
def token() -> None:
    """API tokens (shown once when created or rotated; stored as hashes)."""


def _describe(made: Any) -> None:
    view = tokens.token_dict(made, _now())
    click.echo(f"id: {view['id']}")
    click.echo(f"name: {view['name']}")
    click.echo(f"scopes: {' '.join(view['scopes'])}")
    if view["brand_ids"]:
        click.echo(f"brands: {' '.join(view['brand_ids'])}")
    if view["ip_allowlist"]:
        click.echo(f"ip allowlist: {' '.join(view['ip_allowlist'])}")
    click.echo(f"expires: {view['expires_at'] or 'never'}")
    click.echo("store this token now; it is not shown again:")


@token.command("create")
@click.option("--user", "user_ref", default=None, help="User id or email (default: the only user).")
@click.option("--name", default="postd CLI", show_default=True)
@click.option(
    "--scopes",
    multiple=True,
    help='Space or comma separated, e.g. "read:posts write:posts", or "*" '
    "(default: every read scope).",
)
@click.option("--brand", "brands", multiple=True, help="Restrict to this brand (repeatable).")
@click.option("--expires", default=None, help="7d, 30d, 90d, 180d, 365d, <N>d, <N>h or never.")
@click.option("--ip", "ips", multiple=True, help="Allowed IP or CIDR (repeatable).")
@click.option("--collaborator", "collaborator_id", default=None, help="Issue as this collaborator.")
@pass_ctx
def token_create(
    ctx: Context,
    user_ref: str | None,
    name: str,
    scopes: tuple[str, ...],
    brands: tuple[str, ...],
    expires: str | None,
    ips: tuple[str, ...],
    collaborator_id: str | None,
) -> None:
    """Create a token; prints it once, on the last line."""

    async def go(session: AsyncSession, settings: config.Settings) -> tuple[Any, str]:
        lifetime = tokens.parse_expiry(expires)
        if user_ref is None and collaborator_id is not None:
            owner_id = (await tokens.collaborator_user(session, collaborator_id)).id
        else:
            owner_id = (await tokens.find_user(session, user_ref)).id
        return await tokens.create_token(
            session,
            user_id=owner_id,
            name=name,
            scopes=_split(scopes) or DEFAULT_SCOPES,
            brand_ids=_split(brands),
            expires_in=lifetime,
            ip_allowlist=_split(ips),
            collaborator_id=collaborator_id,
            tiers=settings.tiers,
            now=_now(),
        )

    made, raw = ctx.run(go)
    _describe(made)
    click.echo(raw)


@token.command("import")
@click.option("--user", "user_ref", default=None, help="User id or email (default: the only user).")
@click.option("--name", default="imported", show_default=True)
@click.option("--scopes", multiple=True, help="As for `token create` (default: read scopes).")
@click.option("--brand", "brands", multiple=True)
@click.option("--expires", default=None)
@click.option("--ip", "ips", multiple=True)
@pass_ctx
def token_import(
    ctx: Context,
    user_ref: str | None,
    name: str,
    scopes: tuple[str, ...],
    brands: tuple[str, ...],
    expires: str | None,
    ips: tuple[str, ...],
) -> None:
    """Adopt an existing token (e.g. a legacy orply_live_ one), read from standard input so it
    stays out of the shell history; prints the token id."""
    raw = sys.stdin.readline().strip()

    async def go(session: AsyncSession, settings: config.Settings) -> str:
        owner = await tokens.find_user(session, user_ref)
        made = await tokens.import_token(
            session,
            raw,
            user_id=owner.id,
            name=name,
            scopes=_split(scopes) or DEFAULT_SCOPES,
            brand_ids=_split(brands),
            expires_in=tokens.parse_expiry(expires),
            ip_allowlist=_split(ips),
            tiers=settings.tiers,
            now=_now(),
        )
        return made.id

    click.echo(ctx.run(go))


@token.command("list")
@click.option("--user", "user_ref", default=None, help="Only this user's (id or email).")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def token_list(ctx: Context, user_ref: str | None, as_json: bool) -> None:
    """List tokens (never their secrets)."""

    async def go(session: AsyncSession, _s: config.Settings) -> list[dict[str, Any]]:
        owner = None if user_ref is None else (await tokens.find_user(session, user_ref)).id
        now = _now()
        return [tokens.token_dict(t, now) for t in await tokens.list_tokens(session, owner)]

    rows = ctx.run(go)
    if as_json:
        echo_json(rows)
        return
    for t in rows:
        click.echo(
            f"{t['id']}  {t['prefix']}…  {t['kind']:<7} {t['status']:<7} "
            f"expires {t['expires_at'] or 'never'}  used {t['request_count']}  "
            f"{t['name']}  [{' '.join(t['scopes'])}]"
        )


@token.command("revoke")
@click.argument("token_id")
@pass_ctx
def token_revoke(ctx: Context, token_id: str) -> None:
    """Revoke a token at once."""

    async def go(session: AsyncSession, _s: config.Settings) -> str:
        return (await tokens.revoke_token(session, token_id, _now())).id

    click.echo(f"revoked {ctx.run(go)}")


@token.command("rotate")
@click.argument("token_id")
@pass_ctx
def token_rotate(ctx: Context, token_id: str) -> None:
    """New secret, same token; the old secret stops working now. Prints it on the last line."""

    async def go(session: AsyncSession, _s: config.Settings) -> tuple[Any, str]:
        return await tokens.rotate_token(session, token_id, _now())

    made, raw = ctx.run(go)
    _describe(made)
    click.echo(raw)


@main.group()
def collaborator() -> None:
    """Users who help manage a brand they do not own."""


@collaborator.command("add")
@click.option("--brand", "brand_id", required=True)
@click.option("--user", "user_ref", required=True, help="User id or email.")
@click.option(
    "--access", type=click.Choice(tokens.ACCESS_LEVELS), default="full", show_default=True
)
@pass_ctx
def collaborator_add(ctx: Context, brand_id: str, user_ref: str, access: str) -> None:
    """Add a collaborator to a brand; prints its id."""

    async def go(session: AsyncSession, _s: config.Settings) -> str:
        member = await tokens.find_user(session, user_ref)
        made = await tokens.add_collaborator(
            session, brand_id=brand_id, user_id=member.id, access=access, now=_now()
        )
        return made.id

    click.echo(ctx.run(go))


@collaborator.command("remove")
@click.argument("collaborator_id")
@pass_ctx
def collaborator_remove(ctx: Context, collaborator_id: str) -> None:
    """Remove a collaborator; every key it issued is revoked."""

    async def go(session: AsyncSession, _s: config.Settings) -> list[str]:
        return await tokens.remove_collaborator(session, collaborator_id, _now())

    revoked = ctx.run(go)
    click.echo(f"removed {collaborator_id}; revoked {len(revoked)} key(s)")


@collaborator.command("set-access")
@click.argument("collaborator_id")
@click.argument("access", type=click.Choice(tokens.ACCESS_LEVELS))
@pass_ctx
def collaborator_set_access(ctx: Context, collaborator_id: str, access: str) -> None:
    """Change a collaborator's access; below full, the keys it issued stop working."""

    async def go(session: AsyncSession, _s: config.Settings) -> str:
        return (await tokens.set_access(session, collaborator_id, access, _now())).access

    click.echo(f"{collaborator_id} access {ctx.run(go)}")
