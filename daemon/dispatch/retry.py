"""Retry policy, pure: what to do after a transient error that provably did not take effect.

It never sees ambiguous errors (those go to in-doubt reconciliation) nor permanent ones. Short
waits are retried inline (tenacity drives them); long waits send the post back to ``scheduled``
with ``not_before`` so that no worker sleeps and a restart loses nothing. The platform's own
Retry-After replaces the computed backoff. Every try counts against ``max_attempts`` (a platform
that keeps answering 429 cannot hold a post forever) and the per-post deadline bounds the total.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int
    initial_backoff: float
    max_backoff: float
    inline_max_wait: float
    deadline: timedelta


@dataclass(frozen=True, slots=True)
class RetryInline:
    wait: float


@dataclass(frozen=True, slots=True)
class Reschedule:
    not_before: datetime


@dataclass(frozen=True, slots=True)
class GiveUp:
    code: str
    reason: str


RetryDecision = RetryInline | Reschedule | GiveUp


def backoff(policy: RetryPolicy, failures: int, jitter: float) -> float:
    """Exponential backoff with "equal jitter": half fixed, half random (jitter in [0, 1))."""
    base = min(policy.max_backoff, policy.initial_backoff * 2.0 ** max(failures - 1, 0))
    return base / 2 + (base / 2) * jitter


def decide(
    policy: RetryPolicy,
    *,
    failures: int,
    retry_after: float | None,
    first_attempt_at: datetime,
    now: datetime,
    jitter: float,
) -> RetryDecision:
    """Decide after a transient failure; ``failures`` is the number of tries made so far.

    ``retry_after`` is the platform's own instruction (Retry-After, a quota reset) and replaces
    the computed backoff.
    """
    if failures >= policy.max_attempts:
        return GiveUp("RETRIES_EXHAUSTED", f"{failures} transient failures")
    wait = max(retry_after if retry_after is not None else backoff(policy, failures, jitter), 0.0)
    when = now + timedelta(seconds=wait)
    if when > first_attempt_at + policy.deadline:
        return GiveUp("RETRIES_EXHAUSTED", "the next try would pass the post's deadline")
    if wait <= policy.inline_max_wait:
        return RetryInline(wait)
    return Reschedule(when)
