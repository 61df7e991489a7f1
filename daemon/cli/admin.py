"""Operator commands: init, migrate, check-config, run, brand, page."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import click
from sqlalchemy.ext.asyncio import AsyncSession

from daemon import clock as clock_mod
from daemon import config, logs, services, tokens
from daemon.cli._base import Context, echo_json, fail, main, pass_ctx
from daemon.errors import ConfigError, PostdError
from daemon.store import db

INIT_TEMPLATE = """\
# postd configuration written by `postd init`. Every key, with its default, is documented in
# config.example.toml of the postd repository.

[server]
bind = "127.0.0.1:8787"

[database]
url = "sqlite:///{db}"

[sandbox]
state_path = "{sandbox}"
"""


@main.command()
@click.option("--dir", "directory", required=True, type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help="Overwrite an existing postd.toml.")
def init(directory: str, force: bool) -> None:
    """Write DIR/postd.toml (SQLite in DIR/postd.db, sandbox platform) and migrate.

    An existing DIR/postd.toml is kept (and its database migrated) unless --force is given."""
    target = Path(directory).expanduser().resolve()
    target.mkdir(parents=True, exist_ok=True)
    path = target / "postd.toml"
    if path.exists() and not force:
        click.echo(f"postd: keeping the existing {path}", err=True)
    else:
        path.write_text(INIT_TEMPLATE.format(db=target / "postd.db", sandbox=target / "sandbox.db"))
    try:
        settings = config.load(path)
    except ConfigError as exc:
        fail(f"config error: {exc}", 2)
    asyncio.run(_migrate(settings))
    click.echo(str(path))


async def _migrate(settings: config.Settings) -> tuple[str | None, str | None]:
    engine = db.create_engine(settings.database.url, settings.base_dir)
    try:
        return await db.migrate(engine)
    finally:
        await engine.dispose()


@main.command()
@pass_ctx
def migrate(ctx: Context) -> None:
    """Upgrade the database schema to this version of postd."""
    try:
        before, head = asyncio.run(_migrate(ctx.settings))
    except Exception as exc:
        fail(f"error: migration failed: {exc}")
    click.echo(f"database at revision {head} (was {before or 'empty'})")


@main.command("check-config")
@pass_ctx
def check_config(ctx: Context) -> None:
    """Validate the config; report the database and risky settings."""
    settings = ctx.settings
    click.echo(f"config ok: {ctx.config_path or '(defaults)'}")

    async def probe() -> str:
        engine = db.create_engine(settings.database.url, settings.base_dir)
        try:
            await db.require_migrated(engine)
            return "database ok: reachable and migrated"
        except PostdError as exc:
            return f"warning: {exc}"
        except Exception as exc:
            return f"warning: database unreachable: {type(exc).__name__}: {exc}"
        finally:
            await engine.dispose()

    click.echo(asyncio.run(probe()))
    if settings.guardrails.min_gap_seconds < 60:
        click.echo("warning: guardrails.min_gap_seconds is below the recommended 60 s")
    if settings.scheduling.min_lead_seconds < settings.scheduling.sweep_seconds:
        click.echo(
            "warning: scheduling.min_lead_seconds is shorter than sweep_seconds: a post written"
            " while no daemon can be told may start up to one sweep late"
        )


@main.command()
@pass_ctx
def run(ctx: Context) -> None:
    """Run the daemon in the foreground (systemd Type=notify)."""
    from daemon.app import App  # the CLI's other commands do not need the server stack

    settings = ctx.settings
    logs.configure(settings.logging)

    async def go() -> None:
        app = App(settings)
        try:
            await app.run_forever()
        except BaseException:
            await app.close()
            raise

    try:
        asyncio.run(go())
    except PostdError as exc:
        fail(f"error: {exc}")


@main.group()
def brand() -> None:
    """Brands own pages."""


@brand.command("add")
@click.argument("name")
@click.option(
    "--owner",
    default=None,
    help="User id or email of the owner (default: the only user, when there is exactly one).",
)
@pass_ctx
def brand_add(ctx: Context, name: str, owner: str | None) -> None:
    """Add a brand; prints its id. Only its owner's (and collaborators') tokens reach it."""

    async def go(session: AsyncSession, _s: config.Settings) -> tuple[str, int]:
        users = await tokens.list_users(session)
        owner_id = None
        if owner is not None:
            owner_id = (await tokens.find_user(session, owner)).id
        elif len(users) == 1:
            owner_id = users[0].id
        made = await services.add_brand(session, name, clock_mod.SystemClock().now(), owner_id)
        return made.id, 0 if owner_id else len(users)

    brand_id, unowned_among = ctx.run(go)
    if unowned_among:
        click.echo(
            f"postd: warning: brand {brand_id} has no owner, so no API token reaches it; "
            "pass --owner (there are several users)",
            err=True,
        )
    click.echo(brand_id)


@main.group()
def page() -> None:
    """Social pages (accounts) under a brand."""


@page.command("add")
@click.option("--brand", "brand_id", required=True)
@click.option("--platform", required=True)
@click.option("--name", required=True)
@click.option("--username", default=None)
@click.option("--external-id", default=None)
@pass_ctx
def page_add(
    ctx: Context,
    brand_id: str,
    platform: str,
    name: str,
    username: str | None,
    external_id: str | None,
) -> None:
    """Add a page; prints its id."""

    async def go(session: AsyncSession, _s: config.Settings) -> str:
        made = await services.add_page(
            session,
            brand_id=brand_id,
            platform=platform,
            name=name,
            now=clock_mod.SystemClock().now(),
            username=username,
            external_id=external_id,
        )
        return made.id

    click.echo(ctx.run(go))


@page.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def page_list(ctx: Context, as_json: bool) -> None:
    """List pages with their guardrail usage."""

    async def go(session: AsyncSession, settings: config.Settings) -> Any:
        return (await services.status(session, settings, clock_mod.SystemClock().now()))["pages"]

    pages = ctx.run(go)
    if as_json:
        echo_json(pages)
        return
    for p in pages:
        click.echo(f"{p['id']}  {p['platform']:<10} {p['status']:<12} {p['name']}")
