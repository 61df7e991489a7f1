"""What happens after a delivery attempt, pure: retry, succeed, fail, or disable the subscription.

    attempt ──2xx──▶ succeeded                          (the subscription's failure count resets)
       ├──410 Gone──▶ failed, subscription disabled at once
       ├──other / timeout / 3xx, retries left──▶ pending again at finished + wait[k]
       └──other, no retries left──▶ failed            (failure count + 1; disabled at the limit)

``wait[k]`` is the k-th entry of ``[webhooks] retry_schedule_seconds`` (30 s, 2 m, 10 m, 30 m, 2 h),
measured from the end of the previous attempt. A test ping (``webhook.test``) is tried once and
never counts towards disabling. Nothing here reads the clock or the database.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

EVENTS: tuple[str, ...] = (
    "post.published",
    "post.failed",
    "comment.received",
    "comment.replied",
    "account.quota.warning",
)
TEST_EVENT = "webhook.test"

PENDING = "pending"
DELIVERING = "delivering"
SUCCEEDED = "succeeded"
FAILED = "failed"
STATUSES = (PENDING, DELIVERING, SUCCEEDED, FAILED)

# Why a subscription is disabled.
MANUAL = "manual"
CONSECUTIVE_FAILURES = "consecutive_failures"
GONE = "gone"


@dataclass(frozen=True, slots=True)
class Attempted:
    """The outcome of one attempt: an HTTP status, or an error before/instead of one."""

    status_code: int | None
    error: str | None = None
    # Refused before sending (quota, a URL the policy refuses...): retried like a failure only
    # when ``retryable``; never counts towards disabling the subscription.
    refused: bool = False
    retryable: bool = True

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def gone(self) -> bool:
        return self.status_code == 410


@dataclass(frozen=True, slots=True)
class Decision:
    status: str  # PENDING (retry) | SUCCEEDED | FAILED
    next_attempt_at: datetime | None = None
    counts_as_failure: bool = False  # a failed delivery for the auto-disable count
    disable: str | None = None  # disable the subscription, for this reason
    reset_failures: bool = False


def decide(
    attempted: Attempted,
    *,
    attempt_in_cycle: int,
    schedule: Sequence[float],
    finished_at: datetime,
    test: bool = False,
) -> Decision:
    """The delivery's next state after its ``attempt_in_cycle``-th attempt (1-based) of the
    current cycle."""
    if attempted.ok:
        return Decision(SUCCEEDED, reset_failures=True)
    if attempted.gone and not attempted.refused:
        return Decision(FAILED, counts_as_failure=not test, disable=None if test else GONE)
    retries_left = not test and attempted.retryable and attempt_in_cycle <= len(schedule)
    if retries_left:
        wait = timedelta(seconds=schedule[attempt_in_cycle - 1])
        return Decision(PENDING, next_attempt_at=finished_at + wait)
    return Decision(FAILED, counts_as_failure=not (test or attempted.refused))


def matches(
    *,
    event: str,
    event_brand_id: str | None,
    event_created_at: datetime,
    events: Sequence[str],
    brand_ids: Sequence[str],
    created_at: datetime,
) -> bool:
    """Whether a subscription (its ``events``, brand restriction and creation time) receives an
    outbox event of its user. Account-level events (no brand) reach every subscription of the
    user; a subscription never receives what happened before it existed."""
    if event not in events or event_created_at < created_at:
        return False
    return not brand_ids or event_brand_id is None or event_brand_id in brand_ids


def disable_after_failure(consecutive_failures: int, limit: int) -> bool:
    """Whether a subscription with this many consecutive failed deliveries is disabled."""
    return consecutive_failures >= limit


def retry_times(start: datetime, schedule: Sequence[float]) -> list[datetime]:
    """When every attempt of a cycle happens if each one fails at once (first at ``start``)."""
    times = [start]
    for wait in schedule:
        times.append(times[-1] + timedelta(seconds=wait))
    return times
