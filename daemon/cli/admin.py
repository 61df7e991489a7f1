"""Operator commands: init, migrate, check-config, run, rotate-key, brand, page."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import click
from sqlalchemy.ext.asyncio import AsyncSession

from adapters import _http, base, bluesky, mastodon
from daemon import clock as clock_mod
from daemon import config, credentials, logs, oauth, services, tokens
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

[security]
# Encrypts platform credentials at rest (Fernet). Back this file up: without it every connected
# page has to be connected again.
secret_key_file = "{key}"
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
    key = target / credentials.KEY_FILE_NAME
    if path.exists() and not force:
        click.echo(f"postd: keeping the existing {path}", err=True)
    else:
        _new_key_file(key)
        path.write_text(
            INIT_TEMPLATE.format(db=target / "postd.db", sandbox=target / "sandbox.db", key=key)
        )
    try:
        settings = config.load(path)
        if not credentials.key_source(settings).keys:
            _add_key_file(path, key)
            settings = config.load(path)
    except (ConfigError, credentials.KeyProblem) as exc:
        fail(f"config error: {exc}", 2)
    asyncio.run(_migrate(settings))
    click.echo(str(path))


def _new_key_file(key: Path) -> None:
    """A fresh key file (mode 0600) unless one exists: a key is never overwritten."""
    if not key.exists():
        credentials.write_key_file(key, [credentials.generate_key()])
        click.echo(f"postd: wrote a new secret key to {key} (keep a backup)", err=True)


def _add_key_file(path: Path, key: Path) -> None:
    """Point a kept config without any secret key at a (new) key file."""
    text = path.read_text(encoding="utf-8")
    if "[security]" in text:
        click.echo(
            f"postd: warning: {path} has [security] but no key; set secret_key_file", err=True
        )
        return
    _new_key_file(key)
    path.write_text(text.rstrip("\n") + f'\n\n[security]\nsecret_key_file = "{key}"\n')


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
    if settings.netguard.allow_loopback:
        click.echo(
            "warning: netguard.allow_loopback is on: webhook and media URLs may reach this"
            " machine (127.0.0.0/8, ::1, localhost); for local development only"
        )
    if settings.netguard.allow_http:
        click.echo(
            "warning: netguard.allow_http is on: webhooks may be sent unencrypted over http;"
            " for local development only"
        )
    try:
        source = credentials.key_source(settings)
        if source.keys:
            credentials.Vault(source.keys)
            click.echo(f"secret key ok: {len(source.keys)} key(s) from {source.described}")
        else:
            click.echo("warning: no secret key: Mastodon/Bluesky pages cannot be connected")
    except credentials.KeyProblem as exc:
        click.echo(f"warning: secret key: {exc}")
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

    async def go(session: AsyncSession, _s: config.Settings) -> tuple[str, int | None]:
        """The brand's id, and the number of users when it got no owner (else None)."""
        users = await tokens.list_users(session)
        owner_id = None
        if owner is not None:
            owner_id = (await tokens.find_user(session, owner)).id
        elif len(users) == 1:
            owner_id = users[0].id
        made = await services.add_brand(session, name, clock_mod.SystemClock().now(), owner_id)
        return made.id, None if owner_id else len(users)

    brand_id, users = ctx.run(go)
    if users is not None:
        click.echo(
            f"postd: warning: brand {brand_id} has no owner, so no API token reaches it; "
            + (
                "pass --owner (there are several users)"
                if users
                else f"once its user exists: postd brand set-owner {brand_id} USER"
            ),
            err=True,
        )
    click.echo(brand_id)


@brand.command("set-owner")
@click.argument("brand_id")
@click.argument("owner")
@pass_ctx
def brand_set_owner(ctx: Context, brand_id: str, owner: str) -> None:
    """Give a brand to a user (id or email): its tokens reach the brand from now on, the
    previous owner's no longer do."""

    async def go(session: AsyncSession, _s: config.Settings) -> None:
        user = await tokens.find_user(session, owner)
        now = clock_mod.SystemClock().now()
        await tokens.set_brand_owner(session, brand_id=brand_id, user_id=user.id, now=now)

    ctx.run(go)


@brand.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def brand_list(ctx: Context, as_json: bool) -> None:
    """List brands: id, owner, number of pages, name."""

    async def go(session: AsyncSession, _s: config.Settings) -> list[dict[str, Any]]:
        return await services.list_brands(session)

    brands = ctx.run(go)
    if as_json:
        echo_json(brands)
        return
    for b in brands:
        owner = b["owner_email"] or "(no owner)"
        pages = f"{b['pages']} page" + ("" if b["pages"] == 1 else "s")
        click.echo(f"{b['id']}  {owner:<24} {pages:<9} {b['name']}")


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
        click.echo(f"{p['id']}  {p['platform']:<10} {p['status']:<13} {p['name']}")


# -- credentials (issue 5) ------------------------------------------------------------------------


@main.command("rotate-key")
@click.option("--generate", is_flag=True, help="Only print a new key; change nothing.")
@pass_ctx
def rotate_key(ctx: Context, generate: bool) -> None:
    """Re-encrypt every stored credential under a new key.

    With a key file (postd init): a new key is generated, written in front of the old one,
    every credential is re-encrypted, then the file keeps the new key only. With keys from the
    config, the env or systemd: list the new key first, comma-separated before the old one
    (--generate prints one), restart postd, run rotate-key, then drop the old key."""
    if generate:
        click.echo(credentials.generate_key())
        return
    try:
        source = credentials.key_source(ctx.settings)
        if not source.keys:
            raise credentials.KeyProblem("no secret key configured: nothing to rotate")
        if len(source.keys) == 1 and source.path is None:
            raise credentials.KeyProblem(
                f"the key comes from {source.described}: put a new key (postd rotate-key "
                "--generate) in front of it, comma-separated, restart postd, then run this again"
            )
        keys = source.keys if len(source.keys) > 1 else (credentials.generate_key(), *source.keys)
        vault = credentials.Vault(keys)
        if source.path is not None:
            credentials.write_key_file(source.path, keys)  # both keys open everything meanwhile
    except credentials.KeyProblem as exc:
        fail(f"error: {exc}")

    async def go(session: AsyncSession, _s: config.Settings) -> int:
        try:
            return await credentials.rotate_all(session, vault)
        except credentials.KeyProblem as exc:
            raise PostdError(str(exc)) from exc

    count = ctx.run(go)
    if source.path is not None:
        credentials.write_key_file(source.path, keys[:1])
        click.echo(f"re-encrypted {count} page credential(s); {source.path} holds the new key")
    else:
        click.echo(
            f"re-encrypted {count} page credential(s) under the first key; now remove the old"
            f" key(s) from {source.described}"
        )


@page.group("connect")
def page_connect() -> None:
    """Connect a page to its account: verify the credentials with the platform, store them
    encrypted, print the page id (--page ID re-connects an existing page)."""


Verify = Callable[[config.Settings, _http.Timeouts], Coroutine[Any, Any, _http.Connected]]


def _connect(
    ctx: Context,
    platform: str,
    brand_id: str | None,
    page_id: str | None,
    name: str | None,
    verify: Verify,
) -> None:
    settings = ctx.settings
    if (brand_id is None) == (page_id is None):
        fail("error: pass --brand (a new page) or --page (re-connect one), not both")
    try:
        vault = credentials.Vault(credentials.key_source(settings).keys)
    except credentials.KeyProblem as exc:
        fail(f"error: {exc}")
    conf = settings.platforms
    timeouts = _http.Timeouts(connect=conf.connect_timeout_seconds, read=conf.read_timeout_seconds)
    try:
        connected = asyncio.run(verify(settings, timeouts))
    except base.AdapterError as exc:
        fail(f"error: {platform} refused to connect: {exc.code}: {exc}")

    async def go(session: AsyncSession, _s: config.Settings) -> str:
        stored = await oauth.store_connected(
            session,
            vault,
            platform,
            [connected],
            brand_id=brand_id or "",
            page_id=page_id or "",
            page_name=name or "",
            now=clock_mod.SystemClock().now(),
        )
        return stored[0][0]

    click.echo(ctx.run(go))


@page_connect.command("bluesky")
@click.option("--brand", "brand_id", default=None, help="Brand of the new page.")
@click.option("--page", "page_id", default=None, help="Re-connect this existing page instead.")
@click.option("--handle", required=True, help="The account's handle (or its email).")
@click.option(
    "--app-password",
    required=True,
    envvar="POSTD_BLUESKY_APP_PASSWORD",
    help="An app password (Settings > App passwords); env POSTD_BLUESKY_APP_PASSWORD.",
)
@click.option("--name", default=None, help="Page name (default: the handle).")
@pass_ctx
def connect_bluesky(
    ctx: Context,
    brand_id: str | None,
    page_id: str | None,
    handle: str,
    app_password: str,
    name: str | None,
) -> None:
    """Log in once (createSession) on [platforms.bluesky] api_base; the session is stored, the
    app password is not."""

    async def verify(settings: config.Settings, timeouts: _http.Timeouts) -> _http.Connected:
        api_base = settings.platforms.bluesky.api_base
        return await bluesky.connect(handle, app_password, api_base=api_base, timeouts=timeouts)

    _connect(ctx, "bluesky", brand_id, page_id, name, verify)


@page_connect.command("mastodon")
@click.option("--brand", "brand_id", default=None, help="Brand of the new page.")
@click.option("--page", "page_id", default=None, help="Re-connect this existing page instead.")
@click.option("--instance", required=True, help="The instance, e.g. https://mastodon.social.")
@click.option(
    "--token",
    required=True,
    envvar="POSTD_MASTODON_TOKEN",
    help="A token with the scopes read, write:statuses, write:media; env POSTD_MASTODON_TOKEN.",
)
@click.option("--name", default=None, help="Page name (default: the account's display name).")
@pass_ctx
def connect_mastodon(
    ctx: Context,
    brand_id: str | None,
    page_id: str | None,
    instance: str,
    token: str,
    name: str | None,
) -> None:
    """Check the token (verify_credentials) and store it with the account id."""

    async def verify(settings: config.Settings, timeouts: _http.Timeouts) -> _http.Connected:
        return await mastodon.connect(instance, token, timeouts=timeouts)

    _connect(ctx, "mastodon", brand_id, page_id, name, verify)


def _oauth_connect_command(name: str, section: str) -> None:
    @page_connect.command(name)
    @click.option("--brand", "brand_id", default=None, help="Brand of the new page(s).")
    @click.option("--page", "page_id", default=None, help="Re-connect this existing page instead.")
    @click.option("--name", default=None, help="Page name (default: the account's name).")
    @pass_ctx
    def connect(ctx: Context, brand_id: str | None, page_id: str | None, name: str | None) -> None:
        if (brand_id is None) == (page_id is None):
            fail("error: pass --brand (a new page) or --page (re-connect one), not both")
        try:
            url = oauth.authorization_url(
                ctx.settings,
                command_name,
                clock_mod.SystemClock().now(),
                brand_id=brand_id or "",
                page_id=page_id or "",
                page_name=name or "",
            )
        except (oauth.OAuthError, credentials.KeyProblem) as exc:
            fail(f"error: {exc}")
        click.echo(url)

    command_name = name
    connect.help = (
        f"Print the {name} authorization URL (OAuth 2.0, valid 10 minutes; needs [platforms."
        f"{section}] client_id). Open it signed in as the account; the platform sends the browser"
        f" back to the running daemon at [server] public_url /oauth/callback/{name}, which stores"
        " the page(s) the grant covers and shows their ids."
    )


for _name, (_section, _factory) in oauth.PROVIDERS.items():
    _oauth_connect_command(_name, _section)
