"""Values between the publish pipeline and the store: what was claimed, what happened."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from adapters import base

OutcomeKind = Literal["published", "reschedule", "failed", "in_doubt", "release"]


@dataclass(frozen=True, slots=True)
class ClaimedPost:
    post_id: str
    page_id: str
    brand_id: str
    platform: str
    scheduled_at: datetime
    due_at: datetime
    attempts: int  # tries so far, including the one this claim starts
    attempt_id: int
    attempt_started_at: datetime
    first_attempt_at: datetime  # the retry deadline counts from here
    payload: base.PostPayload
    reconcile: bool = False  # taken over after a lease expired: reconcile, do not publish
    # The post's column values as claimed. While it is publishing nothing else may change them
    # (edits and cancels are refused), so its outcome is applied to these plus the state and
    # lease read again under the finishing transaction.
    row: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class TryRecord:
    """One call to the platform that did not end the attempt (an inline retry)."""

    started_at: datetime
    finished_at: datetime
    error_class: str | None
    error_code: str | None
    http_status: int | None
    excerpt: str | None


@dataclass(slots=True)
class Outcome:
    kind: OutcomeKind
    claimed: ClaimedPost
    finished_at: datetime
    attempt_outcome: str
    published: base.Published | None = None
    not_before: datetime | None = None
    code: str | None = None
    message: str | None = None
    error_class: str | None = None
    http_status: int | None = None
    excerpt: str | None = None
    extra_tries: list[TryRecord] = field(default_factory=list)
    # Still counts in the guardrail windows (it may have reached the platform).
    keep_counted: bool = False
    page_needs_reauth: bool = False
    # When the final try started (later than the claim when inline retries came first).
    started_at: datetime | None = None
    # Set once a published post's first comment was tried: posted | failed | in_doubt.
    first_comment_status: str | None = None
