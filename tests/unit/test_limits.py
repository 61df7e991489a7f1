"""Quota arithmetic (pure): periods, windows, the settlement of a batch, headers and errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon import config
from daemon.api import limits
from daemon.api.deps import Principal

NOW = datetime(2026, 5, 14, 10, 7, 23, 400_000, tzinfo=UTC)
FREE = config.TierSettings().free
SANDBOX = config.SandboxTokenSettings()


def principal(kind: str = "live") -> Principal:
    return Principal(
        token_id="tok1",
        token_name="test",
        token_prefix="outreply_live_ab12c",
        kind=kind,
        user_id="user1",
        email="a@example.com",
        firstname=None,
        lastname=None,
        tier="free",
        scopes=("read:posts", "write:posts"),
        brand_ids=frozenset(),
        restricted_brand_ids=(),
        expires_at=None,
        last_used_at=None,
        request_count=0,
    )


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


EAST = datetime(2026, 6, 1, 1, 30, tzinfo=timezone(timedelta(hours=2)))


@pytest.mark.parametrize(
    ("now", "keys"),
    [
        (NOW, ("2026-05", "d:2026-05-14", "m:2026-05-14T10:07")),
        (utc(2026, 5, 31, 23, 59, 59, 999_999), ("2026-05", "d:2026-05-31", "m:2026-05-31T23:59")),
        (utc(2026, 6, 1, 0, 0), ("2026-06", "d:2026-06-01", "m:2026-06-01T00:00")),
        (utc(2026, 12, 31, 23, 59), ("2026-12", "d:2026-12-31", "m:2026-12-31T23:59")),
        # An offset is read as the UTC instant it is: 01:30+02:00 on June 1st is still May.
        (EAST, ("2026-05", "d:2026-05-31", "m:2026-05-31T23:30")),
    ],
)  # fmt: skip
def test_period_keys_are_utc(now: datetime, keys: tuple[str, str, str]) -> None:
    """Month, day and minute keys name the UTC period the instant falls in."""
    assert (limits.month_key(now), limits.day_key(now), limits.minute_key(now)) == keys


@pytest.mark.parametrize(
    ("now", "end"),
    [
        (NOW, datetime(2026, 6, 1, tzinfo=UTC)),
        (datetime(2026, 5, 1, 0, 0, tzinfo=UTC), datetime(2026, 6, 1, tzinfo=UTC)),
        (datetime(2026, 5, 31, 23, 59, 59, tzinfo=UTC), datetime(2026, 6, 1, tzinfo=UTC)),
        (datetime(2026, 12, 15, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)),
        (datetime(2028, 2, 29, 12, tzinfo=UTC), datetime(2028, 3, 1, tzinfo=UTC)),
    ],
)
def test_month_resets_on_the_first_utc(now: datetime, end: datetime) -> None:
    """Monthly buckets reset at 00:00 UTC on the 1st of the next month (December rolls the year)."""
    assert limits.month_end(now) == end
    assert limits.month_key(end) != limits.month_key(now)
    assert limits.month_key(end - timedelta(microseconds=1)) == limits.month_key(now)


@pytest.mark.parametrize(
    ("second", "micro", "wait"),
    [(0, 0, 60), (23, 400_000, 37), (30, 0, 30), (59, 0, 1), (59, 999_999, 1)],
)
def test_retry_after_counts_to_the_next_minute(second: int, micro: int, wait: int) -> None:
    """Retry-After is the whole seconds (rounded up, 1-60) to the end of the minute window."""
    now = NOW.replace(second=second, microsecond=micro)
    assert limits.minute_end(now) == datetime(2026, 5, 14, 10, 8, tzinfo=UTC)
    assert limits.retry_after(now) == wait


def test_day_end_is_next_utc_midnight() -> None:
    """The daily budget resets at the next 00:00 UTC."""
    assert limits.day_end(NOW) == datetime(2026, 5, 15, tzinfo=UTC)


@pytest.mark.parametrize(
    ("used", "limit", "left"), [(0, 10, 10), (7, 10, 3), (10, 10, 0), (12, 10, 0)]
)
def test_remaining_never_negative(used: int, limit: int, left: int) -> None:
    """Remaining is limit - used, floored at zero."""
    assert limits.remaining(used, limit) == left


@pytest.mark.parametrize(
    ("used", "limit", "flagged", "due"),
    [
        (47, 60, 0, False),  # 78 %
        (48, 60, 0, True),  # exactly 80 %
        (59, 60, 0, True),  # past 80 %, not yet warned (the crossing request was refused)
        (48, 60, 60, False),  # already warned for this limit this month
        (400, 500, 60, True),  # tier went 60 -> 500 mid-month: warn again for the new limit
        (0, 0, 0, False),  # a zero limit never warns
        (4, 5, 0, True),
        (3, 5, 0, False),
    ],
)
def test_warning_due_once_at_80_percent(used: int, limit: int, flagged: int, due: bool) -> None:
    """The 80 % warning is due from 80 % on, once per limit per month."""
    assert limits.warning_due(used, limit, flagged) is due


def test_live_request_meters() -> None:
    """A live GET counts reads (limited), day and minute (limited) and the month total, per user;
    a POST counts writes instead of reads."""
    get = limits.request_meters(principal(), "GET", FREE, SANDBOX, NOW)
    assert [(m.subject, m.bucket, m.period, m.limit, m.code) for m in get] == [
        ("user1", "reads", "2026-05", 10_000, "MONTHLY_LIMIT_EXCEEDED"),
        ("user1", "requests", "d:2026-05-14", FREE.per_day, "DAILY_LIMIT_EXCEEDED"),
        ("user1", "requests", "m:2026-05-14T10:07", 10, "RATE_LIMITED"),
        ("user1", "requests", "2026-05", None, None),
    ]
    post = limits.request_meters(principal(), "POST", FREE, SANDBOX, NOW)
    assert (post[0].bucket, post[0].period, post[0].limit) == ("writes", "2026-05", None)


def test_sandbox_request_meters_never_touch_the_user() -> None:
    """A sandbox request counts only its token: lifetime 100, 50 a day, 5 a minute."""
    meters = limits.request_meters(principal("sandbox"), "GET", FREE, SANDBOX, NOW)
    assert [(m.subject, m.bucket, m.period, m.limit, m.code) for m in meters] == [
        ("tok1", "sandbox_requests", "lifetime", 100, "SANDBOX_EXHAUSTED"),
        ("tok1", "sandbox_requests", "d:2026-05-14", 50, "DAILY_LIMIT_EXCEEDED"),
        ("tok1", "sandbox_requests", "m:2026-05-14T10:07", 5, "RATE_LIMITED"),
    ]


MINUTE = limits.Meter("u", "requests", "m:x", 3, "RATE_LIMITED")
DAY = limits.Meter("u", "requests", "d:x", 4, "DAILY_LIMIT_EXCEEDED")
TOTAL = limits.Meter("u", "requests", "2026-05")
READS = limits.Meter("u", "reads", "2026-05", 10, "MONTHLY_LIMIT_EXCEEDED", warn=True)


def test_settle_judges_a_batch_in_order() -> None:
    """Of five requests with 3 per minute allowed, the first three pass, the rest are refused
    and taken back; each sees the counts as if they had run one at a time."""
    job = limits.Job((DAY, MINUTE, TOTAL))
    after = {m.key: (5, 0) for m in job.meters}  # the upsert added all five
    settled = limits.settle([job] * 5, after)
    assert [v.over for v in settled.verdicts] == [None, None, None, MINUTE, MINUTE]
    assert [v.counts[MINUTE.key] for v in settled.verdicts] == [1, 2, 3, 4, 4]
    assert settled.excess == {MINUTE.key: 2, DAY.key: 2, TOTAL.key: 2}


def test_settle_reports_the_most_lasting_limit() -> None:
    """When the day budget and the minute are both passed, the daily error is the one reported."""
    job = limits.Job((DAY, MINUTE, TOTAL))
    after = {DAY.key: (5, 0), MINUTE.key: (9, 0), TOTAL.key: (5, 0)}
    (verdict,) = limits.settle([job], after).verdicts
    assert verdict.over is DAY


def test_settle_flags_the_80_percent_crossing_once() -> None:
    """Reads crossing 80 % in a batch warn once, from the request that crossed, with its count."""
    job = limits.Job((READS,))
    settled = limits.settle([job] * 4, {READS.key: (10, 0)})  # 7, 8, 9, 10 of 10
    assert [v.warnings for v in settled.verdicts] == [(), (("reads", 8, 10),), (), ()]
    assert settled.flags == {READS.key: 10}
    again = limits.settle([job], {READS.key: (10, 10)})
    assert again.verdicts[0].warnings == () and again.flags == {}


def test_settle_refused_requests_do_not_warn() -> None:
    """A request refused for its minute does not count toward reads, so it cannot warn."""
    tight = limits.Meter("u", "requests", "m:x", 0, "RATE_LIMITED")
    (verdict,) = limits.settle(
        [limits.Job((READS, tight))], {READS.key: (9, 0), tight.key: (1, 0)}
    ).verdicts
    assert verdict.over is tight and verdict.warnings == ()


@given(
    start=st.integers(0, 12),
    sizes=st.lists(st.integers(1, 3), min_size=1, max_size=12),
    limit=st.integers(0, 15),
)
def test_settle_equals_one_at_a_time(start: int, sizes: list[int], limit: int) -> None:
    """A batch admits and refuses exactly what the same requests one at a time would."""
    meter = limits.Meter("u", "publishes", "2026-05", limit, "MONTHLY_LIMIT_EXCEEDED")
    jobs = [limits.Job((meter,), n) for n in sizes]
    settled = limits.settle(jobs, {meter.key: (start + sum(sizes), 0)})
    count, expected = start, []
    for n in sizes:
        passed = count + n <= limit
        count += n if passed else 0
        expected.append(passed)
    assert [v.over is None for v in settled.verdicts] == expected
    assert start + sum(sizes) - settled.excess.get(meter.key, 0) == count


def test_rate_headers() -> None:
    """The budget headers name the tier, the minute limit, what is left and the window's end."""
    assert limits.rate_headers("pro", ("read:pages", "write:posts"), 60, 2, NOW) == {
        "X-API-Tier": "pro",
        "X-RateLimit-Limit": "60",
        "X-RateLimit-Remaining": "58",
        "X-RateLimit-Reset": str(int(datetime(2026, 5, 14, 10, 8, tzinfo=UTC).timestamp())),
        "X-API-Scopes": "read:pages write:posts",
    }


def test_rate_limited_error_says_when_to_retry() -> None:
    """RATE_LIMITED is a 429 with Retry-After and retry_after_seconds, plus the budget headers."""
    err = limits.rejection(MINUTE, 3, NOW, {"X-RateLimit-Remaining": "0"}, "https://up")
    assert err.status == 429
    assert err.headers == {"X-RateLimit-Remaining": "0", "Retry-After": "37"}
    assert err.body()["code"] == "RATE_LIMITED"
    assert err.body()["retry_after_seconds"] == 37


def test_long_budgets_carry_no_retry_after() -> None:
    """Daily and monthly refusals say resets_at but no Retry-After (the SDK would sleep it)."""
    daily = limits.rejection(DAY, 4, NOW, {}, "https://up")
    assert (daily.status, daily.headers) == (429, {})
    assert daily.body()["resets_at"] == "2026-05-15T00:00:00.000Z"
    monthly = limits.rejection(READS, 10, NOW, {}, "https://up")
    assert monthly.body() | {"error": "", "message": ""} == {
        "error": "",
        "message": "",
        "code": "MONTHLY_LIMIT_EXCEEDED",
        "bucket": "reads",
        "used": 10,
        "limit": 10,
        "resets_at": "2026-06-01T00:00:00.000Z",
    }


def test_sandbox_exhausted_points_at_the_upgrade() -> None:
    """SANDBOX_EXHAUSTED is a 402 whose body carries upgrade_url."""
    meter = limits.Meter("t", "sandbox_requests", "lifetime", 100, "SANDBOX_EXHAUSTED")
    err = limits.rejection(meter, 100, NOW, {}, "https://postd.example/upgrade")
    assert err.status == 402
    assert err.body()["upgrade_url"] == "https://postd.example/upgrade"


def test_monthly_block_has_the_documented_shape() -> None:
    """quota.monthly lists the four limited buckets, writes without a limit, and the total."""
    counts = {"publishes": 84, "reads": 5421, "writes": 17, "requests": 5438}
    assert limits.monthly_block(counts, config.TierSettings().pro, NOW) == {
        "year_month": "2026-05",
        "resets_at": "2026-06-01T00:00:00.000Z",
        "publishes": {"used": 84, "limit": 500, "remaining": 416},
        "replies": {"used": 0, "limit": 3000, "remaining": 3000},
        "reads": {"used": 5421, "limit": 100000, "remaining": 94579},
        "webhooks": {"used": 0, "limit": 50000, "remaining": 50000},
        "writes": {"used": 17, "limit": None, "remaining": None},
        "total_requests": 5438,
    }


@pytest.mark.parametrize(("bucket", "n"), [("reads", 1), ("storage", 1), ("publishes", 0)])
async def test_charge_rejects_unknown_buckets_and_counts(bucket: str, n: int) -> None:
    """Only publishes / replies / webhooks can be charged, by at least one."""
    with pytest.raises(ValueError):
        await limits.charge(object(), "user1", "free", bucket, NOW, n)
