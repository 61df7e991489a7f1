"""Quotas: per-minute burst, per-day budget, monthly buckets, sandbox caps.

Every counter is a ``UsageCounter`` row keyed ``(subject, bucket, period)``, bumped by one
``INSERT ... ON CONFLICT DO UPDATE SET count = count + n RETURNING`` so that several postd
instances on one PostgreSQL database count correctly. A request or action that would pass a
limit is refused *and not counted* (its increment is taken back in the same transaction), so
hammering a 429 does not eat the month's budget.

What is counted where:

- live tokens, per **user** (the tier is the account's, so extra keys add no budget):
  ``requests`` over a minute ("m:2026-05-01T10:07"), a day ("d:2026-05-01") and a month
  ("2026-05", shown as ``total_requests``); ``reads`` (GET) or ``writes`` (any other method) per
  month; the action buckets ``publishes`` / ``replies`` per month (consume()) and ``webhooks``
  (one per delivery attempt, charge_many()).
- sandbox tokens, per **token**: ``sandbox_requests`` over a minute, a day and ``lifetime``.
  Nothing a sandbox token does touches its user's counters.

The first time a monthly bucket with a warning (reads and the action buckets) reaches 80 % in a
month, the counting transaction also marks the counter and records an ``account.quota.warning``
outbox event (:func:`warning_payload`), so the warning is sent once, and never lost to a crash.

Months are UTC and reset on the 1st. admit() runs on every request, so it group-commits: the
requests that arrive while one counting transaction runs share the next one (a lone request gets
its own at once). Each is still judged on its own, in arrival order, against exact counts.

The top half of the module is pure (period keys, windows, the settlement of a batch, headers,
errors); the I/O is below it.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import math
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import and_, bindparam, delete, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from daemon import config, timefmt
from daemon.api.deps import Principal
from daemon.api.errors import ApiError
from daemon.store import db, writer
from daemon.store.hot import Hot
from daemon.store.models import OutboxEvent, UsageCounter

log = structlog.get_logger("postd.limits")

REQUESTS = "requests"
READS = "reads"
WRITES = "writes"
SANDBOX_REQUESTS = "sandbox_requests"
LIFETIME = "lifetime"
ACTION_BUCKETS = ("publishes", "replies", "webhooks")
MONTHLY_BUCKETS = ("publishes", "replies", "reads", "webhooks")
QUOTA_WARNING = "account.quota.warning"
COUNTER_RETENTION = timedelta(days=2)
MAX_BATCH = 256  # requests counted in one transaction

Key = tuple[str, str, str]  # (subject, bucket, period)
QuotaWarning = tuple[str, int, int]  # (bucket, used, limit)

# -- pure: periods and windows ---------------------------------------------------------------


def month_key(now: datetime) -> str:
    return f"{now.astimezone(UTC):%Y-%m}"


def day_key(now: datetime) -> str:
    return f"d:{now.astimezone(UTC):%Y-%m-%d}"


def minute_key(now: datetime) -> str:
    return f"m:{now.astimezone(UTC):%Y-%m-%dT%H:%M}"


def minute_end(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)


def day_end(now: datetime) -> datetime:
    start = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return start + timedelta(days=1)


def month_end(now: datetime) -> datetime:
    """The 1st of next month, 00:00 UTC: when every monthly bucket resets."""
    now = now.astimezone(UTC)
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    return datetime(year, month, 1, tzinfo=UTC)


def retry_after(now: datetime) -> int:
    """Whole seconds until the minute window ends (1-60)."""
    return max(1, math.ceil((minute_end(now) - now).total_seconds()))


def remaining(used: int, limit: int) -> int:
    return max(0, limit - used)


def warning_due(used: int, limit: int, flagged: int) -> bool:
    """Whether ``used`` is at or past 80 % of ``limit`` and no warning was sent for that limit.

    ``flagged`` holds the limit a warning was last sent for (0: none this month), so a tier change
    mid-month arms the warning again for the new limit; otherwise it fires once per bucket-month.
    """
    return limit > 0 and used * 5 >= limit * 4 and flagged != limit


# -- pure: what a request counts, and the verdicts of a batch --------------------------------


@dataclass(frozen=True, slots=True)
class Meter:
    """One counter a request adds to, and the limit it may not pass (None: only counted)."""

    subject: str
    bucket: str
    period: str
    limit: int | None = None
    code: str | None = None  # the ApiError when the limit is passed
    warn: bool = False  # an 80 % warning bucket

    @property
    def key(self) -> Key:
        return (self.subject, self.bucket, self.period)


def request_meters(
    principal: Principal,
    method: str,
    tier: config.TierLimits,
    sandbox: config.SandboxTokenSettings,
    now: datetime,
) -> tuple[Meter, ...]:
    """What one request counts, most lasting limit first (the one reported when several pass)."""
    minute, day = minute_key(now), day_key(now)
    if principal.sandbox:
        token = principal.token_id
        return (
            Meter(
                token, SANDBOX_REQUESTS, LIFETIME, sandbox.lifetime_requests, "SANDBOX_EXHAUSTED"
            ),
            Meter(token, SANDBOX_REQUESTS, day, sandbox.per_day, "DAILY_LIMIT_EXCEEDED"),
            Meter(token, SANDBOX_REQUESTS, minute, sandbox.per_minute, "RATE_LIMITED"),
        )
    user, month = principal.user_id, month_key(now)
    kind = (
        Meter(user, READS, month, tier.reads, "MONTHLY_LIMIT_EXCEEDED", warn=True)
        if method.upper() == "GET"
        else Meter(user, WRITES, month)
    )
    return (
        kind,
        Meter(user, REQUESTS, day, tier.per_day, "DAILY_LIMIT_EXCEEDED"),
        Meter(user, REQUESTS, minute, tier.per_minute, "RATE_LIMITED"),
        Meter(user, REQUESTS, month),
    )


def burst_meter(meters: Sequence[Meter]) -> Meter:
    return next(m for m in meters if m.code == "RATE_LIMITED")


def first_exceeded(meters: Iterable[Meter], counts: Mapping[Key, int]) -> Meter | None:
    """The first meter whose count (this request included) is past its limit."""
    for meter in meters:
        if meter.limit is not None and counts[meter.key] > meter.limit:
            return meter
    return None


@dataclass(frozen=True, slots=True)
class Job:
    """One request (or action) to count: ``n`` on each of its meters, all or nothing."""

    meters: tuple[Meter, ...]
    n: int = 1
    now: datetime | None = None  # when it happened: dates the quota warning it may raise


@dataclass(frozen=True, slots=True)
class Verdict:
    counts: dict[Key, int]  # each counter as this job saw it, its own n included
    over: Meter | None  # the limit it would pass: refused and counted nowhere
    warnings: tuple[QuotaWarning, ...] = ()  # 80 % crossings it is the one to report


@dataclass(frozen=True, slots=True)
class Settlement:
    verdicts: list[Verdict]
    excess: dict[Key, int] = field(default_factory=dict)  # counted for refused jobs: take back
    flags: dict[Key, int] = field(default_factory=dict)  # new `flagged` values to store


def added(jobs: Iterable[Job]) -> Counter[Key]:
    """What counting every job adds to each counter."""
    total: Counter[Key] = Counter()
    for job in jobs:
        for meter in job.meters:
            total[meter.key] += job.n
    return total


def settle(jobs: Sequence[Job], after: Mapping[Key, tuple[int, int]]) -> Settlement:
    """Judge ``jobs`` in order, given (count, flagged) of each counter after adding them all.

    Each job sees the counts before the batch plus the jobs admitted ahead of it, exactly as if
    they had run one at a time."""
    total = added(jobs)
    running = {key: after[key][0] - n for key, n in total.items()}
    flagged = {key: after[key][1] for key in total}
    verdicts: list[Verdict] = []
    flags: dict[Key, int] = {}
    for job in jobs:
        seen = {m.key: running[m.key] + job.n for m in job.meters}
        over = first_exceeded(job.meters, seen)
        warnings: list[QuotaWarning] = []
        if over is None:
            running.update(seen)
            for m in job.meters:
                if (
                    m.warn
                    and m.limit is not None
                    and warning_due(seen[m.key], m.limit, flagged[m.key])
                ):
                    flagged[m.key] = flags[m.key] = m.limit
                    warnings.append((m.bucket, seen[m.key], m.limit))
        verdicts.append(Verdict(seen, over, tuple(warnings)))
    excess = {key: after[key][0] - running[key] for key in total if after[key][0] != running[key]}
    return Settlement(verdicts, excess, flags)


# -- pure: the headers, errors and /account block --------------------------------------------


def rate_headers(
    tier: str, scopes: Iterable[str], limit: int, used: int, now: datetime
) -> dict[str, str]:
    """The budget headers every response carries (``used`` counts admitted requests)."""
    return {
        "X-API-Tier": tier,
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(remaining(used, limit)),
        "X-RateLimit-Reset": str(int(minute_end(now).timestamp())),
        "X-API-Scopes": " ".join(scopes),
    }


def rejection(
    meter: Meter, used: int, now: datetime, headers: Mapping[str, str], upgrade_url: str
) -> ApiError:
    """The error for a passed limit; ``used`` is the count before the refused request.

    Only RATE_LIMITED carries Retry-After: the SDK sleeps that long before retrying a 429, which
    must not be hours for the daily and monthly budgets (their body says ``resets_at``)."""
    limit, headers = meter.limit, dict(headers)
    if meter.code == "RATE_LIMITED":
        wait = retry_after(now)
        headers["Retry-After"] = str(wait)
        message = f"Rate limit of {limit} requests per minute exceeded; retry in {wait} s"
        return ApiError(
            "RATE_LIMITED", message, headers=headers, retry_after_seconds=wait, limit=limit
        )
    if meter.code == "DAILY_LIMIT_EXCEEDED":
        resets = timefmt.iso(day_end(now))
        message = f"Daily request budget of {limit} consumed; it resets at {resets}"
        return ApiError(
            "DAILY_LIMIT_EXCEEDED", message, headers=headers, limit=limit, resets_at=resets
        )
    if meter.code == "SANDBOX_EXHAUSTED":
        message = f"This sandbox token has used all of its {limit} requests; use a live token"
        return ApiError(
            "SANDBOX_EXHAUSTED", message, headers=headers, upgrade_url=upgrade_url, limit=limit
        )
    resets = timefmt.iso(month_end(now))
    message = f"Monthly {meter.bucket} limit of {limit} reached; it resets at {resets}"
    return ApiError(
        "MONTHLY_LIMIT_EXCEEDED",
        message,
        headers=headers,
        bucket=meter.bucket,
        used=used,
        limit=limit,
        resets_at=resets,
    )


def monthly_block(
    counts: Mapping[str, int], tier: config.TierLimits, now: datetime
) -> dict[str, Any]:
    """The ``quota.monthly`` object of GET /account from the month's counts by bucket."""
    block: dict[str, Any] = {
        "year_month": month_key(now),
        "resets_at": timefmt.iso(month_end(now)),
    }
    for bucket in MONTHLY_BUCKETS:
        used, limit = counts.get(bucket, 0), getattr(tier, bucket)
        block[bucket] = {"used": used, "limit": limit, "remaining": remaining(used, limit)}
    block["writes"] = {"used": counts.get(WRITES, 0), "limit": None, "remaining": None}
    block["total_requests"] = counts.get(REQUESTS, 0)
    return block


def warning_payload(
    user_id: str, bucket: str, used: int, limit: int, period: str, now: datetime
) -> dict[str, Any]:
    """The ``account.quota.warning`` webhook body: the seed's envelope, the bucket in ``quota``."""
    return {
        "event": QUOTA_WARNING,
        "created_at": timefmt.iso(now),
        "data": {
            "userId": user_id,
            "brandId": None,
            "quota": {
                "bucket": bucket,
                "used": used,
                "limit": limit,
                "remaining": remaining(used, limit),
                "percent": used * 100 // limit if limit else 100,
                "period": period,
                "resets_at": timefmt.iso(month_end(now)),
            },
        },
    }


def warning_events(
    jobs: Sequence[Job], verdicts: Sequence[Verdict], default_now: datetime
) -> list[dict[str, Any]]:
    """Outbox rows for the 80 % crossings of a settled batch (one per bucket and month: the
    counter's ``flagged`` mark is written in the same transaction)."""
    rows: list[dict[str, Any]] = []
    for job, verdict in zip(jobs, verdicts, strict=True):
        now = job.now or default_now
        for bucket, used, limit in verdict.warnings:
            meter = next(m for m in job.meters if m.warn and m.bucket == bucket)
            rows.append(
                {
                    "event": QUOTA_WARNING,
                    "post_id": None,
                    "user_id": meter.subject,
                    "brand_id": None,
                    "created_at": now,
                    "payload": warning_payload(
                        meter.subject, bucket, used, limit, meter.period, now
                    ),
                }
            )
    return rows


# -- I/O: one counting transaction -----------------------------------------------------------

_PK = and_(
    UsageCounter.subject == bindparam("s"),
    UsageCounter.bucket == bindparam("b"),
    UsageCounter.period == bindparam("p"),
)
_TAKE_BACK = update(UsageCounter).where(_PK).values(count=UsageCounter.count - bindparam("n"))
_FLAG = update(UsageCounter).where(_PK).values(flagged=bindparam("f"))


@functools.cache
def _upsert(dialect: str) -> Any:
    """``INSERT ... ON CONFLICT DO UPDATE SET count = count + n RETURNING``, built once per
    dialect. Executed with a list of rows, SQLAlchemy sends it as one multi-row statement
    ("insertmanyvalues") and serves its compiled form from cache, which a ``.values([...])``
    statement would miss on every call."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    base = insert(UsageCounter)
    return base.on_conflict_do_update(
        index_elements=[UsageCounter.subject, UsageCounter.bucket, UsageCounter.period],
        set_={"count": UsageCounter.count + base.excluded.count},
    ).returning(
        UsageCounter.subject,
        UsageCounter.bucket,
        UsageCounter.period,
        UsageCounter.count,
        UsageCounter.flagged,
    )


@functools.cache
def _hot_upsert(dialect: str) -> Hot:
    """:func:`_upsert` for one row (daemon/store/hot.py)."""
    return Hot(_upsert(dialect))


async def _count(
    postd_app: Any, jobs: Sequence[Job], riders: Sequence[Rider | None] = ()
) -> list[Verdict]:
    """Count ``jobs`` in one transaction of their own (see :func:`count_in`), then run, in it,
    the rider of each job admitted (see :func:`admit`)."""
    now = _now_of(postd_app)

    async def job(conn: AsyncConnection) -> list[Verdict]:
        verdicts = await count_in(conn, jobs, now)
        for verdict, rider in zip(verdicts, riders, strict=False):
            if rider is None or verdict.over is not None:
                continue
            try:
                await writer.isolated(conn, rider)
            except Exception:  # its own failure, undone alone: its caller does without it
                log.exception("admission_rider_failed")
        return verdicts

    return await writer.write(postd_app, job)


def _now_of(postd_app: Any) -> datetime:
    clock = getattr(postd_app, "clock", None)
    return clock.now() if clock is not None else datetime.now(UTC)


async def count_in(
    conn: AsyncConnection, jobs: Sequence[Job], default_now: datetime
) -> list[Verdict]:
    """Count ``jobs`` in the caller's transaction: one upsert, plus a take-back when some are
    refused and, when a bucket reaches 80 %, a flag update with its ``account.quota.warning``
    outbox event (each a single executemany)."""
    # Sorted so concurrent transactions lock rows in one order (no deadlock on PostgreSQL).
    rows = [
        {"subject": s, "bucket": b, "period": p, "count": n, "flagged": 0}
        for (s, b, p), n in sorted(added(jobs).items())
    ]
    if len(rows) == 1:  # a publish's charge: the statement on its own, without SQLAlchemy
        result: Any = await _hot_upsert(conn.dialect.name).all(conn, rows[0])
    else:
        result = await conn.execute(_upsert(conn.dialect.name), rows)
    after = {(r[0], r[1], r[2]): (int(r[3]), int(r[4])) for r in result}
    settled = settle(jobs, after)
    await _write_back(conn, _TAKE_BACK, "n", settled.excess)
    await _write_back(conn, _FLAG, "f", settled.flags)
    if settled.flags:
        events = warning_events(jobs, settled.verdicts, default_now)
        await conn.execute(insert(OutboxEvent), events)
    return settled.verdicts


async def _write_back(conn: AsyncConnection, stmt: Any, name: str, values: dict[Key, int]) -> None:
    if values:
        params = [{"s": s, "b": b, "p": p, name: v} for (s, b, p), v in sorted(values.items())]
        await conn.execute(stmt, params)


# A group-writer job riding in admit()'s counting transaction (see admit): the
# Idempotency-Key claim.
Rider = Callable[[AsyncConnection], Awaitable[None]]


class _Batcher:
    """Group commit for admit(): requests that arrive while a counting transaction runs wait for
    the next one, which counts them all. The draining task lives only while requests await it."""

    def __init__(self, postd_app: Any) -> None:
        self._app = postd_app
        self._queue: list[tuple[Job, asyncio.Future[Verdict], Rider | None]] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, job: Job, rider: Rider | None = None) -> Verdict:
        future: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
        self._queue.append((job, future, rider))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain(), name="postd-admit-batch")
        return await future

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            batch = [entry for entry in batch if not entry[1].cancelled()]
            if not batch:
                continue  # every caller went away: count nothing
            try:
                jobs, riders = [entry[0] for entry in batch], [entry[2] for entry in batch]
                verdicts = await _count(self._app, jobs, riders)
            except asyncio.CancelledError:
                for _, future, _ in (*batch, *self._queue):
                    future.cancel()
                raise
            except Exception as exc:  # every waiter gets the failure
                for _, future, _ in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future, _), verdict in zip(batch, verdicts, strict=True):
                if not future.done():
                    future.set_result(verdict)


_batchers: weakref.WeakKeyDictionary[Any, _Batcher] = weakref.WeakKeyDictionary()


def _batcher(postd_app: Any) -> _Batcher:
    batcher = _batchers.get(postd_app)
    if batcher is None:
        batcher = _batchers[postd_app] = _Batcher(postd_app)
    return batcher


async def _notify(
    postd_app: Any, user_id: str, warnings: Iterable[QuotaWarning], now: datetime
) -> None:
    """Log each warning and tell ``postd_app.on_quota_warning`` (its outbox event is already
    committed)."""
    hook = getattr(postd_app, "on_quota_warning", None)
    for bucket, used, limit in warnings:
        log.info("quota_warning", user_id=user_id, bucket=bucket, used=used, limit=limit)
        if hook is None:
            continue
        try:
            result = hook(user_id, bucket, used, limit, now)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("quota_warning_hook_failed", user_id=user_id, bucket=bucket)


# -- I/O: the entry points -------------------------------------------------------------------


async def admit(
    postd_app: Any,
    principal: Principal,
    method: str,
    path: str,
    now: datetime,
    rider: Rider | None = None,
) -> dict[str, str]:
    """Count one authenticated request, or refuse it with an ApiError that carries the headers.

    ``rider``: a group-writer job to run in the counting transaction if the request is admitted
    (the Idempotency-Key claim, which so costs no transaction of its own), in a SAVEPOINT: if
    it fails, it is undone and logged, and the request is counted all the same; the rider
    records its own outcome, and its caller does the work another way when there is none.

    Returns the headers for the response: X-API-Tier (the user's tier, for sandbox tokens too),
    X-RateLimit-Limit / -Remaining / -Reset (the minute window) and X-API-Scopes. A refused
    request is counted nowhere. Calls ``postd_app.on_quota_warning`` when reads reach 80 %.
    ``path`` is not used today (every GET counts as a read, as the document says).
    """
    settings = postd_app.settings
    meters = request_meters(
        principal, method, settings.tiers.get(principal.tier), settings.sandbox_tokens, now
    )
    burst = burst_meter(meters)
    assert burst.limit is not None
    verdict = await _batcher(postd_app).submit(Job(meters, now=now), rider)
    used = verdict.counts[burst.key]
    if verdict.over is not None:
        headers = rate_headers(principal.tier, principal.scopes, burst.limit, used - 1, now)
        over_used = verdict.counts[verdict.over.key] - 1
        raise rejection(verdict.over, over_used, now, headers, settings.api.upgrade_url)
    await _notify(postd_app, principal.user_id, verdict.warnings, now)
    return rate_headers(principal.tier, principal.scopes, burst.limit, used, now)


async def consume(
    postd_app: Any, principal: Principal, bucket: str, now: datetime, n: int = 1
) -> None:
    """Take ``n`` from a monthly action bucket (publishes / replies / webhooks) of the caller's
    user, or raise MONTHLY_LIMIT_EXCEEDED counting nothing. Sandbox tokens never consume."""
    if principal.sandbox:
        return
    await charge(postd_app, principal.user_id, principal.tier, bucket, now, n)


async def charge(
    postd_app: Any, user_id: str, tier: str, bucket: str, now: datetime, n: int = 1
) -> None:
    """consume() for a user rather than a request."""
    _check_charge(bucket, n)
    warnings = await writer.write(
        postd_app, lambda conn: charge_in(conn, postd_app, user_id, tier, bucket, now, n)
    )
    await _notify(postd_app, user_id, warnings, now)


async def charge_in(
    conn: AsyncConnection,
    postd_app: Any,
    user_id: str,
    tier: str,
    bucket: str,
    now: datetime,
    n: int = 1,
) -> tuple[QuotaWarning, ...]:
    """charge() in the caller's transaction, which must roll back when this raises; the 80 %
    warnings to hand to :func:`notify` once that transaction is committed."""
    _check_charge(bucket, n)
    limit = getattr(postd_app.settings.tiers.get(tier), bucket)
    meter = Meter(user_id, bucket, month_key(now), limit, "MONTHLY_LIMIT_EXCEEDED", warn=True)
    (verdict,) = await count_in(conn, [Job((meter,), n, now)], now)
    if verdict.over is not None:
        used = verdict.counts[meter.key] - n
        raise rejection(meter, used, now, {}, postd_app.settings.api.upgrade_url)
    return tuple(verdict.warnings)


def _check_charge(bucket: str, n: int) -> None:
    if bucket not in ACTION_BUCKETS:
        raise ValueError(f"not an action bucket: {bucket!r}")
    if n < 1:
        raise ValueError("n must be at least 1")


async def notify(
    postd_app: Any, user_id: str, warnings: Iterable[QuotaWarning], now: datetime
) -> None:
    """Tell of the warnings :func:`charge_in` returned, after its transaction committed."""
    await _notify(postd_app, user_id, warnings, now)


async def charge_many(
    postd_app: Any,
    items: Sequence[tuple[str, str]],
    bucket: str,
    now: datetime,
    conn: AsyncConnection | None = None,
) -> list[bool]:
    """Take 1 from ``bucket`` for each ``(user_id, tier)``, judged in order, in ``conn``'s
    transaction (or one of its own); returns whether each was admitted (refused ones count
    nowhere). Used for webhook delivery attempts; an 80 % crossing records its warning event
    like charge()."""
    if bucket not in ACTION_BUCKETS:
        raise ValueError(f"not an action bucket: {bucket!r}")
    if not items:
        return []
    tiers: config.TierSettings = postd_app.settings.tiers
    month = month_key(now)
    jobs = []
    for user_id, tier in items:
        limits = tiers.get(tier) if tier in config.TierSettings.model_fields else tiers.free
        limit = getattr(limits, bucket)
        meter = Meter(user_id, bucket, month, limit, "MONTHLY_LIMIT_EXCEEDED", warn=True)
        jobs.append(Job((meter,), 1, now))
    if conn is None:
        verdicts = await _count(postd_app, jobs)
    else:
        verdicts = await count_in(conn, jobs, now)
    for (user_id, _), verdict in zip(items, verdicts, strict=True):
        if verdict.warnings:
            await _notify(postd_app, user_id, verdict.warnings, now)
    return [verdict.over is None for verdict in verdicts]


async def refund(postd_app: Any, user_id: str, bucket: str, now: datetime, n: int = 1) -> None:
    """Give back ``n`` taken this month by an action that then did not happen."""
    stmt = (
        update(UsageCounter)
        .where(
            UsageCounter.subject == user_id,
            UsageCounter.bucket == bucket,
            UsageCounter.period == month_key(now),
            UsageCounter.count >= n,
        )
        .values(count=UsageCounter.count - n)
    )
    await writer.execute(postd_app, stmt)


async def usage(postd_app: Any, user_id: str, tier: str, now: datetime) -> dict[str, Any]:
    """The ``quota.monthly`` block of GET /account for ``user_id`` (one read, no transaction)."""
    query = select(UsageCounter.bucket, UsageCounter.count).where(
        UsageCounter.subject == user_id,
        UsageCounter.period == month_key(now),
        UsageCounter.bucket.in_((*MONTHLY_BUCKETS, WRITES, REQUESTS)),
    )
    async with db.reading(postd_app) as conn:
        counts = {str(bucket): int(count) for bucket, count in await conn.execute(query)}
    return monthly_block(counts, postd_app.settings.tiers.get(tier), now)


async def purge_counters(session: AsyncSession, now: datetime) -> int:
    """Delete minute and day counters older than two days (months are kept); rows deleted.

    Runs in the caller's transaction; the caller commits."""
    cutoff = now - COUNTER_RETENTION
    period = UsageCounter.period
    result = await session.execute(
        delete(UsageCounter).where(
            or_(
                and_(period.like("m:%"), period < minute_key(cutoff)),
                and_(period.like("d:%"), period < day_key(cutoff)),
            )
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)
