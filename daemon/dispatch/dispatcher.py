"""The dispatcher: owns the publish workers, claims due posts, reconciles expired leases.

It never polls. Something wakes it (the timer armed at the next due instant, a finished publish
freeing a page, a new post, the safety sweep) and it runs passes until nothing more can start.
Timers are not its business: it calls ``arm(when)`` and the composition root turns that into an
APScheduler date job; tests call :meth:`Dispatcher.drain` and move a FakeClock instead.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from adapters import base
from daemon import clock as clock_mod
from daemon import guardrails, lifecycle, timefmt
from daemon.config import Settings
from daemon.dispatch import claim, transitions, tuning
from daemon.dispatch.finisher import Finisher
from daemon.dispatch.outcomes import ClaimedPost, Outcome
from daemon.dispatch.pipeline import Pipeline
from daemon.dispatch.transitions import POSTS
from daemon.metrics import Metrics
from daemon.store import db
from daemon.store.models import Post, PublishAttempt

log = structlog.get_logger("postd.dispatch")
Arm = Callable[[datetime | None], None]


@dataclass(frozen=True, slots=True)
class PassResult:
    claimed: int
    reconciling: int
    deferred: int
    missed: int


@dataclass(frozen=True, slots=True)
class Wake:
    next_due: datetime | None
    next_lease_expiry: datetime | None

    @property
    def earliest(self) -> datetime | None:
        times = [t for t in (self.next_due, self.next_lease_expiry) if t is not None]
        return min(times) if times else None


class Dispatcher:
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
        clock: clock_mod.Clock,
        adapters: Mapping[str, base.Adapter],
        pipeline: Pipeline,
        owner: str,
        metrics: Metrics,
        arm: Arm | None = None,
    ) -> None:
        self._sessions = sessions
        self._settings = settings
        self._clock = clock
        self._adapters = adapters
        self._pipeline = pipeline
        self.owner = owner
        self._metrics = metrics
        self._arm_timer = arm or (lambda _when: None)
        self._armed: datetime | None = None
        self._postgres = sessions.kw["bind"].dialect.name == "postgresql"
        # One writer at a time in this process: on SQLite a second BEGIN IMMEDIATE would wait in
        # SQLite's busy handler (sleeping up to 100 ms) instead of on this lock.
        self._write_lock = asyncio.Lock()
        self._finisher = Finisher(sessions, owner, self._write_lock, then=self._claim_next)
        self._finisher_task: asyncio.Task[None] | None = None
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._low_water = max(1, settings.dispatch.concurrency // 4)
        # Labelled children, looked up once (labels() takes a lock and builds a key per call).
        self._publish_seconds = functools.cache(metrics.publish_seconds.labels)
        self._outcomes = functools.cache(metrics.outcomes.labels)
        self.last_tick: datetime | None = None
        # The outcome log, bound once per finisher group: the module's logger is a lazy proxy
        # that binds (and builds a logger) on every call.
        self._outcome_log: tuple[int, Any] = (-1, log)

    # -- limits -------------------------------------------------------------------------------

    def limits_for(self, platform: str) -> guardrails.Limits:
        """Config limits, tightened by what the platform reports about itself."""
        conf = self._settings.guardrails
        page = conf.for_platform(platform)
        per_hour, per_24h = page.per_hour, page.per_24h
        adapter = self._adapters.get(platform)
        if adapter is not None:
            reported = adapter.limits()
            per_hour = min(per_hour, reported.per_hour or per_hour)
            per_24h = min(per_24h, reported.per_24h or per_24h)
        return guardrails.Limits(
            page=guardrails.PageLimits(
                per_hour=per_hour,
                per_24h=per_24h,
                min_gap=timedelta(seconds=conf.min_gap_seconds),
            ),
            brand_per_24h=conf.brand_per_24h,
        )

    # -- lifecycle of the dispatcher itself ---------------------------------------------------

    async def start(self, *, orphaned_leases: bool) -> None:
        """Start the finisher; with ``orphaned_leases`` (SQLite: we hold the instance lock) every
        lease in the database belongs to a dead process and is reconciled at once."""
        if orphaned_leases:
            async with self._sessions() as session, session.begin():
                await session.execute(
                    update(Post)
                    .where(Post.state == lifecycle.PUBLISHING)
                    .values(lease_expires_at=self._clock.now())
                )
        self._finisher_task = asyncio.create_task(self._finisher.run(), name="postd-finisher")

    async def stop(self, grace: float) -> None:
        """Stop claiming, let in-flight publishes finish for ``grace`` seconds, release the rest."""
        self._stopping = True
        self._wake.set()
        tasks = list(self._in_flight.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            if pending:
                await self._release([pid for pid, t in self._in_flight.items() if t in pending])
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        if self._finisher_task is not None:
            self._finisher_task.cancel()
            await asyncio.gather(self._finisher_task, return_exceptions=True)

    async def _release(self, post_ids: list[str]) -> None:
        # Their platform call is under way: it may land. End the lease so that the next start
        # (or another instance) reconciles them instead of publishing again.
        async with self._sessions() as session, session.begin():
            await session.execute(
                update(Post)
                .where(Post.id.in_(post_ids), Post.lease_owner == self.owner)
                .values(lease_expires_at=self._clock.now())
            )
        log.warning("leases_released", count=len(post_ids))

    async def renew_leases(self) -> int:
        """Extend the leases of this process's in-flight posts (no query when there are none),
        so a slow publish is never taken for an abandoned one."""
        if not self._in_flight:
            return 0
        until = self._clock.now() + timedelta(seconds=self._settings.scheduling.lease_seconds)
        async with self._sessions() as session, session.begin():
            result = await session.execute(
                update(Post)
                .where(
                    Post.id.in_(list(self._in_flight)),
                    Post.lease_owner == self.owner,
                    Post.state == lifecycle.PUBLISHING,
                )
                .values(lease_expires_at=until)
            )
        return int(getattr(result, "rowcount", 0) or 0)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    # -- waking -------------------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def _arm(self, when: datetime | None) -> None:
        self._armed = when
        self._arm_timer(when)

    def notify_due(self, due_at: datetime) -> None:
        """A post was added or moved: wake now, or re-arm the timer if it is due earlier."""
        if due_at <= self._clock.now():
            self.wake()
        elif self._armed is None or due_at < self._armed:
            self._arm(due_at)

    def on_sweep(self, wake: Wake) -> None:
        """After the safety sweep's query: wake for what is due, else (idle) re-arm the timer."""
        earliest = wake.earliest
        if earliest is not None and earliest <= self._clock.now():
            self.wake()
        elif not self._in_flight:
            self._arm(earliest)

    async def next_wake(self) -> Wake:
        """The one query of an idle sweep: next due post and next lease expiry."""
        due = (
            select(func.min(Post.due_at)).where(Post.state == lifecycle.SCHEDULED).scalar_subquery()
        )
        lease = (
            select(func.min(Post.lease_expires_at))
            .where(Post.state == lifecycle.PUBLISHING)
            .scalar_subquery()
        )
        async with db.single_read(self._sessions.kw["bind"]) as conn:
            row = (await conn.execute(select(due, lease))).one()
        self.last_tick = self._clock.now()
        return Wake(timefmt.aware(row[0]), timefmt.aware(row[1]))

    async def pump(self) -> None:
        """Owned by the app: run passes whenever woken, until stopped."""
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            if self._stopping:
                break
            try:
                await self._settle()
            except Exception:
                log.exception("dispatch_pass_failed")
                self._arm(self._clock.now() + timedelta(seconds=5))

    async def _settle(self) -> None:
        while not self._stopping:
            result = await self.pass_once()
            if self._free_slots() > 0 and (result.claimed or result.reconciling):
                continue  # a full batch went out and slots remain: there may be more
            break
        if not self._in_flight:
            self._arm((await self.next_wake()).earliest)

    # -- one pass -----------------------------------------------------------------------------

    def _free_slots(self) -> int:
        return self._settings.dispatch.concurrency - len(self._in_flight)

    async def pass_once(self) -> PassResult:
        """Reconcile expired leases, then claim due posts, up to the free publish slots."""
        async with self._write_lock:
            if self._stopping or self._free_slots() <= 0:
                return PassResult(0, 0, 0, 0)
            reconciling = await self._reap(self._free_slots())
            if self._free_slots() <= 0:
                return PassResult(0, reconciling, 0, 0)
            async with self._sessions() as session, session.begin():
                conn = await session.connection()
                await tuning.for_dispatch(conn)
                result = await self._claim(conn, self._free_slots())
        self._started(result)
        return PassResult(len(result.claimed), reconciling, len(result.deferred), result.missed)

    def _started(self, result: claim.ClaimResult) -> None:
        for item in result.claimed:
            self._spawn(item)
        for deferral in result.deferred:
            self._metrics.deferrals.labels(deferral.reason).inc()

    async def _claim(
        self,
        conn: AsyncConnection,
        limit: int,
        skip: AbstractSet[str] = frozenset(),
        meanwhile: Callable[[], Awaitable[None]] | None = None,
    ) -> claim.ClaimResult:
        sched = self._settings.scheduling
        return await claim.claim(
            conn,
            now=self._clock.now(),
            owner=self.owner,
            lease=timedelta(seconds=sched.lease_seconds),
            limit=limit,
            # The free slots and a little more, for the posts a guardrail defers: reading
            # and planning a whole batch to claim a few posts costs more than another pass
            # (which _settle runs while a pass claims and slots remain).
            batch=min(self._settings.dispatch.batch_size, limit + max(16, limit // 8)),
            limits_for=self.limits_for,
            catch_up=timedelta(seconds=sched.catch_up_seconds),
            postgres=self._postgres,
            skip=skip,
            meanwhile=meanwhile,
        )

    async def _claim_next(
        self,
        session: AsyncSession,
        outcomes: Sequence[Outcome],
        meanwhile: Callable[[], Awaitable[None]] | None = None,
    ) -> Callable[[], None] | None:
        """The finisher's next step, in its transaction: claim for the slots its group frees,
        so that a wave under load costs one transaction (and one sync) instead of two. Left
        to the pump: the group's own posts (one task per post at a time), the claim when few
        slots free up, when leases wait to be reconciled (the pump takes those first), and
        when it fails (the outcomes commit anyway)."""
        free = self._free_slots() + len(outcomes)
        if self._stopping or free < self._low_water:
            return None
        try:
            async with session.begin_nested():
                conn = await session.connection()
                if await self._expired(conn, self._clock.now(), free):
                    return None
                skip = {o.claimed.post_id for o in outcomes}
                result = await self._claim(conn, free, skip, meanwhile)
        except Exception:
            log.exception("dispatch_claim_failed")
            return None
        return functools.partial(self._started, result)

    async def _expired(self, conn: AsyncConnection, now: datetime, limit: int) -> list[str]:
        """Posts whose lease expired, up to ``limit``, this process's in-flight ones excepted.
        Ids only, and the in-flight ones filtered here rather than by a NOT IN of every id in
        the query: every pass runs it."""
        probe = (
            select(POSTS.c.id)
            .where(POSTS.c.state == lifecycle.PUBLISHING, POSTS.c.lease_expires_at <= now)
            .order_by(POSTS.c.lease_expires_at)
            .limit(limit + len(self._in_flight))
        )
        return [pid for pid in await conn.scalars(probe) if pid not in self._in_flight][:limit]

    async def _reap(self, limit: int) -> int:
        now = self._clock.now()
        lease = timedelta(seconds=self._settings.scheduling.lease_seconds)
        async with self._sessions() as session, session.begin():
            ids = await self._expired(await session.connection(), now, limit)
            if not ids:
                return 0
            stmt: Any = (
                select(Post)
                .where(
                    Post.id.in_(ids),
                    Post.state == lifecycle.PUBLISHING,
                    Post.lease_expires_at <= now,
                )
                .order_by(Post.lease_expires_at)
            )
            if self._postgres:
                stmt = stmt.with_for_update(skip_locked=True)
            posts = list(await session.scalars(stmt))
            if not posts:
                return 0
            items = await self._take_over(session, posts, now + lease)
        for item, exclude in items:
            self._spawn(item, exclude)
        log.info("leases_reclaimed", count=len(items), owner=self.owner)
        return len(items)

    async def _take_over(
        self, session: AsyncSession, posts: list[Post], until: datetime
    ) -> list[tuple[ClaimedPost, frozenset[str]]]:
        ids = [p.id for p in posts]
        latest = (
            select(func.max(PublishAttempt.id))
            .where(PublishAttempt.post_id.in_(ids))
            .group_by(PublishAttempt.post_id)
        )
        rows = await session.scalars(select(PublishAttempt).where(PublishAttempt.id.in_(latest)))
        attempts = {a.post_id: a for a in rows}
        pages = await transitions.external_ids(
            await session.connection(), {p.page_id for p in posts}
        )
        items = []
        for post in posts:
            attempt = attempts.get(post.id)
            if attempt is None:  # claimed by a version that wrote no attempt: treat as started
                attempt = PublishAttempt(
                    post_id=post.id,
                    number=post.attempts,
                    instance=post.lease_owner,
                    started_at=post.counted_at or post.updated_at,
                    outcome="started",
                )
                session.add(attempt)
                await session.flush()
            post.lease_owner, post.lease_expires_at = self.owner, until
            exclude = await self._attributed_elsewhere(session, post)
            item = transitions.claimed(
                transitions.row_of(post),
                attempt.id,
                attempt.started_at,
                pages.get(post.page_id),
                reconcile=True,
            )
            items.append((item, exclude))
        return items

    async def _attributed_elsewhere(self, session: AsyncSession, post: Post) -> frozenset[str]:
        stmt = select(Post.remote_id).where(
            Post.page_id == post.page_id, Post.remote_id.is_not(None), Post.id != post.id
        )
        return frozenset(r for r in await session.scalars(stmt) if r)

    # -- workers ------------------------------------------------------------------------------

    def _spawn(self, item: ClaimedPost, exclude: frozenset[str] | None = None) -> None:
        task = asyncio.create_task(self._work(item, exclude), name=f"publish-{item.post_id}")
        self._in_flight[item.post_id] = task
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        post_id = task.get_name().removeprefix("publish-")
        if self._in_flight.get(post_id) is task:  # (a newer task of the post keeps its slot)
            del self._in_flight[post_id]
        # A pass costs about the same whether it claims one post or many: under load, claim
        # once a quarter of the slots is free rather than after every publish.
        if not self._in_flight or self._free_slots() >= self._low_water:
            self._wake.set()

    async def _work(self, item: ClaimedPost, exclude: frozenset[str] | None) -> None:
        if item.reconcile:
            outcome = await self._pipeline.reconcile(item, exclude or frozenset())
        else:
            lateness = (self._clock.now() - item.due_at).total_seconds()
            self._metrics.lateness_seconds.observe(max(lateness, 0.0))
            outcome = await self._pipeline.publish(item)
            self._observe(item, outcome)
        try:
            applied = await self._finisher.submit(outcome)
        except Exception:
            # Not lost: the post stays publishing under our lease; reconciliation resolves it.
            log.error("outcome_not_recorded", post_id=item.post_id, outcome=outcome.kind)
            return
        if applied:
            _log_outcome(self._group_log(), item, outcome)

    def _group_log(self) -> Any:
        group, bound = self._outcome_log
        if group != self._finisher.groups:
            bound = log.bind()
            self._outcome_log = (self._finisher.groups, bound)
        return bound

    def _observe(self, item: ClaimedPost, outcome: Outcome) -> None:
        started = outcome.started_at or item.attempt_started_at
        seconds = (outcome.finished_at - started).total_seconds()
        self._publish_seconds(item.platform).observe(max(seconds, 0.0))
        self._outcomes(outcome.kind).inc()
        if outcome.error_class:
            self._metrics.adapter_errors.labels(item.platform, outcome.error_class).inc()
        for tried in outcome.extra_tries:
            self._metrics.adapter_errors.labels(item.platform, tried.error_class or "").inc()

    # -- tests and tools ----------------------------------------------------------------------

    async def wait_in_flight(self) -> None:
        """Wait for the publishes and reconciliations under way now."""
        await asyncio.gather(*self._in_flight.values(), return_exceptions=True)

    async def drain(self) -> Wake:
        """Run passes and wait for every worker until nothing more can start *now*.

        Used by tests (with a FakeClock) and tools; returns when and why to come back.
        """
        while True:
            result = await self.pass_once()
            if self._in_flight:
                await self.wait_in_flight()
                continue
            if not (result.claimed or result.reconciling):
                return await self.next_wake()


def _log_outcome(log: Any, item: ClaimedPost, outcome: Outcome) -> None:
    fields: dict[str, Any] = {
        "post_id": item.post_id,
        "page_id": item.page_id,
        "platform": item.platform,
        "attempt": item.attempts,
    }
    if outcome.kind == "published" and outcome.published is not None:
        log.info("post_published", remote_id=outcome.published.remote_id, **fields)
    elif outcome.kind == "failed":
        log.warning("post_failed", code=outcome.code, reason=outcome.message, **fields)
    elif outcome.kind == "in_doubt":
        log.warning("publish_in_doubt", code=outcome.code, **fields)
    else:
        log.info(
            "post_rescheduled", not_before=str(outcome.not_before), code=outcome.code, **fields
        )
