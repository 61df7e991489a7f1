"""The webhook deliverer: fans the outbox out to subscriptions and sends the due deliveries.

Like the dispatcher it never polls. It is woken when a transaction that wrote outbox events
commits (:mod:`daemon.events.wakeup`), by its own timer (armed at the earliest retry or lease
expiry, through ``arm``), by PostgreSQL NOTIFY from other instances, and by the API and the CLI
after a test ping or a redelivery. When woken it runs passes (fan out a batch, claim what is due
up to the free slots) until nothing more can start, then reads its next wake time: one statement.
While it has work pending, the app's safety sweep wakes it too; idle, it costs no query.

Each claimed delivery is charged to its user's ``webhooks`` monthly bucket (over the limit: failed
without being sent), signed at send time (both secrets during a rotation window), and POSTed
with at most ``[webhooks] concurrency`` in flight (a quarter of them per subscription). Results
are group-committed. Tests drive :meth:`Deliverer.drain` with a FakeClock.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from daemon import __version__, config
from daemon import clock as clock_mod
from daemon.events import fanout, policy, results, signing, store
from daemon.events.sender import Sender
from daemon.metrics import Metrics
from daemon.store import db, notify

log = structlog.get_logger("postd.webhooks")
USER_AGENT = f"postd/{__version__}"
Arm = Callable[[datetime | None], None]
# charge(conn, [(user_id, tier), ...], now) -> admitted flags, one per item, in order, counted
# in the claim's transaction
Charge = Callable[[AsyncConnection, Sequence[tuple[str, str]], datetime], Awaitable[list[bool]]]
MAX_GROUP = 500
QUOTA_REFUSAL = "MONTHLY_LIMIT_EXCEEDED: the webhooks bucket of this month is used up"


def lease_for(settings: config.WebhookSettings) -> timedelta:
    """A lease far longer than an attempt can last, so a live sender never loses one."""
    return timedelta(seconds=max(60.0, 3 * settings.timeout_seconds + 30))


@dataclass(frozen=True, slots=True)
class PassResult:
    fanned_out: int
    claimed: int

    @property
    def progressed(self) -> bool:
        return bool(self.fanned_out or self.claimed)


class _Committer:
    """Group commit of attempt results: whatever is waiting goes in one transaction."""

    def __init__(self, deliverer: Deliverer) -> None:
        self._deliverer = deliverer
        self._queue: list[tuple[results.Result, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, result: results.Result) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((result, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain(), name="postd-webhook-commit")
        await future

    async def _drain(self) -> None:
        while self._queue:
            group, self._queue = self._queue[:MAX_GROUP], self._queue[MAX_GROUP:]
            try:
                await self._deliverer.apply([result for result, _ in group])
            except Exception as exc:
                log.error("webhook_results_not_recorded", count=len(group), error=str(exc))
                for _, future in group:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for _, future in group:
                if not future.done():
                    future.set_result(None)


class Deliverer:
    def __init__(
        self,
        *,
        engine: AsyncEngine,
        settings: config.Settings,
        clock: clock_mod.Clock,
        owner: str,
        sender: Sender,
        charge: Charge,
        arm: Arm | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._engine = engine
        self._conf = settings.webhooks
        self._clock = clock
        self.owner = owner
        self._sender = sender
        self._charge = charge
        self._arm_timer = arm or (lambda _when: None)
        self._metrics = metrics or Metrics()
        self._armed: datetime | None = None
        self._lease = lease_for(self._conf)
        self._per_subscription = max(1, math.ceil(self._conf.concurrency / 4))
        self._in_flight: dict[str, tuple[str, asyncio.Task[None]]] = {}
        self._committer = _Committer(self)
        self._wake = asyncio.Event()
        self._pass_lock = asyncio.Lock()
        # SQLite has one writer: this process's deliverer transactions queue here rather than
        # in SQLite's busy handler (which sleeps in steps of up to 100 ms). PostgreSQL: no lock.
        self._write_lock: asyncio.Lock | None = asyncio.Lock() if db.is_sqlite(engine) else None
        self._stopping = False
        self._idle = False
        self._settling = False  # the pump runs a pass (see idle)

    # -- lifecycle ----------------------------------------------------------------------------

    async def prepare(self, *, orphaned_leases: bool) -> None:
        """With ``orphaned_leases`` (SQLite: we hold the instance lock) every delivery left
        ``delivering`` belonged to a dead process: it is due again at once."""
        if orphaned_leases:
            async with self._engine.begin() as conn:
                released = await store.release(conn, self._clock.now(), owner=None, ids=None)
            if released:
                log.info("webhook_deliveries_recovered", count=released)

    async def stop(self, grace: float) -> None:
        """Stop claiming; let attempts under way finish for ``grace`` seconds; give back the
        rest (due again at once, the interrupted attempt not counted)."""
        self._stopping = True
        self._wake.set()
        tasks = [task for _, task in self._in_flight.values()]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace)
        if pending:
            ids = [d for d, (_, t) in self._in_flight.items() if t in pending]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            async with self._engine.begin() as conn:
                await store.release(conn, self._clock.now(), owner=self.owner, ids=ids)
            log.warning("webhook_deliveries_released", count=len(ids))

    async def aclose(self) -> None:
        await self._sender.aclose()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def idle(self) -> bool:
        """Nothing in flight, no wake pending, no pass running, and the last look found nothing
        to do. (Without the pass: a pass that finds nothing still ends with a look, after
        ``_idle`` was already true.)"""
        return self._idle and not self._settling and not self._in_flight and not self._wake.is_set()

    @contextlib.asynccontextmanager
    async def _writing(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction (behind the SQLite writer lock)."""
        async with contextlib.AsyncExitStack() as stack:
            if self._write_lock is not None:
                await stack.enter_async_context(self._write_lock)
            yield await stack.enter_async_context(self._engine.begin())

    # -- waking -------------------------------------------------------------------------------

    def wake(self) -> None:
        self._idle = False
        self._wake.set()

    def _arm(self, when: datetime | None) -> None:
        self._armed = when
        self._arm_timer(when)

    def notify_due(self, when: datetime) -> None:
        """Something is due at ``when`` (another instance, the API): wake now or arm earlier."""
        self._idle = False
        if when <= self._clock.now():
            self.wake()
        elif self._armed is None or when < self._armed:
            self._arm(when)

    def on_sweep(self) -> None:
        """The app's safety sweep: run a pass unless the last look found nothing at all."""
        if not self._idle and not self._in_flight:
            self._wake.set()

    async def next_wake(self) -> store.Wake:
        async with db.single_read(self._engine) as conn:
            wake = await store.next_wake(conn)
        self._idle = wake.idle
        return wake

    async def pump(self) -> None:
        """Owned by the app: run passes whenever woken, until stopped."""
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            if self._stopping:
                break
            self._settling = True
            try:
                await self._settle()
            except Exception:
                log.exception("webhook_pass_failed")
                self._arm(self._clock.now() + timedelta(seconds=5))
            finally:
                self._settling = False

    async def _settle(self) -> None:
        while not self._stopping:
            result = await self.pass_once()
            if not (result.progressed and self._free_slots() > 0):
                break
        if not self._in_flight and not self._stopping:
            self._arm((await self.next_wake()).earliest(self._clock.now()))

    # -- one pass -----------------------------------------------------------------------------

    def _free_slots(self) -> int:
        return self._conf.concurrency - len(self._in_flight)

    async def pass_once(self) -> PassResult:
        """One transaction: fan out a batch of outbox events, claim due deliveries up to the
        free slots and charge them to their users' quota; then start sending."""
        async with self._pass_lock:
            if self._stopping:
                return PassResult(0, 0)
            now = self._clock.now()
            async with self._writing() as conn:
                fanned = await fanout.fan_out(conn, now=now, batch=self._conf.batch_size)
                if fanned.deliveries:  # other instances help send them
                    await notify.due(conn, now, notify.WEBHOOKS_CHANNEL)
                claimed: list[store.Claimed] = []
                admitted: list[bool] = []
                if self._free_slots() > 0:
                    claimed = await self._claim(conn, self._free_slots(), now)
                    admitted = await self._admit(conn, claimed, now)
        if claimed:
            self._start(claimed, admitted)
        return PassResult(fanned.events, len(claimed))

    async def _claim(self, conn: AsyncConnection, limit: int, now: datetime) -> list[store.Claimed]:
        busy = Counter(sub for sub, _ in self._in_flight.values())
        return await store.claim(
            conn,
            now=now,
            owner=self.owner,
            lease=self._lease,
            limit=limit,
            batch=self._conf.batch_size,
            per_subscription=self._per_subscription,
            busy=busy,
            in_flight=list(self._in_flight),
        )

    async def _admit(
        self, conn: AsyncConnection, claimed: list[store.Claimed], now: datetime
    ) -> list[bool]:
        if not claimed:
            return []
        try:
            async with conn.begin_nested():  # a failing quota store must not undo the claim
                return await self._charge(conn, [(c.user_id, c.tier) for c in claimed], now)
        except Exception as exc:
            log.error("webhook_quota_unavailable", error=str(exc))
        return [True] * len(claimed)  # send rather than drop

    def _start(self, claimed: list[store.Claimed], admitted: list[bool]) -> None:
        for item, ok in zip(claimed, admitted, strict=True):
            work = self._send(item) if ok else self._refuse(item)
            task = asyncio.create_task(work, name=f"webhook-{item.id}")
            self._in_flight[item.id] = (item.subscription_id, task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.pop(task.get_name().removeprefix("webhook-"), None)
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook_attempt_crashed", error=repr(task.exception()))
        if self._refill():
            self._wake.set()

    def _refill(self) -> bool:
        """Whether enough slots are free to be worth a claim: a quarter of them (or all, when
        nothing is in flight), so claims come in batches rather than one per finished attempt
        (each is a transaction, an fsync on SQLite)."""
        return not self._in_flight or self._free_slots() >= self._per_subscription

    # -- one attempt --------------------------------------------------------------------------

    async def _send(self, item: store.Claimed) -> None:
        body = item.body.encode("utf-8")
        started = self._clock.now()
        headers = signing.headers(
            item.secrets, msg_id=item.id, now=started, body=body, user_agent=USER_AGENT
        )
        sent = await self._sender.post(item.url, headers, body)
        result = results.Result(item, sent.attempted, started, self._clock.now(), sent.duration_ms)
        await self._committer.submit(result)

    async def _refuse(self, item: store.Claimed) -> None:
        now = self._clock.now()
        attempted = policy.Attempted(None, QUOTA_REFUSAL, refused=True, retryable=False)
        await self._committer.submit(results.Result(item, attempted, now, now, 0))

    async def apply(self, batch: Sequence[results.Result]) -> results.Applied:
        async with self._writing() as conn:
            applied = await results.apply(
                conn,
                batch,
                owner=self.owner,
                schedule=self._conf.retry_schedule_seconds,
                auto_disable_after=self._conf.auto_disable_after,
            )
            if applied.retry_at is not None:
                await notify.due(conn, applied.retry_at, notify.WEBHOOKS_CHANNEL)
        for result in batch:
            self._observe(result)
        for subscription_id, reason in applied.disabled:
            self._metrics.webhooks_disabled.labels(reason).inc()
            log.warning("webhook_disabled", webhook_id=subscription_id, reason=reason)
        if applied.retry_at is not None:
            self.notify_due(applied.retry_at)
        return applied

    # -- tests and tools ----------------------------------------------------------------------

    async def drain(self) -> datetime | None:
        """Run passes and wait for every attempt until nothing more can start *now*; return
        when to come back (None: nothing pending)."""
        while True:
            result = await self.pass_once()
            while self._in_flight and not (result.progressed and self._refill()):
                tasks = [t for _, t in self._in_flight.values()]
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                result = PassResult(0, 1)  # something finished: look again
            if not self._in_flight and not result.progressed:
                return (await self.next_wake()).earliest(self._clock.now())

    def _observe(self, result: results.Result) -> None:
        attempted = result.attempted
        self._metrics.webhook_attempts.labels(_outcome(attempted)).inc()
        if not attempted.refused:
            self._metrics.webhook_seconds.observe(result.duration_ms / 1000)
        if not attempted.ok:
            _log_failure(result)


def _outcome(attempted: policy.Attempted) -> str:
    if attempted.refused:
        return "refused"
    if attempted.status_code is None:
        return "error"
    return f"{attempted.status_code // 100}xx"


def _log_failure(result: results.Result) -> None:
    attempted, item = result.attempted, result.claimed
    log.info(
        "webhook_attempt_failed",
        webhook_id=item.subscription_id,
        delivery_id=item.id,
        webhook_event=item.event,
        attempt=item.attempt,
        status_code=attempted.status_code,
        error=attempted.error,
    )
