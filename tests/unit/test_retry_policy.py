"""The retry policy (pure): inline, reschedule or give up."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from daemon.dispatch import retry

NOW = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
POLICY = retry.RetryPolicy(
    max_attempts=5,
    initial_backoff=5,
    max_backoff=900,
    inline_max_wait=10,
    deadline=timedelta(hours=6),
)


def decide(
    failures: int, retry_after: float | None = None, first: datetime = NOW, jitter: float = 0.0
) -> retry.RetryDecision:
    return retry.decide(
        POLICY,
        failures=failures,
        retry_after=retry_after,
        first_attempt_at=first,
        now=NOW,
        jitter=jitter,
    )


@pytest.mark.parametrize(
    ("failures", "retry_after", "expected"),
    [
        (1, None, retry.RetryInline(2.5)),
        (2, None, retry.RetryInline(5.0)),
        (3, None, retry.RetryInline(10.0)),
        (4, None, retry.Reschedule(NOW + timedelta(seconds=20.0))),
        (1, 3.0, retry.RetryInline(3.0)),
        (1, 600.0, retry.Reschedule(NOW + timedelta(seconds=600))),
        (5, None, retry.GiveUp("RETRIES_EXHAUSTED", "5 transient failures")),
        (5, 1.0, retry.GiveUp("RETRIES_EXHAUSTED", "5 transient failures")),
    ],
)
def test_decisions(failures: int, retry_after: float | None, expected: retry.RetryDecision) -> None:
    """Short waits inline, long waits reschedule, Retry-After wins, the budget ends it."""
    assert decide(failures, retry_after) == expected


def test_deadline_bounds_the_next_try() -> None:
    """No try is planned past first_attempt_at + deadline."""
    late = decide(1, retry_after=3600, first=NOW - timedelta(hours=5, minutes=30))
    assert isinstance(late, retry.GiveUp) and "deadline" in late.reason


@pytest.mark.parametrize("failures", range(1, 12))
def test_backoff_is_exponential_with_bounded_jitter(failures: int) -> None:
    """Backoff doubles per failure up to the cap; jitter keeps it within [base/2, base]."""
    base = min(900, 5 * 2 ** (failures - 1))
    low = retry.backoff(POLICY, failures, 0.0)
    high = retry.backoff(POLICY, failures, 0.999999)
    assert low == base / 2 and base / 2 <= high <= base
