"""Idempotency decisions (pure): what a request does given the row stored under its key."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from daemon.api import idempotency
from daemon.api.idempotency import Action, Seen

NOW = datetime(2026, 5, 14, 10, 0, tzinfo=UTC)
TTL = timedelta(hours=24)
HASH = idempotency.request_hash("POST", "/api/v1/posts/schedule", b'{"a":1}')


def seen(
    *, status: int | None = 201, age: timedelta = timedelta(minutes=5), lock: float | None = None
) -> Seen:
    locked = None if lock is None else NOW + timedelta(seconds=lock)
    return Seen(HASH, status, NOW - age, locked)


@pytest.mark.parametrize(
    ("stored", "request_hash", "action"),
    [
        (None, HASH, Action.CLAIM),
        (seen(), HASH, Action.REPLAY),
        (seen(status=500), HASH, Action.REPLAY),  # a stored 5xx replays like any response
        (seen(), "other", Action.MISMATCH),
        (seen(status=None, lock=10), HASH, Action.WAIT),
        (seen(status=None, lock=10), "other", Action.MISMATCH),
        (seen(status=None, lock=0), HASH, Action.TAKE_OVER),  # the lock ran out: owner died
        (seen(status=None, lock=-5), HASH, Action.TAKE_OVER),
        (seen(age=timedelta(hours=23, minutes=59)), HASH, Action.REPLAY),
        (seen(age=TTL), HASH, Action.TAKE_OVER),  # 24 h old: as if absent
        (seen(age=TTL, status=None, lock=10), "other", Action.TAKE_OVER),
    ],
)
def test_decide(stored: Seen | None, request_hash: str, action: Action) -> None:
    """Absent or expired rows are claimed; finished ones replay or mismatch; running ones wait
    unless their lock ran out."""
    assert idempotency.decide(stored, request_hash, NOW, TTL) is action


@pytest.mark.parametrize(
    ("key", "valid"), [("", False), ("k", True), ("k" * 120, True), ("k" * 121, False)]
)
def test_key_is_1_to_120_characters(key: str, valid: bool) -> None:
    """Keys must be 1-120 characters."""
    assert idempotency.valid_key(key) is valid


def test_request_hash_covers_method_path_and_body() -> None:
    """Changing the method, the path (query included) or one body byte changes the hash."""
    base = idempotency.request_hash("POST", "/a?x=1", b"{}")
    assert base == idempotency.request_hash("post", "/a?x=1", b"{}")
    others = [
        idempotency.request_hash("DELETE", "/a?x=1", b"{}"),
        idempotency.request_hash("POST", "/a?x=2", b"{}"),
        idempotency.request_hash("POST", "/a?x=1", b"{ }"),
    ]
    assert base not in others and len(set(others)) == 3


def test_poll_budget_is_about_two_seconds() -> None:
    """A duplicate waits about 2 s in all for the running request, short polls first."""
    assert 1.5 <= sum(idempotency.POLL_DELAYS) <= 2.5
    assert idempotency.POLL_DELAYS[0] <= 0.01


def test_a_take_over_resumes_the_dead_owners_posts_only_within_the_ttl() -> None:
    """The post(s) a dead owner inserted are carried on with while its key lives (a bulk's by
    item, stored as JSON with string keys); a key past its ttl is a new key, whatever it held."""
    seen = idempotency.Seen(HASH, None, NOW - timedelta(minutes=5), NOW, post_id="p1")
    assert idempotency.resumes(seen, NOW, TTL) == idempotency.Resumed("p1", {})
    assert idempotency.resumes(replace(seen, post_id=None), NOW, TTL) == idempotency.Resumed()
    bulk = replace(seen, post_id=None, made={"0": "p1", "2": "p3"})
    assert idempotency.resumes(bulk, NOW, TTL).made == {0: "p1", 2: "p3"}
    assert idempotency.resumes(replace(bulk, created_at=NOW - TTL), NOW, TTL) == (
        idempotency.Resumed()
    )
