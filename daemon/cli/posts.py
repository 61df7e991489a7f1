"""Post commands: schedule, list, cancel; the outbox (events); status."""

from __future__ import annotations

from typing import Any

import click
from sqlalchemy.ext.asyncio import AsyncSession

from daemon import app as app_mod
from daemon import clock as clock_mod
from daemon import config, services
from daemon.cli._base import Context, echo_json, main, nudge, pass_ctx
from daemon.timefmt import parse_instant


@main.group()
def post() -> None:
    """Scheduled posts."""


@post.command("schedule")
@click.option("--page", "page_id", required=True)
@click.option(
    "--at", "at", required=True, help="ISO 8601 instant with a zone, e.g. 2026-05-12T14:30:00Z"
)
@click.option("--text", default=None)
@click.option("--media", "media", multiple=True, help="Public https URL of an image/video.")
@click.option("--first-comment", default=None)
@pass_ctx
def post_schedule(
    ctx: Context,
    page_id: str,
    at: str,
    text: str | None,
    media: tuple[str, ...],
    first_comment: str | None,
) -> None:
    """Schedule a post; prints its id."""

    async def go(session: AsyncSession, settings: config.Settings) -> str:
        now = clock_mod.SystemClock().now()
        when = parse_instant(at, "--at")
        new = services.NewPost(
            page_id=page_id,
            scheduled_at=when,
            message=text,
            first_comment=first_comment,
            media=tuple({"src": url, "type": _kind(url)} for url in media),
        )
        page = await services.get_page(session, page_id)
        adapters = app_mod.build_adapters(settings, clock_mod.SystemClock())
        try:
            made = await services.schedule_post(
                session,
                new,
                now=now,
                scheduling=settings.scheduling,
                adapter=adapters.get(page.platform),
            )
        finally:
            for adapter in adapters.values():
                await adapter.aclose()
        return made.id

    click.echo(ctx.run(go))
    nudge(ctx.settings)


def _kind(url: str) -> str:
    return "video" if url.lower().rsplit("?", 1)[0].endswith((".mp4", ".mov", ".webm")) else "photo"


@post.command("list")
@click.option("--json", "as_json", is_flag=True, help="Full records with the attempt log.")
@click.option(
    "--state",
    default=None,
    type=click.Choice(["scheduled", "publishing", "published", "failed", "cancelled"]),
)
@click.option("--page", "page_id", default=None)
@click.option("--limit", default=1000, show_default=True)
@pass_ctx
def post_list(
    ctx: Context, as_json: bool, state: str | None, page_id: str | None, limit: int
) -> None:
    """List posts: state, times, last error or deferral reason."""

    async def go(session: AsyncSession, _s: config.Settings) -> list[dict[str, Any]]:
        return await services.list_posts(
            session, state=state, page_id=page_id, limit=limit, with_attempts=as_json
        )

    posts = ctx.run(go)
    if as_json:
        echo_json(posts)
        return
    for p in posts:
        why = (p["last_error"] or {}).get("code") or p["defer_reason"] or ""
        click.echo(
            f"{p['id']}  {p['status']:<10} at {p['scheduled_at']}  "
            f"published {p.get('published_at') or '-'}  not_before {p['not_before'] or '-'}  {why}"
        )


@post.command("cancel")
@click.argument("post_id")
@pass_ctx
def post_cancel(ctx: Context, post_id: str) -> None:
    """Cancel a scheduled post."""

    async def go(session: AsyncSession, _s: config.Settings) -> str:
        made = await services.cancel_post(session, post_id, clock_mod.SystemClock().now())
        return made.id

    click.echo(f"cancelled {ctx.run(go)}")


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--after", default=0, help="Only events with a larger id.")
@pass_ctx
def events(ctx: Context, as_json: bool, after: int) -> None:
    """The outbox: every post.published / post.failed event, in order."""

    async def go(session: AsyncSession, _s: config.Settings) -> list[dict[str, Any]]:
        return await services.list_events(session, after=after)

    rows = ctx.run(go)
    if as_json:
        echo_json(rows)
        return
    for e in rows:
        click.echo(f"{e['id']:>8}  {e['created_at']}  {e['event']:<15} post {e['post_id']}")


@main.command()
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def status(ctx: Context, as_json: bool) -> None:
    """Counts by state, next due post, guardrail usage per page."""

    async def go(session: AsyncSession, settings: config.Settings) -> dict[str, Any]:
        return await services.status(session, settings, clock_mod.SystemClock().now())

    data = ctx.run(go)
    if as_json:
        echo_json(data)
        return
    click.echo("posts: " + ", ".join(f"{k} {v}" for k, v in data["posts"].items()))
    click.echo(f"next due: {data['next_due'] or '-'}")
    for p in data["pages"]:
        click.echo(
            f"  {p['id']}  {p['platform']:<10} {p['name']:<24} "
            f"1h {p['last_hour']}/{p['per_hour']}  24h {p['last_24h']}/{p['per_24h']}"
            + ("" if p["status"] == "active" else f"  {p['status']}")
        )
