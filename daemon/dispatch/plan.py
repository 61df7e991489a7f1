"""What the dispatcher does with each due post of one claiming batch: a pure decision.

For each candidate, in the caller's order (by ``due_at``), the first rule that applies wins:

1. overdue by more than the catch-up window: :class:`Miss` (the post fails with ``MISSED``);
2. a guardrail binds: :class:`Defer` to the earliest instant it allows, with the reason;
3. the page is busy (a publish in flight, or a post claimed earlier in this batch): :class:`Skip`,
   the post stays due and is looked at again on the next pass;
4. otherwise :class:`Claim`.

A claim counts as a publish at ``now`` for the guardrails of every later candidate in the batch,
so one batch never plans more than the limits allow. The caller's histories are not mutated.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import datetime, timedelta

from daemon import guardrails

PAGE_BUSY = "page_busy"
_SECOND = timedelta(seconds=1)


@dataclass(frozen=True, slots=True)
class Candidate:
    post_id: str
    page_id: str
    brand_id: str
    platform: str
    scheduled_at: datetime
    due_at: datetime  # max(scheduled_at, not_before): the instant postd last meant to publish it


@dataclass(frozen=True, slots=True)
class Claim:
    post_id: str


@dataclass(frozen=True, slots=True)
class Defer:
    post_id: str
    not_before: datetime | None  # None: a limit is 0, the post never fits under this config
    reason: str  # one of guardrails.RULES
    code: str  # PAGE_PUBLISH_GUARDRAIL | BRAND_PUBLISH_GUARDRAIL


@dataclass(frozen=True, slots=True)
class Miss:
    post_id: str
    overdue_seconds: int  # whole seconds, rounded down


@dataclass(frozen=True, slots=True)
class Skip:
    post_id: str
    reason: str  # PAGE_BUSY


Action = Claim | Defer | Miss | Skip


def plan_batch(
    candidates: Sequence[Candidate],
    page_history: Mapping[str, Sequence[datetime]],
    brand_history: Mapping[str, Sequence[datetime]],
    busy_pages: AbstractSet[str],
    limits_for: Callable[[str], guardrails.Limits],
    now: datetime,
    catch_up: timedelta,
) -> list[Action]:
    """One action per candidate, in the same order.

    ``page_history`` / ``brand_history`` map a page / brand id to its publishes already counted
    (all ``<= now``; missing ids have none). ``limits_for`` gives a platform's limits. Raises
    ``ValueError`` for a candidate that is not due yet (``due_at > now``) or whose ``due_at`` is
    before its ``scheduled_at``: both are caller bugs.
    """
    pages: dict[str, list[datetime]] = {}
    brands: dict[str, list[datetime]] = {}
    claimed_pages: set[str] = set()
    actions: list[Action] = []
    for candidate in candidates:
        _require_due(candidate, now)
        page = pages.setdefault(candidate.page_id, list(page_history.get(candidate.page_id, ())))
        brand = brands.setdefault(
            candidate.brand_id, list(brand_history.get(candidate.brand_id, ()))
        )
        overdue = now - candidate.due_at
        if overdue > catch_up:
            actions.append(Miss(candidate.post_id, overdue // _SECOND))
            continue
        decision = guardrails.decide(page, brand, limits_for(candidate.platform), now)
        if not decision.allowed:
            actions.append(_defer(candidate, decision))
        elif candidate.page_id in busy_pages or candidate.page_id in claimed_pages:
            actions.append(Skip(candidate.post_id, PAGE_BUSY))
        else:
            actions.append(Claim(candidate.post_id))
            claimed_pages.add(candidate.page_id)
            page.append(now)
            brand.append(now)
    return actions


def _require_due(candidate: Candidate, now: datetime) -> None:
    if candidate.due_at > now:
        raise ValueError(f"post {candidate.post_id} is due at {candidate.due_at}, after {now}")
    if candidate.due_at < candidate.scheduled_at:
        raise ValueError(
            f"post {candidate.post_id}: due_at {candidate.due_at} is before its scheduled_at"
        )


def _defer(candidate: Candidate, decision: guardrails.Decision) -> Defer:
    # decide() always names the rule and its code when it does not allow.
    assert decision.reason is not None and decision.code is not None
    return Defer(candidate.post_id, decision.earliest, decision.reason, decision.code)
