"""Publish guardrails: how many posts a page and a brand may publish, and how close together.

The rules (SPEC §4), over sliding windows of *publishes*, not schedules:

* ``page_per_hour``: at most ``per_hour`` publishes on a page in any 1 h window;
* ``page_per_24h``: at most ``per_24h`` publishes on a page in any 24 h window;
* ``page_min_gap``: at least ``min_gap`` between any two publishes on the same page;
* ``brand_per_24h``: at most ``brand_per_24h`` publishes across all of a brand's pages in any
  24 h window.

Windows are half-open: a publish at ``t`` is counted with the others in ``(t - span, t]``, so a
publish exactly one span before ``t`` no longer counts. A limit of 0 means "never allowed".

Every function is pure: no I/O, and the instant in question is always an argument.

* :func:`decide` answers for a publish *now*, against publishes that already happened. Those only
  age out of the windows, so each rule has its own earliest instant and the answer is the latest of
  them; that rule is the *binding* one and names the reason.
* :func:`fits` answers for a *scheduled* instant among neighbours on both sides. A neighbour after
  the instant can be pushed over a limit too, so the earliest fit is found by scanning the only
  instants where a rule can start to hold: each neighbour plus a window span or the minimum gap.
* :func:`check_page_sequence` and :func:`check_brand_sequence` audit a whole sequence of publishes.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Protocol

HOUR = timedelta(hours=1)
DAY = timedelta(hours=24)

PAGE_PER_HOUR = "page_per_hour"
PAGE_PER_24H = "page_per_24h"
PAGE_MIN_GAP = "page_min_gap"
BRAND_PER_24H = "brand_per_24h"
# Also the tie-break order when several rules bind at the same instant.
RULES = (PAGE_PER_HOUR, PAGE_PER_24H, PAGE_MIN_GAP, BRAND_PER_24H)

PAGE_CODE = "PAGE_PUBLISH_GUARDRAIL"
BRAND_CODE = "BRAND_PUBLISH_GUARDRAIL"
_CODES = {
    PAGE_PER_HOUR: PAGE_CODE,
    PAGE_PER_24H: PAGE_CODE,
    PAGE_MIN_GAP: PAGE_CODE,
    BRAND_PER_24H: BRAND_CODE,
}

_SECOND = timedelta(seconds=1)
_TICK = timedelta(microseconds=1)  # datetime's resolution: t - _TICK is the last instant before t


@dataclass(frozen=True, slots=True)
class PageLimits:
    per_hour: int
    per_24h: int
    min_gap: timedelta

    def __post_init__(self) -> None:
        if self.per_hour < 0 or self.per_24h < 0 or self.min_gap < timedelta(0):
            raise ValueError(f"page limits must not be negative: {self!r}")


@dataclass(frozen=True, slots=True)
class Limits:
    page: PageLimits
    brand_per_24h: int

    def __post_init__(self) -> None:
        if self.brand_per_24h < 0:
            raise ValueError(f"brand_per_24h must not be negative: {self.brand_per_24h}")


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer of :func:`decide` or :func:`fits`.

    ``earliest`` is ``at`` when allowed, else the earliest instant after ``at`` that fits, or
    ``None`` when nothing ever fits under the current limits (a limit of 0). ``reason`` (one of
    :data:`RULES`) and ``code`` name the binding rule and are ``None`` when allowed.
    ``retry_after_seconds`` is ``earliest - at`` rounded up to whole seconds; 0 when allowed,
    and also 0 when ``earliest`` is ``None`` (retrying does not help: check ``earliest``).
    """

    allowed: bool
    earliest: datetime | None
    reason: str | None
    code: str | None
    retry_after_seconds: int


@dataclass(frozen=True, slots=True)
class Violation:
    rule: str  # one of RULES
    at: datetime  # the publish instant that broke it
    detail: str


def decide(
    page_history: Sequence[datetime],
    brand_history: Sequence[datetime],
    limits: Limits,
    at: datetime,
) -> Decision:
    """May a post publish on this page at ``at``, given the publishes already counted?

    ``page_history`` holds the page's publishes, ``brand_history`` those of every page of the brand
    (this one included); both in any order, and instants older than 24 h are ignored. Precondition:
    every instant is ``<= at`` (use :func:`fits` otherwise); ``ValueError`` if not, or if ``at`` is
    naive. O(n log n) in the history size.
    """
    _require_aware(at)
    page = _sorted_up_to(page_history, at)
    brand = _sorted_up_to(brand_history, at)
    bounds = (
        (PAGE_PER_HOUR, _window_earliest(page, limits.page.per_hour, HOUR, at)),
        (PAGE_PER_24H, _window_earliest(page, limits.page.per_24h, DAY, at)),
        (PAGE_MIN_GAP, _gap_earliest(page, limits.page.min_gap, at)),
        (BRAND_PER_24H, _window_earliest(brand, limits.brand_per_24h, DAY, at)),
    )
    never = next((rule for rule, earliest in bounds if earliest is None), None)
    if never is not None:
        return _blocked(never, None, at)
    dated = [(rule, earliest) for rule, earliest in bounds if earliest is not None]
    rule, earliest = max(dated, key=lambda bound: bound[1])  # max keeps the first of equals
    return _allowed(at) if earliest == at else _blocked(rule, earliest, at)


def fits(
    page_history: Sequence[datetime],
    brand_history: Sequence[datetime],
    limits: Limits,
    at: datetime,
) -> Decision:
    """Would one more publish at ``at`` fit among publishes before *and after* it?

    It fits iff it breaks no window that contains it (counting the neighbours on both sides) and
    is at least ``min_gap`` from every publish on the page. Leave the post being (re)scheduled out
    of the histories. When it does not fit, ``earliest`` is the earliest instant ``>= at`` that
    does. With every instant ``<= at`` this agrees with :func:`decide`. O(n log n).
    """
    _require_aware(at)
    page, brand = sorted(page_history), sorted(brand_history)
    rules: tuple[_Rule, ...] = (
        _WindowRule.build(PAGE_PER_HOUR, limits.page.per_hour, HOUR, page),
        _WindowRule.build(PAGE_PER_24H, limits.page.per_24h, DAY, page),
        _GapRule(limits.page.min_gap, page),
        _WindowRule.build(BRAND_PER_24H, limits.brand_per_24h, DAY, brand),
    )
    never = next((rule.name for rule in rules if rule.never), None)
    if never is not None:
        return _blocked(never, None, at)
    if not _broken(rules, at):
        return _allowed(at)
    for instant in sorted({t for rule in rules for t in rule.releases() if t > at}):
        if not _broken(rules, instant):
            # The rule that still held it back an instant earlier is the binding one.
            return _blocked(_broken(rules, instant - _TICK)[0], instant, at)
    raise AssertionError("unreachable: past the last neighbour plus the longest span, all fits")


@dataclass(frozen=True, slots=True)
class Nearby:
    """How many publishes lie close to an instant ``t``: on the page within an hour and within a
    day either side, and within ``min_gap`` either side; on the brand within a day either side
    (open intervals, ``(t - span, t + span)``; counting a few more is safe, see
    :func:`surely_fits`)."""

    page_hour: int
    page_day: int
    page_gap: int
    brand_day: int


def surely_fits(nearby: Nearby, limits: Limits) -> bool:
    """Would :func:`fits` allow a publish at ``t``? True only when it must, from counts alone.

    Every window that contains ``t`` lies inside ``(t - span, t + span)``, so with fewer than
    ``limit`` publishes there each window keeps room for one more; no publish within
    ``min_gap`` either side keeps the gap. False means "ask :func:`fits`" (with the histories,
    which also finds the earliest instant that fits), not "does not fit". Lets the API skip
    reading a busy brand's histories when no limit is close.
    """
    return (
        nearby.page_hour < limits.page.per_hour
        and nearby.page_day < limits.page.per_24h
        and nearby.page_gap == 0
        and nearby.brand_day < limits.brand_per_24h
    )


def check_page_sequence(instants: Sequence[datetime], page: PageLimits) -> list[Violation]:
    """Every publish in ``instants`` (any order) that broke a page rule, ordered by instant."""
    ordered = sorted(instants)
    found = [
        *_window_violations(ordered, page.per_hour, HOUR, PAGE_PER_HOUR),
        *_window_violations(ordered, page.per_24h, DAY, PAGE_PER_24H),
        *_gap_violations(ordered, page.min_gap),
    ]
    return sorted(found, key=lambda v: (v.at, RULES.index(v.rule)))


def check_brand_sequence(instants: Sequence[datetime], brand_per_24h: int) -> list[Violation]:
    """Every publish in ``instants`` (any order) that broke the brand's 24 h limit, in order."""
    return _window_violations(sorted(instants), brand_per_24h, DAY, BRAND_PER_24H)


# --- decide ------------------------------------------------------------------------------------


def _sorted_up_to(history: Sequence[datetime], at: datetime) -> list[datetime]:
    ordered = sorted(history)
    if ordered and ordered[-1] > at:
        raise ValueError(f"history has a publish at {ordered[-1]}, after {at}: use fits()")
    return ordered


def _window_earliest(
    ordered: Sequence[datetime], limit: int, span: timedelta, at: datetime
) -> datetime | None:
    """When the window ending at the new publish holds at most ``limit`` (None: never)."""
    if limit <= 0:
        return None
    start = bisect_right(ordered, at - span)  # ordered[start:] lies in (at - span, at]
    excess = len(ordered) - start - (limit - 1)
    # The oldest `excess` publishes in the window must age out; the last of them does at +span.
    return ordered[start + excess - 1] + span if excess > 0 else at


def _gap_earliest(ordered: Sequence[datetime], min_gap: timedelta, at: datetime) -> datetime:
    return max(at, ordered[-1] + min_gap) if ordered else at


# --- fits --------------------------------------------------------------------------------------


class _Rule(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def never(self) -> bool: ...

    def broken_by(self, t: datetime) -> bool:
        """Would one more publish at ``t`` break this rule?"""
        ...

    def releases(self) -> Iterator[datetime]:
        """The instants at which this rule may start to hold again."""
        ...


@dataclass(frozen=True, slots=True)
class _WindowRule:
    name: str
    limit: int
    span: timedelta
    events: Sequence[datetime]  # sorted
    full: Sequence[datetime]  # sorted: the events whose own window already holds `limit`

    @classmethod
    def build(cls, name: str, limit: int, span: timedelta, events: list[datetime]) -> _WindowRule:
        full = [e for e in events if _count(events, e, span) >= limit]
        return cls(name, limit, span, events, full)

    @property
    def never(self) -> bool:
        return self.limit <= 0

    def broken_by(self, t: datetime) -> bool:
        # The windows containing t end in [t, t + span); the count only rises at an event, so the
        # window ending at t and those ending at the events in (t, t + span) are the ones to check.
        if _count(self.events, t, self.span) >= self.limit:
            return True
        i = bisect_left(self.full, t)
        return i < len(self.full) and self.full[i] < t + self.span

    def releases(self) -> Iterator[datetime]:
        return (e + self.span for e in self.events)


@dataclass(frozen=True, slots=True)
class _GapRule:
    min_gap: timedelta
    events: Sequence[datetime]  # sorted
    name: str = PAGE_MIN_GAP
    never: bool = False

    def broken_by(self, t: datetime) -> bool:
        i = bisect_left(self.events, t)
        after = i < len(self.events) and self.events[i] - t < self.min_gap
        before = i > 0 and t - self.events[i - 1] < self.min_gap
        return after or before

    def releases(self) -> Iterator[datetime]:
        return (e + self.min_gap for e in self.events)


def _count(ordered: Sequence[datetime], end: datetime, span: timedelta) -> int:
    """How many of ``ordered`` lie in ``(end - span, end]``."""
    return bisect_right(ordered, end) - bisect_right(ordered, end - span)


def _broken(rules: Sequence[_Rule], t: datetime) -> list[str]:
    return [rule.name for rule in rules if rule.broken_by(t)]


# --- sequences and decisions -------------------------------------------------------------------


def _window_violations(
    ordered: Sequence[datetime], limit: int, span: timedelta, rule: str
) -> list[Violation]:
    found: list[Violation] = []
    start = 0
    for i, t in enumerate(ordered):
        while ordered[start] <= t - span:
            start += 1
        count = i - start + 1
        if count > limit:
            detail = f"{count} publishes in ({t - span}, {t}], limit {limit}"
            found.append(Violation(rule, t, detail))
    return found


def _gap_violations(ordered: Sequence[datetime], min_gap: timedelta) -> list[Violation]:
    return [
        Violation(PAGE_MIN_GAP, b, f"{b - a} after the publish at {a}, minimum {min_gap}")
        for a, b in pairwise(ordered)
        if b - a < min_gap
    ]


def _require_aware(at: datetime) -> None:
    if at.tzinfo is None:
        raise ValueError(f"{at} is naive: guardrails work on timezone-aware instants")


def _allowed(at: datetime) -> Decision:
    return Decision(allowed=True, earliest=at, reason=None, code=None, retry_after_seconds=0)


def _blocked(rule: str, earliest: datetime | None, at: datetime) -> Decision:
    wait = 0 if earliest is None else -((at - earliest) // _SECOND)  # ceil of whole seconds
    return Decision(
        allowed=False,
        earliest=earliest,
        reason=rule,
        code=_CODES[rule],
        retry_after_seconds=wait,
    )
