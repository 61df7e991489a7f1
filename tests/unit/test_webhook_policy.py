"""The pure webhook delivery policy: retry schedule, outcomes, auto-disable, event matching."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.config import WebhookSettings
from daemon.events import policy, store

T0 = datetime(2026, 5, 12, 10, 0, tzinfo=UTC)
SCHEDULE = WebhookSettings().retry_schedule_seconds
FAIL = policy.Attempted(500, "HTTP 500")


def test_default_schedule_is_the_documents() -> None:
    """30 s, 2 m, 10 m, 30 m, 2 h: six attempts in all, the last 2 h 42 m 30 s after the first."""
    assert SCHEDULE == (30, 120, 600, 1800, 7200)
    times = policy.retry_times(T0, SCHEDULE)
    offsets = [(t - T0).total_seconds() for t in times]
    assert offsets == [0, 30, 150, 750, 2550, 9750]


@pytest.mark.parametrize(
    ("attempt", "status", "wait"),
    [
        (1, policy.PENDING, 30),
        (2, policy.PENDING, 120),
        (3, policy.PENDING, 600),
        (4, policy.PENDING, 1800),
        (5, policy.PENDING, 7200),
        (6, policy.FAILED, None),
    ],
)
def test_each_failed_attempt_waits_its_entry_measured_from_its_end(
    attempt: int, status: str, wait: int | None
) -> None:
    """Attempt k failing at t is retried at t + schedule[k-1]; the sixth fails the delivery."""
    finished = T0 + timedelta(minutes=attempt)
    decision = policy.decide(
        FAIL, attempt_in_cycle=attempt, schedule=SCHEDULE, finished_at=finished
    )
    assert decision.status == status
    if wait is None:
        assert decision.next_attempt_at is None and decision.counts_as_failure
    else:
        assert decision.next_attempt_at == finished + timedelta(seconds=wait)
        assert not decision.counts_as_failure


@pytest.mark.parametrize(
    ("attempted", "status", "counts", "disable", "reset"),
    [
        (policy.Attempted(200), policy.SUCCEEDED, False, None, True),
        (policy.Attempted(204), policy.SUCCEEDED, False, None, True),
        (policy.Attempted(299), policy.SUCCEEDED, False, None, True),
        (policy.Attempted(410, "HTTP 410"), policy.FAILED, True, policy.GONE, False),
        (policy.Attempted(302, "redirect"), policy.PENDING, False, None, False),
        (policy.Attempted(301, "redirect"), policy.PENDING, False, None, False),
        (policy.Attempted(404, "HTTP 404"), policy.PENDING, False, None, False),
        (policy.Attempted(None, "TIMEOUT"), policy.PENDING, False, None, False),
        (policy.Attempted(100, "HTTP 100"), policy.PENDING, False, None, False),
    ],
)
def test_outcome_of_a_first_attempt(
    attempted: policy.Attempted, status: str, counts: bool, disable: str | None, reset: bool
) -> None:
    """2xx succeeds (resets the count); 410 fails at once and disables; 3xx and the rest retry."""
    decision = policy.decide(attempted, attempt_in_cycle=1, schedule=SCHEDULE, finished_at=T0)
    assert decision.status == status
    assert decision.counts_as_failure is counts
    assert decision.disable == disable
    assert decision.reset_failures is reset


def test_a_test_ping_is_tried_once_and_never_counts() -> None:
    """webhook.test: no retry, no failure count, a 410 does not disable."""
    for attempted in (FAIL, policy.Attempted(410, "gone")):
        decision = policy.decide(
            attempted, attempt_in_cycle=1, schedule=SCHEDULE, finished_at=T0, test=True
        )
        assert decision == policy.Decision(policy.FAILED)


def test_a_quota_refusal_fails_without_counting() -> None:
    """Refused before sending and not retryable: failed, not the receiver's fault."""
    refused = policy.Attempted(None, "MONTHLY_LIMIT_EXCEEDED", refused=True, retryable=False)
    decision = policy.decide(refused, attempt_in_cycle=1, schedule=SCHEDULE, finished_at=T0)
    assert decision == policy.Decision(policy.FAILED)


@pytest.mark.parametrize(
    ("failures", "disabled"), [(0, False), (19, False), (20, True), (21, True)]
)
def test_twenty_consecutive_failures_disable(failures: int, disabled: bool) -> None:
    """The subscription is disabled once 20 deliveries in a row have failed."""
    assert policy.disable_after_failure(failures, 20) is disabled


@given(
    schedule=st.lists(st.integers(1, 10_000), min_size=0, max_size=8).map(tuple),
    gaps=st.lists(st.integers(0, 50), min_size=9, max_size=9),
)
def test_a_failing_receiver_gets_exactly_one_plus_len_schedule_attempts(
    schedule: tuple[int, ...], gaps: list[int]
) -> None:
    """Property: always failing, a delivery makes len(schedule) + 1 attempts, each schedule[k]
    after the end of the previous one, then fails."""
    now, attempt, seen = T0, 1, []
    while True:
        finished = now + timedelta(seconds=gaps[attempt - 1])
        decision = policy.decide(
            FAIL, attempt_in_cycle=attempt, schedule=schedule, finished_at=finished
        )
        seen.append(now)
        if decision.status == policy.FAILED:
            break
        assert decision.next_attempt_at == finished + timedelta(seconds=schedule[attempt - 1])
        now, attempt = decision.next_attempt_at, attempt + 1
    assert len(seen) == len(schedule) + 1


@pytest.mark.parametrize(
    ("event", "brand", "created", "events", "brands", "expected"),
    [
        ("post.published", "b1", T0, ("post.published",), (), True),
        ("post.failed", "b1", T0, ("post.published",), (), False),
        ("post.published", "b1", T0 - timedelta(seconds=1), ("post.published",), (), False),
        ("post.published", "b1", T0, ("post.published",), ("b1",), True),
        ("post.published", "b2", T0, ("post.published",), ("b1",), False),
        ("account.quota.warning", None, T0, ("account.quota.warning",), ("b1",), True),
    ],
)
def test_which_events_a_subscription_receives(
    event: str,
    brand: str | None,
    created: datetime,
    events: tuple[str, ...],
    brands: tuple[str, ...],
    expected: bool,
) -> None:
    """Its events only, nothing older than itself, its brands only (account events reach all)."""
    assert (
        policy.matches(
            event=event,
            event_brand_id=brand,
            event_created_at=created,
            events=events,
            brand_ids=brands,
            created_at=T0,
        )
        is expected
    )


def _rows(*subs: str) -> list[SimpleNamespace]:
    return [SimpleNamespace(id=f"d{n}", subscription_id=s) for n, s in enumerate(subs)]


def test_pick_caps_a_subscription_while_others_wait() -> None:
    """With others waiting, one subscription gets at most its share; the rest follow in order."""
    rows = _rows("slow", "slow", "slow", "slow", "fast", "other")
    chosen = store.pick(rows, limit=4, per_subscription=2, busy={})
    assert [r.id for r in chosen] == ["d0", "d1", "d4", "d5"]


def test_pick_gives_idle_slots_to_whoever_has_work() -> None:
    """Alone, a subscription may fill every free slot (the cap only protects the others)."""
    rows = _rows(*["only"] * 10)
    assert len(store.pick(rows, limit=8, per_subscription=2, busy={})) == 8
    assert len(store.pick(rows, limit=8, per_subscription=2, busy={"only": 5})) == 8
    assert store.pick(rows, limit=0, per_subscription=2, busy={}) == []
