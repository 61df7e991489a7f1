"""Webhook commands: subscribe, list, show, enable/disable, delete, rotate the secret, the
delivery log, redeliver, and a test ping.

The operator acts for any user: ``webhook add`` takes ``--user`` (id or email; default the only
user), the others take a webhook id. A secret is printed once, on the last line of ``add`` and
``rotate-secret``. After ``test`` and ``redeliver`` a daemon on the same database is told to send
at once (PostgreSQL NOTIFY, or POST /wake on SQLite); otherwise its next pass sends them.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import click
from sqlalchemy.ext.asyncio import AsyncSession

from daemon import clock as clock_mod
from daemon import config, netguard, tokens
from daemon.cli._base import Context, echo_json, main, nudge, pass_ctx
from daemon.events import policy, service, views
from daemon.store import notify


def _now() -> datetime:
    return clock_mod.SystemClock().now()


def _split(values: tuple[str, ...]) -> list[str]:
    return [part for value in values for part in value.replace(",", " ").split()]


def _guard(settings: config.Settings) -> netguard.Policy:
    return netguard.Policy.from_settings(settings.netguard)


def _line(hook: dict[str, Any]) -> str:
    state = "enabled" if hook["enabled"] else f"disabled ({hook['disabled_reason']})"
    return f"{hook['id']}  {state:<32} {','.join(hook['events'])}  {hook['url']}"


@main.group()
def webhook() -> None:
    """Webhook subscriptions and their deliveries."""


@webhook.command("add")
@click.argument("url")
@click.option("--user", "user_ref", default=None, help="User id or email (default: the only user).")
@click.option(
    "--events",
    multiple=True,
    help="Comma or space separated (default: every event): " + ", ".join(policy.EVENTS),
)
@click.option("--brand", "brands", multiple=True, help="Only this brand's events (repeatable).")
@pass_ctx
def webhook_add(
    ctx: Context, url: str, user_ref: str | None, events: tuple[str, ...], brands: tuple[str, ...]
) -> None:
    """Subscribe URL; prints the webhook id, then its secret (once) on the last line."""

    async def go(session: AsyncSession, settings: config.Settings) -> tuple[str, str]:
        user = await tokens.find_user(session, user_ref)
        caller = service.Caller(user.id, tuple(_split(brands)))
        await service.check_owned_brands(session, caller)
        sub, secret = await service.create(
            session,
            caller,
            url=url,
            events=_split(events) or list(policy.EVENTS),
            now=_now(),
            guard=_guard(settings),
        )
        return sub.id, secret

    hook_id, secret = ctx.run(go)
    click.echo(f"webhook: {hook_id}")
    click.echo("signing secret (store it now; it is not shown again):")
    click.echo(secret)


@webhook.command("list")
@click.option("--user", "user_ref", default=None, help="Only this user's (id or email).")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def webhook_list(ctx: Context, user_ref: str | None, as_json: bool) -> None:
    """List subscriptions (never their secrets)."""

    async def go(session: AsyncSession, _s: config.Settings) -> list[dict[str, Any]]:
        user_id = None if user_ref is None else (await tokens.find_user(session, user_ref)).id
        return [views.webhook_dict(s) for s in await service.all_subscriptions(session, user_id)]

    hooks = ctx.run(go)
    if as_json:
        echo_json(hooks)
        return
    for hook in hooks:
        click.echo(_line(hook))


@webhook.command("show")
@click.argument("webhook_id")
@pass_ctx
def webhook_show(ctx: Context, webhook_id: str) -> None:
    """One subscription as JSON (never its secret)."""

    async def go(session: AsyncSession, _s: config.Settings) -> dict[str, Any]:
        return views.webhook_dict(await service.get_by_id(session, webhook_id))

    echo_json(ctx.run(go))


def _set_enabled(ctx: Context, webhook_id: str, enabled: bool) -> None:
    async def go(session: AsyncSession, settings: config.Settings) -> dict[str, Any]:
        sub = await service.get_by_id(session, webhook_id, lock=True)
        await service.update(session, sub, now=_now(), guard=_guard(settings), enabled=enabled)
        return views.webhook_dict(sub)

    click.echo(_line(ctx.run(go)))


@webhook.command("enable")
@click.argument("webhook_id")
@pass_ctx
def webhook_enable(ctx: Context, webhook_id: str) -> None:
    """Enable again (the failure count starts over); new events are delivered."""
    _set_enabled(ctx, webhook_id, True)


@webhook.command("disable")
@click.argument("webhook_id")
@pass_ctx
def webhook_disable(ctx: Context, webhook_id: str) -> None:
    """Disable: no more deliveries; the pending ones are marked failed (redeliverable)."""
    _set_enabled(ctx, webhook_id, False)


@webhook.command("delete")
@click.argument("webhook_id")
@pass_ctx
def webhook_delete(ctx: Context, webhook_id: str) -> None:
    """Delete a subscription and its delivery log."""

    async def go(session: AsyncSession, _s: config.Settings) -> None:
        await service.remove(session, await service.get_by_id(session, webhook_id, lock=True))

    ctx.run(go)
    click.echo(f"deleted {webhook_id}")


@webhook.command("rotate-secret")
@click.argument("webhook_id")
@pass_ctx
def webhook_rotate(ctx: Context, webhook_id: str) -> None:
    """New secret, printed once on the last line; the old one signs too for the grace period."""

    async def go(session: AsyncSession, settings: config.Settings) -> tuple[str, str | None]:
        sub = await service.get_by_id(session, webhook_id, lock=True)
        grace = timedelta(hours=settings.webhooks.rotation_grace_hours)
        secret = service.rotate(sub, _now(), grace)
        return secret, views.webhook_dict(sub)["previous_secret_expires_at"]

    secret, until = ctx.run(go)
    click.echo(f"the previous secret keeps signing until {until}")
    click.echo("new signing secret (store it now; it is not shown again):")
    click.echo(secret)


@webhook.command("deliveries")
@click.argument("webhook_id")
@click.option("--status", type=click.Choice(policy.STATUSES), default=None)
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def webhook_deliveries(
    ctx: Context, webhook_id: str, status: str | None, limit: int, as_json: bool
) -> None:
    """The delivery log, newest first, with each attempt."""

    async def go(session: AsyncSession, _s: config.Settings) -> list[dict[str, Any]]:
        sub = await service.get_by_id(session, webhook_id)
        rows, logs = await service.list_deliveries(session, sub, limit=limit, status=status)
        return [views.delivery_dict(d, logs[d.id]) for d in rows]

    rows = ctx.run(go)
    if as_json:
        echo_json(rows)
        return
    for d in rows:
        code = d["last_status_code"] if d["last_status_code"] is not None else "-"
        extra = (d["next_attempt_at"] and f"next {d['next_attempt_at']}") or d["last_error"] or ""
        click.echo(
            f"{d['id']}  {d['event']:<22} {d['status']:<10} attempts {d['attempts']}  "
            f"last {code}  {extra}"
        )


def _queue(ctx: Context, webhook_id: str, delivery_id: str | None) -> None:
    async def go(session: AsyncSession, _s: config.Settings) -> str:
        sub = await service.get_by_id(session, webhook_id, lock=True)
        now = _now()
        if delivery_id is None:
            delivery = await service.ping(session, sub, now)
        else:
            delivery = await service.redeliver(session, sub, delivery_id, now)
        await notify.due(session, now, notify.WEBHOOKS_CHANNEL)
        return delivery.id

    click.echo(ctx.run(go))
    nudge(ctx.settings)


@webhook.command("test")
@click.argument("webhook_id")
@pass_ctx
def webhook_test(ctx: Context, webhook_id: str) -> None:
    """Queue a webhook.test delivery to this subscription only; prints its delivery id."""
    _queue(ctx, webhook_id, None)


@webhook.command("redeliver")
@click.argument("webhook_id")
@click.argument("delivery_id")
@pass_ctx
def webhook_redeliver(ctx: Context, webhook_id: str, delivery_id: str) -> None:
    """Send a delivery again (same webhook-id and body); prints its id."""
    _queue(ctx, webhook_id, delivery_id)
