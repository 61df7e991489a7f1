"""The composition root: wires settings, store, adapters, dispatcher, timers and HTTP together,
and owns start and stop. Tests build it with a FakeClock and drive the dispatcher directly."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import httpx
import structlog
import uvicorn
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from adapters import (
    _http,
    _progress,
    base,
    bluesky,
    facebook,
    instagram,
    linkedin,
    linkedin_auth,
    mastodon,
    sandbox,
    tiktok,
    tiktok_api,
    x,
    youtube,
    youtube_oauth,
)
from daemon import __version__, config, credentials, netguard, oauth, progress, systemd
from daemon import clock as clock_mod
from daemon.api import errors as api_errors
from daemon.api import gate, idempotency, limits, ops, v1
from daemon.dispatch import retry
from daemon.dispatch.dispatcher import Dispatcher
from daemon.dispatch.pipeline import Pipeline
from daemon.errors import PostdError
from daemon.events import deliverer as webhook_deliverer
from daemon.events import sender as webhook_sender
from daemon.events import store as webhook_store
from daemon.events import wakeup as webhook_wakeup
from daemon.metrics import Metrics
from daemon.store import db, notify
from daemon.store import writer as writer_mod

log = structlog.get_logger("postd")
DUE_JOB = "dispatch-due"
WEBHOOK_JOB = "webhooks-due"


def build_adapters(
    settings: config.Settings,
    clock: clock_mod.Clock,
    engine: AsyncEngine | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> dict[str, base.Adapter]:
    """Every platform adapter. Credentialed platforms read a page's credentials from the store
    through ``engine`` by page id (none given: the adapters can only validate, as in the CLI);
    ``sleep`` paces media-processing polls."""
    conf = settings.platforms
    store: _http.CredentialStore = (
        _http.NoCredentials() if engine is None else credentials.PageCredentials(engine, settings)
    )
    timeouts = _http.Timeouts(connect=conf.connect_timeout_seconds, read=conf.read_timeout_seconds)
    fetch = MediaFetcher(netguard.Policy.from_settings(settings.netguard), timeouts.read)
    return {
        "sandbox": sandbox.SandboxAdapter.from_settings(
            settings.sandbox, settings.sandbox_state_path, clock
        ),
        "mastodon": mastodon.MastodonAdapter(
            store,
            now=clock.now,
            fetch_media=fetch,
            api_base=conf.mastodon.api_base,
            timeouts=timeouts,
            sleep=sleep,
            media_poll_seconds=conf.media_poll_seconds,
            media_poll_max_seconds=conf.media_poll_max_seconds,
        ),
        "bluesky": bluesky.BlueskyAdapter(
            store,
            now=clock.now,
            fetch_media=fetch,
            api_base=conf.bluesky.api_base,
            timeouts=timeouts,
        ),
        # X (issue 5): pages connect through daemon/oauth.py; the app refreshes their tokens.
        "twitter": x.XAdapter(
            store,
            now=clock.now,
            app=x.OAuthApp(conf.twitter.client_id, conf.twitter.client_secret),
            fetch_media=fetch,
            api_base=conf.twitter.api_base,
            timeouts=timeouts,
            sleep=sleep,
            media_poll_seconds=conf.media_poll_seconds,
            media_poll_max_seconds=conf.media_poll_max_seconds,
        ),
        # Facebook and Instagram (Graph, issue 5): Graph fetches media from the post's URL itself,
        # so it must be public (unless loopback is allowed: tests, local fakes). Instagram keeps
        # its container ids in the adapter_progress table.
        "facebook": facebook.FacebookAdapter(
            store,
            now=clock.now,
            api_base=conf.facebook.api_base,
            timeouts=timeouts,
            public_media_only=not settings.netguard.allow_loopback,
            sleep=sleep,  # a video's processing is waited out like a reel's
            media_poll_seconds=conf.media_poll_seconds,
            media_poll_max_seconds=conf.media_poll_max_seconds,
        ),
        "instagram": instagram.InstagramAdapter(
            store,
            _progress.MemoryProgress() if engine is None else progress.DbProgress(engine, clock),
            now=clock.now,
            api_base=conf.instagram.api_base,
            timeouts=timeouts,
            sleep=sleep,
            media_poll_seconds=conf.media_poll_seconds,
            media_poll_max_seconds=conf.media_poll_max_seconds,
            public_media_only=not settings.netguard.allow_loopback,
        ),
        # --- end Facebook and Instagram (Graph, issue 5)
        # LinkedIn (issue 5): pages connect through daemon/oauth.py; uploaded image and video
        # URNs live in the adapter_progress table so a later try reuses them.
        "linkedin": linkedin.LinkedInAdapter(
            store,
            _progress.MemoryProgress() if engine is None else progress.DbProgress(engine, clock),
            now=clock.now,
            app=linkedin_auth.OAuthApp(conf.linkedin.client_id, conf.linkedin.client_secret),
            fetch_media=fetch,
            api_base=conf.linkedin.api_base,
            timeouts=timeouts,
            sleep=sleep,
            media_poll_seconds=conf.media_poll_seconds,
            media_poll_max_seconds=conf.media_poll_max_seconds,
        ),
        # TikTok (issue 5): pages connect through daemon/oauth.py; the publish_id of each post's
        # init lives in the adapter_progress table so a later try polls it, never inits again.
        "tiktok": tiktok.TikTokAdapter(
            store,
            _progress.MemoryProgress() if engine is None else progress.DbProgress(engine, clock),
            now=clock.now,
            app=tiktok_api.OAuthApp(conf.tiktok.client_id, conf.tiktok.client_secret),
            fetch_media=fetch,
            api_base=conf.tiktok.api_base,
            timeouts=timeouts,
            sleep=sleep,
            media_poll_seconds=conf.media_poll_seconds,
            media_poll_max_seconds=conf.media_poll_max_seconds,
            public_media_only=not settings.netguard.allow_loopback,
        ),
        # YouTube (issue 5): pages connect through daemon/oauth.py; each post's resumable upload
        # session lives in the adapter_progress table so a later try resumes it.
        "youtube": youtube.YouTubeAdapter(
            store,
            _progress.MemoryProgress() if engine is None else progress.DbProgress(engine, clock),
            now=clock.now,
            app=youtube_oauth.OAuthApp(conf.youtube.client_id, conf.youtube.client_secret),
            fetch_media=fetch,
            api_base=conf.youtube.api_base,
            timeouts=timeouts,
        ),
    }


class MediaFetcher:
    """Fetches a post's media for upload through the SSRF policy (netguard), size-capped."""

    def __init__(self, policy: netguard.Policy, timeout: float) -> None:
        self._policy, self._timeout = policy, timeout

    async def __call__(self, item: base.MediaItem, max_bytes: int) -> _http.MediaBlob:
        try:
            response = await netguard.fetch_checked(
                "GET",
                item.url,
                self._policy,
                timeout_seconds=self._timeout,
                user_agent=_http.USER_AGENT,
                max_body=max_bytes + 1,
            )
        except netguard.UnsafeURL as exc:
            raise base.PermanentError(str(exc), code="UNSAFE_MEDIA_URL") from exc
        except (netguard.UnresolvableHost, httpx.HTTPError) as exc:
            raise base.RetryableError(f"media fetch: {exc}", code="MEDIA_FETCH_FAILED") from exc
        if response.status_code != 200:
            error = base.RetryableError if response.status_code >= 500 else base.PermanentError
            raise error(
                f"media fetch: HTTP {response.status_code} for {item.url}",
                code="MEDIA_FETCH_FAILED",
                http_status=response.status_code,
            )
        if len(response.content) > max_bytes:
            raise base.PermanentError(
                f"media is larger than the platform's {max_bytes} bytes", code="MEDIA_TOO_LARGE"
            )
        declared = item.mime_type or response.headers.get("content-type", "").split(";")[0]
        return _http.MediaBlob(response.content, _http.sniff_mime(response.content, declared))


def retry_policy(settings: config.Settings) -> retry.RetryPolicy:
    conf = settings.retry
    return retry.RetryPolicy(
        max_attempts=conf.max_attempts,
        initial_backoff=conf.initial_backoff_seconds,
        max_backoff=conf.max_backoff_seconds,
        inline_max_wait=conf.inline_max_wait_seconds,
        deadline=timedelta(seconds=conf.deadline_seconds),
    )


def instance_id(settings: config.Settings) -> str:
    return (
        settings.dispatch.instance_id
        or f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
    )


# Allocations (net) between young-generation collections, instead of CPython's 700: a
# schedule allocates thousands of short-lived objects, and at 700 the collector ran ~0.2 times
# per request and took ~6 % of the API's time (bench/README.md, API round six).
GC_YOUNG_THRESHOLD = 10_000


def freeze_heap() -> None:
    """Once started, move every object alive (modules, settings, ORM metadata, compiled
    statements: ~160,000) out of the cyclic garbage collector's reach. Each full collection
    walked them all: 1.5 s of the loop's time over a burst of 20,000 posts. They live as long as
    the daemon; objects made later are collected as before, the young ones less often
    (GC_YOUNG_THRESHOLD)."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the app owns SIGTERM/SIGINT/SIGHUP."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class App:
    def __init__(
        self,
        settings: config.Settings,
        *,
        clock: clock_mod.Clock | None = None,
        adapters: Mapping[str, base.Adapter] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        owner: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock or clock_mod.SystemClock()
        self.engine = db.create_engine(settings.database.url, settings.base_dir)
        self.sessions: async_sessionmaker[AsyncSession] = db.sessionmaker(self.engine)
        # The API's reads: inline read-only connections on a SQLite file (db.create_read_engine).
        self.read_engine = (
            db.create_read_engine(settings.database.url, settings.base_dir) or self.engine
        )
        self.read_sessions: async_sessionmaker[AsyncSession] = db.sessionmaker(self.read_engine)
        # db.reading()'s one-statement reads on a SQLite file, without the async layer.
        self.sync_reads = db.create_sync_reads(settings.database.url, settings.base_dir)
        # The API's group commit, on its own thread and engine (daemon/store/writer.py).
        self.writer = writer_mod.GroupWriter(
            lambda: (
                db.create_sync_engine(settings.database.url, settings.base_dir)
                or db.create_engine(settings.database.url, settings.base_dir, pool_size=1)
            )
        )
        self.metrics = Metrics()
        self.adapters = (
            dict(adapters)
            if adapters is not None
            else build_adapters(settings, self.clock, self.engine, sleep or asyncio.sleep)
        )
        self.pipeline = Pipeline(
            self.adapters,
            retry_policy(settings),
            self.clock,
            sleep or asyncio.sleep,
            in_doubt=settings.publish.in_doubt,
            rng=rng,
            timeout=settings.dispatch.publish_timeout_seconds,
        )
        self.dispatcher = Dispatcher(
            sessions=self.sessions,
            settings=settings,
            clock=self.clock,
            adapters=self.adapters,
            pipeline=self.pipeline,
            owner=owner or instance_id(settings),
            metrics=self.metrics,
            arm=self.arm,
        )
        self.deliverer = self._build_deliverer()
        self._unwatch_outbox = webhook_wakeup.install(self.engine, self.deliverer.wake)
        self.notifier = systemd.Notifier.from_env()
        self.scheduler: AsyncIOScheduler | None = None
        self.http = v1.fastapi_app(
            title="postd", version=__version__, docs_url=None, redoc_url=None
        )
        self.http.state.postd = self
        self.http.include_router(ops.router)
        self.http.include_router(oauth.router)  # GET /oauth/callback/<name> (issue 5)
        api_errors.install(self.http)  # even App.http's own 404 speaks the catalog
        self.api_gate = gate.ApiGate(v1.build_api(self), self)
        self.http.mount("/api/v1", self.api_gate)
        self._lock: db.InstanceLock | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._server: _Server | None = None
        self._stop = asyncio.Event()
        self._sweep_requested: asyncio.Task[None] | None = None

    # -- state for /readyz --------------------------------------------------------------------

    @property
    def scheduler_running(self) -> bool:
        return self.scheduler is not None and self.scheduler.running

    def tick_age(self) -> float | None:
        last = self.dispatcher.last_tick
        return None if last is None else (self.clock.now() - last).total_seconds()

    # -- timers -------------------------------------------------------------------------------

    def arm(self, when: datetime | None) -> None:
        if self.scheduler is None:
            return
        if when is None:
            with contextlib.suppress(Exception):
                self.scheduler.remove_job(DUE_JOB)
            return
        self.scheduler.add_job(
            self.dispatcher.wake,
            "date",
            run_date=when,
            id=DUE_JOB,
            replace_existing=True,
            misfire_grace_time=None,
        )

    async def sweep(self) -> None:
        """The safety sweep: one query; proves the dispatcher alive to systemd and /readyz."""
        try:
            wake = await self.dispatcher.next_wake()
        except asyncio.CancelledError:
            return  # shutting down mid-sweep: it only read
        except Exception as exc:
            log.error("sweep_failed", error=str(exc))
            return
        self.metrics.ticks.inc()
        self.notifier.watchdog()
        self.dispatcher.on_sweep(wake)
        self.deliverer.on_sweep()  # no query: wakes it only while it has work pending

    def request_sweep(self) -> None:
        """Run a sweep soon (coalesced: at most one waiting)."""
        if self._sweep_requested is None or self._sweep_requested.done():
            self._sweep_requested = asyncio.get_running_loop().create_task(self.sweep())

    async def purge(self) -> None:
        """Daily retention clean-up: audit log, idempotency keys, old minute/day counters,
        webhook deliveries past their retention, adapter progress of posts ended a week ago."""
        now = self.clock.now()
        api = self.settings.api
        try:
            async with self.sessions() as session, session.begin():
                audit = await gate.purge_audit(session, now, api.audit_retention_days)
                keys = await idempotency.purge(session, now, api.idempotency_hours)
                counters = await limits.purge_counters(session, now)
                deliveries = await webhook_store.purge(
                    await session.connection(), now, self.settings.webhooks.delivery_retention_days
                )
                progress_rows = await progress.purge(session, now)
        except Exception as exc:
            log.error("retention_failed", error=str(exc))
            return
        log.info(
            "retention_done",
            audit=audit,
            idempotency_keys=keys,
            counters=counters,
            webhook_deliveries=deliveries,
            adapter_progress=progress_rows,
        )

    # -- webhooks (issue 4): the deliverer, its timer and its quota ---------------------------

    def _build_deliverer(self) -> webhook_deliverer.Deliverer:
        conf = self.settings.webhooks
        sender = webhook_sender.Sender(
            netguard.Policy.from_settings(self.settings.netguard),
            timeout=conf.timeout_seconds,
            user_agent=webhook_deliverer.USER_AGENT,
        )
        return webhook_deliverer.Deliverer(
            engine=self.engine,
            settings=self.settings,
            clock=self.clock,
            owner=self.dispatcher.owner,
            sender=sender,
            charge=self._charge_webhooks,
            arm=self.arm_webhooks,
            metrics=self.metrics,
        )

    async def _charge_webhooks(
        self, conn: AsyncConnection, items: Sequence[tuple[str, str]], now: datetime
    ) -> list[bool]:
        """Each delivery attempt takes one from its user's ``webhooks`` monthly bucket, in the
        transaction that claims it."""
        return await limits.charge_many(self, items, "webhooks", now, conn)

    def arm_webhooks(self, when: datetime | None) -> None:
        """The deliverer's timer: a date job at its next retry or lease expiry."""
        if self.scheduler is None:
            return
        if when is None:
            with contextlib.suppress(Exception):
                self.scheduler.remove_job(WEBHOOK_JOB)
            return
        self.scheduler.add_job(
            self.deliverer.wake,
            "date",
            run_date=when,
            id=WEBHOOK_JOB,
            replace_existing=True,
            misfire_grace_time=None,
        )

    # -- start / stop -------------------------------------------------------------------------

    async def prepare(self) -> None:
        """Check the schema and take the SQLite instance lock; no timers, no HTTP."""
        await db.require_migrated(self.engine)
        path = config.sqlite_path(self.settings.database.url)
        if path is not None:
            self._lock = db.InstanceLock(self.settings.resolve(str(path)))
            self._lock.acquire()
        await self.dispatcher.start(orphaned_leases=self._lock is not None)
        await self.deliverer.prepare(orphaned_leases=self._lock is not None)

    def _bind(self) -> socket.socket:
        server = self.settings.server
        family = socket.AF_INET6 if ":" in server.host else socket.AF_INET
        # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only for
        # sockets that say they are TCP (else every response waits ~40 ms for a delayed ACK).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((server.host, server.port))
        except OSError as exc:
            sock.close()
            raise PostdError(f"cannot listen on {server.bind}: {exc.strerror}") from None
        sock.listen(128)
        sock.setblocking(False)
        return sock

    async def start(self) -> None:
        await self.prepare()
        sock = self._bind()
        self.scheduler = AsyncIOScheduler(timezone="UTC")
        self.scheduler.add_job(
            self.sweep,
            "interval",
            seconds=self.settings.scheduling.sweep_seconds,
            id="sweep",
            next_run_time=self.clock.now(),
            max_instances=1,
            coalesce=True,
        )
        self.scheduler.add_job(
            self.dispatcher.renew_leases,
            "interval",
            seconds=max(self.settings.scheduling.lease_seconds / 3, 0.1),
            id="lease-heartbeat",
            max_instances=1,
            coalesce=True,
        )
        self.scheduler.add_job(
            self.purge, "cron", hour=3, minute=17, id="retention", max_instances=1, coalesce=True
        )
        self.scheduler.start()
        # proxy_headers off: uvicorn would otherwise let any loopback client forge its address
        # with X-Forwarded-For; the gate honours it only from [api] trusted_proxies.
        # A request still open at shutdown (a /posts/publish waiting on the dispatcher) gets
        # the same grace as in-flight publishes, then the server closes.
        # httptools: uvicorn's C parser (its pure-Python h11 one cost ~0.3 ms of CPU a request).
        uv = uvicorn.Config(
            self.http,
            http="httptools",
            log_config=None,
            access_log=False,
            lifespan="off",
            proxy_headers=False,
            timeout_graceful_shutdown=int(self.settings.dispatch.shutdown_grace_seconds) + 1,
        )
        self._server = _Server(uv)
        self._tasks = [
            asyncio.create_task(self.dispatcher.pump(), name="postd-pump"),
            asyncio.create_task(self._server.serve(sockets=[sock]), name="postd-http"),
            asyncio.create_task(self.deliverer.pump(), name="postd-webhooks"),
        ]
        self.deliverer.wake()  # deliveries left by a previous run, events not fanned out yet
        if self.engine.dialect.name == "postgresql":
            dsn = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
            webhooks = {notify.WEBHOOKS_CHANNEL: self.deliverer.notify_due}
            listener = notify.listen(dsn, self.dispatcher.notify_due, self._stop, also=webhooks)
            self._tasks.append(asyncio.create_task(listener, name="postd-listen"))
        for task in self._tasks:
            task.add_done_callback(self._task_done)
        self.notifier.ready(status="dispatching")
        log.info(
            "postd_started",
            version=__version__,
            bind=self.settings.server.bind,
            owner=self.dispatcher.owner,
        )

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or self._stop.is_set():
            return
        exc = task.exception()
        log.error("task_died", task=task.get_name(), error=repr(exc))
        self._stop.set()

    def request_stop(self) -> None:
        self._stop.set()

    async def stop(self) -> None:
        self._stop.set()  # tasks ending from here on are expected to
        self.notifier.stopping()
        log.info("postd_stopping")
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        grace = self.settings.dispatch.shutdown_grace_seconds
        await asyncio.gather(self.dispatcher.stop(grace), self.deliverer.stop(grace))
        if self._server is not None:
            self._server.should_exit = True
        for task in self._tasks:
            if task.get_name() in ("postd-pump", "postd-listen", "postd-webhooks"):
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.close()
        log.info("postd_stopped")

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.api_gate.aclose()  # flushes buffered audit rows
        for adapter in self.adapters.values():
            with contextlib.suppress(Exception):
                await adapter.aclose()
        with contextlib.suppress(Exception):
            await self.deliverer.aclose()
        with contextlib.suppress(Exception):
            await self.writer.aclose()
        self._unwatch_outbox()
        if self.read_engine is not self.engine:
            await self.read_engine.dispose()
        if self.sync_reads is not None:
            self.sync_reads.dispose()
        await self.engine.dispose()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    async def run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        await self.start()
        freeze_heap()
        try:
            await self._stop.wait()
        finally:
            await self.stop()

    def _reload(self) -> None:
        self.notifier.reloading()
        log.info("sighup_received", detail="logs reopened; settings reload on restart")
        self.notifier.ready(status="dispatching")
