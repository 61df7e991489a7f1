"""Shared plumbing of the ``postd`` command line: the root group and the context.

Errors are one line on stderr and a non-zero exit: 2 for a bad config, 1 for anything else
(bad input, unknown ids, an un-migrated database). Nothing is written when a command fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import click
import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from daemon import __version__, config
from daemon.errors import ConfigError, InputError, PostdError
from daemon.store import db

T = TypeVar("T")


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"postd: {message}", err=True)
    sys.exit(code)


class Context:
    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self._settings: config.Settings | None = None

    @property
    def settings(self) -> config.Settings:
        if self._settings is None:
            try:
                self._settings = config.load(self.config_path)
            except ConfigError as exc:
                fail(f"config error: {exc}", 2)
        return self._settings

    def run(self, fn: Callable[[AsyncSession, config.Settings], Awaitable[T]]) -> T:
        """Run ``fn`` in one transaction on a migrated database; print errors as one line."""
        settings = self.settings

        async def go() -> T:
            engine = db.create_engine(settings.database.url, settings.base_dir)
            try:
                await db.require_migrated(engine)
                async with db.sessionmaker(engine)() as session, session.begin():
                    return await fn(session, settings)
            finally:
                await engine.dispose()

        try:
            return asyncio.run(go())
        except InputError as exc:
            fail(f"error: {exc.code}: {exc.message}")
        except PostdError as exc:
            fail(f"error: {exc}")


pass_ctx = click.make_pass_decorator(Context)


@click.group()
@click.option(
    "--config",
    "config_path",
    envvar="POSTD_CONFIG",
    type=click.Path(dir_okay=False),
    help="Path of the TOML config (env POSTD_CONFIG).",
)
@click.version_option(__version__, prog_name="postd")
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """postd: schedule and publish social-media posts within every platform's limits."""
    ctx.obj = Context(config_path)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def nudge(settings: config.Settings) -> None:
    """Best effort: tell a daemon running on this SQLite database to look now (PostgreSQL
    daemons hear it through LISTEN/NOTIFY; otherwise its next sweep or pass finds the work)."""
    if config.sqlite_path(settings.database.url) is None:
        return
    host = settings.server.host
    host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    with contextlib.suppress(httpx.HTTPError):
        httpx.post(f"http://{host}:{settings.server.port}/wake", timeout=0.5)
