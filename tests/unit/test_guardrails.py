"""The publish guardrails: decide, fits and the sequence audits."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon import guardrails
from daemon.guardrails import Decision, Limits, Nearby, PageLimits

AT = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
PAGE = "PAGE_PUBLISH_GUARDRAIL"
BRAND = "BRAND_PUBLISH_GUARDRAIL"
CODES = {
    "page_per_hour": PAGE,
    "page_per_24h": PAGE,
    "page_min_gap": PAGE,
    "brand_per_24h": BRAND,
}


def sec(n: float) -> timedelta:
    return timedelta(seconds=n)


GAP = sec(60)


def mins(n: float) -> timedelta:
    return timedelta(minutes=n)


def hrs(n: float) -> timedelta:
    return timedelta(hours=n)


def limits(per_hour: int = 2, per_24h: int = 5, gap: timedelta = GAP, brand: int = 8) -> Limits:
    return Limits(PageLimits(per_hour, per_24h, gap), brand)


def at(*offsets: timedelta) -> list[datetime]:
    return [AT + offset for offset in offsets]


def blocked(earliest: datetime | None, reason: str) -> Decision:
    wait = 0 if earliest is None else -((AT - earliest) // sec(1))
    return Decision(False, earliest, reason, CODES[reason], wait)


ALLOWED = Decision(True, AT, None, None, 0)

# --- decide --------------------------------------------------------------------------------------

DECIDE_CASES = [
    pytest.param([], None, limits(), ALLOWED, id="empty-history"),
    pytest.param(
        at(-mins(50), -mins(20)), None, limits(), blocked(AT + mins(10), "page_per_hour"),
        id="per-hour-binds-on-oldest-in-window",
    ),
    pytest.param(
        at(-mins(50), -mins(40), -mins(20)), None, limits(),
        blocked(AT + mins(20), "page_per_hour"), id="per-hour-waits-for-kth-oldest",
    ),
    pytest.param(
        at(-mins(20), -mins(50), -mins(40)), None, limits(),
        blocked(AT + mins(20), "page_per_hour"), id="history-unsorted",
    ),
    pytest.param(
        at(-mins(60), -mins(20)), None, limits(), ALLOWED, id="exactly-1h-ago-not-counted",
    ),
    pytest.param(
        at(-hrs(23), -hrs(10), -hrs(5)), None, limits(per_hour=10, per_24h=3),
        blocked(AT + hrs(1), "page_per_24h"), id="per-24h-binds",
    ),
    pytest.param(
        at(-hrs(24), -hrs(10), -hrs(5)), None, limits(per_hour=10, per_24h=3), ALLOWED,
        id="exactly-24h-ago-not-counted",
    ),
    pytest.param(
        at(-hrs(30), -hrs(26), -hrs(25), -hrs(24) - sec(1)), None, limits(per_hour=1, per_24h=1),
        ALLOWED, id="older-than-24h-ignored",
    ),
    pytest.param(at(-sec(30)), None, limits(), blocked(AT + sec(30), "page_min_gap"), id="gap"),
    pytest.param(at(-sec(60)), None, limits(), ALLOWED, id="gap-exactly-met"),
    pytest.param(at(-sec(10), -sec(10)), None, limits(gap=sec(0)), blocked(
        AT + hrs(1) - sec(10), "page_per_hour"), id="same-instant-publishes-both-count",
    ),
    pytest.param(
        [], at(-hrs(3), -hrs(2), -hrs(1)), limits(brand=3), blocked(AT + hrs(21), "brand_per_24h"),
        id="brand-binds",
    ),
    pytest.param(
        [], at(-hrs(24), -hrs(2), -hrs(1)), limits(brand=3), ALLOWED, id="brand-exactly-24h-ago",
    ),
    pytest.param(
        at(-mins(50), -sec(30)), None, limits(), blocked(AT + mins(10), "page_per_hour"),
        id="latest-rule-binds-hour-over-gap",
    ),
    pytest.param(
        at(-sec(30)), at(-hrs(23), -sec(30)), limits(brand=2),
        blocked(AT + hrs(1), "brand_per_24h"),
        id="latest-rule-binds-brand-over-gap",
    ),
    pytest.param(
        at(-mins(59)), None, limits(per_hour=1, gap=hrs(1)), blocked(AT + mins(1), "page_per_hour"),
        id="tie-goes-to-first-rule",
    ),
    pytest.param([], None, limits(per_hour=0), blocked(None, "page_per_hour"), id="per-hour-0"),
    pytest.param([], None, limits(per_24h=0), blocked(None, "page_per_24h"), id="per-24h-0"),
    pytest.param([], None, limits(brand=0), blocked(None, "brand_per_24h"), id="brand-0"),
    pytest.param(
        at(-sec(30)), None, limits(brand=0), blocked(None, "brand_per_24h"), id="never-beats-dated",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("page", "brand", "lim", "expected"), DECIDE_CASES)
def test_decide(
    page: list[datetime], brand: list[datetime] | None, lim: Limits, expected: Decision
) -> None:
    """decide allows, or names the binding rule and the earliest instant that fits."""
    assert guardrails.decide(page, page if brand is None else brand, lim, AT) == expected


@pytest.mark.parametrize(
    ("last_ago", "retry_after"),
    [
        (sec(30), 30),
        (sec(29.8), 31),
        (sec(60) - timedelta(microseconds=1), 1),
        (sec(59), 1),
    ],
)
def test_decide_rounds_retry_after_up(last_ago: timedelta, retry_after: int) -> None:
    """retry_after_seconds is earliest - at rounded up to whole seconds."""
    decision = guardrails.decide(at(-last_ago), [], limits(), AT)
    assert decision.earliest == AT + sec(60) - last_ago
    assert decision.retry_after_seconds == retry_after


@pytest.mark.parametrize(
    ("page", "brand", "when"),
    [
        (at(sec(1)), [], AT),
        ([], at(timedelta(microseconds=1)), AT),
        ([], [], AT.replace(tzinfo=None)),
    ],
    ids=["page-after-at", "brand-after-at", "naive-at"],
)
def test_decide_rejects_bad_input(
    page: list[datetime], brand: list[datetime], when: datetime
) -> None:
    """decide refuses history after `at` and naive instants."""
    with pytest.raises(ValueError):
        guardrails.decide(page, brand, limits(), when)


@pytest.mark.parametrize(
    "make",
    [
        lambda: PageLimits(-1, 1, sec(0)),
        lambda: PageLimits(1, -1, sec(0)),
        lambda: PageLimits(1, 1, sec(-1)),
        lambda: Limits(PageLimits(1, 1, sec(0)), -1),
    ],
)
def test_negative_limits_are_rejected(make: Callable[[], object]) -> None:
    """Limits cannot be negative."""
    with pytest.raises(ValueError):
        make()


# --- fits ----------------------------------------------------------------------------------------

FITS_CASES = [
    pytest.param([], None, limits(), ALLOWED, id="empty"),
    pytest.param(
        at(sec(30)), None, limits(), blocked(AT + sec(90), "page_min_gap"), id="gap-after",
    ),
    pytest.param(
        at(-sec(30)), None, limits(), blocked(AT + sec(30), "page_min_gap"), id="gap-before",
    ),
    pytest.param(
        at(-sec(30), sec(40)), None, limits(per_hour=5), blocked(AT + sec(100), "page_min_gap"),
        id="gap-both-sides",
    ),
    pytest.param(
        at(-sec(60), sec(60)), None, limits(per_hour=5), ALLOWED, id="gap-exactly-both-sides",
    ),
    pytest.param(
        at(mins(10), mins(20)), None, limits(), blocked(AT + mins(70), "page_per_hour"),
        id="future-cluster-fills-window",
    ),
    pytest.param(at(-mins(50), mins(30)), None, limits(), ALLOWED, id="room-between-neighbours"),
    pytest.param(
        at(-mins(50), mins(50)), None, limits(per_hour=1), blocked(AT + mins(110), "page_per_hour"),
        id="no-room-between-neighbours",
    ),
    pytest.param(
        at(hrs(1), hrs(2)), None, limits(per_24h=2), blocked(AT + hrs(25), "page_per_24h"),
        id="future-cluster-fills-24h",
    ),
    pytest.param(
        [], at(hrs(5)), limits(brand=1), blocked(AT + hrs(29), "brand_per_24h"), id="brand-future",
    ),
    pytest.param(at(mins(60)), None, limits(per_hour=1), ALLOWED, id="neighbour-exactly-1h-later"),
    pytest.param(at(hrs(24)), None, limits(per_24h=1), ALLOWED, id="neighbour-exactly-24h-later"),
    pytest.param([AT], None, limits(gap=sec(0)), ALLOWED, id="same-instant-without-gap"),
    pytest.param(at(hrs(2)), None, limits(per_hour=0), blocked(None, "page_per_hour"), id="zero"),
]  # fmt: skip


@pytest.mark.parametrize(("page", "brand", "lim", "expected"), FITS_CASES)
def test_fits(
    page: list[datetime], brand: list[datetime] | None, lim: Limits, expected: Decision
) -> None:
    """fits counts neighbours on both sides and finds the earliest instant that fits."""
    assert guardrails.fits(page, page if brand is None else brand, lim, AT) == expected


def test_fits_rejects_naive_at() -> None:
    """fits refuses a naive instant."""
    with pytest.raises(ValueError):
        guardrails.fits([], [], limits(), AT.replace(tzinfo=None))


# --- sequences -----------------------------------------------------------------------------------

PAGE_SEQUENCE_CASES = [
    pytest.param(at(sec(0), sec(61), mins(30)), limits(per_hour=3), [], id="clean"),
    pytest.param(
        at(mins(20), sec(0), mins(10)), limits(), [("page_per_hour", mins(20))], id="hour",
    ),
    pytest.param(at(sec(0), mins(60)), limits(per_hour=1), [], id="hour-boundary"),
    pytest.param(
        at(sec(0), hrs(2), hrs(4)), limits(per_hour=10, per_24h=2), [("page_per_24h", hrs(4))],
        id="24h",
    ),
    pytest.param(at(sec(0), hrs(24)), limits(per_24h=1), [], id="24h-boundary"),
    pytest.param(at(sec(0), sec(59)), limits(), [("page_min_gap", sec(59))], id="gap"),
    pytest.param(
        at(sec(0), sec(0)), limits(per_hour=1, gap=sec(0)), [("page_per_hour", sec(0))],
        id="same-instant",
    ),
    pytest.param(at(sec(0)), limits(per_hour=0), [("page_per_hour", sec(0))], id="limit-0"),
    pytest.param(
        at(sec(0), sec(30)), limits(per_hour=1),
        [("page_per_hour", sec(30)), ("page_min_gap", sec(30))], id="two-rules-one-publish",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("instants", "lim", "expected"), PAGE_SEQUENCE_CASES)
def test_check_page_sequence(
    instants: list[datetime], lim: Limits, expected: list[tuple[str, timedelta]]
) -> None:
    """check_page_sequence names each rule broken and the publish that broke it."""
    found = guardrails.check_page_sequence(instants, lim.page)
    assert [(v.rule, v.at) for v in found] == [(rule, AT + off) for rule, off in expected]


@pytest.mark.parametrize(
    ("instants", "limit", "expected"),
    [
        (at(sec(0), hrs(1), hrs(2)), 2, [hrs(2)]),
        (at(sec(0), hrs(1)), 2, []),
        (at(sec(0), hrs(24)), 1, []),
        (at(sec(0), sec(0)), 1, [sec(0)]),
    ],
    ids=["over", "at-limit", "24h-boundary", "same-instant"],
)
def test_check_brand_sequence(
    instants: list[datetime], limit: int, expected: list[timedelta]
) -> None:
    """check_brand_sequence flags each publish that overfilled the brand's 24 h window."""
    found = guardrails.check_brand_sequence(instants, limit)
    assert [(v.rule, v.at) for v in found] == [("brand_per_24h", AT + off) for off in expected]


def test_violation_detail_names_the_count() -> None:
    """A violation's detail says how many publishes the window held and the limit."""
    (violation,) = guardrails.check_brand_sequence(at(sec(0), sec(1)), 1)
    assert "2 publishes" in violation.detail and "limit 1" in violation.detail


def test_check_sequence_is_linear_on_ten_thousand_publishes() -> None:
    """Ten thousand publishes are audited at once: clean at the limit, flagged one below it."""
    instants = [AT + sec(90 * i) for i in range(10_000)]
    assert guardrails.check_page_sequence(instants, PageLimits(40, 960, sec(90))) == []
    assert len(guardrails.check_brand_sequence(instants, 959)) == 10_000 - 959


# --- properties ----------------------------------------------------------------------------------

limits_st = st.builds(
    limits,
    per_hour=st.integers(0, 4),
    per_24h=st.integers(0, 8),
    gap=st.integers(0, 600).map(sec),
    brand=st.integers(0, 10),
)


def seconds(low: int, high: int) -> st.SearchStrategy[int]:
    """Whole seconds, often on a half-hour grid so that window and gap boundaries collide."""
    grid = st.integers(-(-low // 1800), high // 1800).map(lambda k: k * 1800)
    return st.one_of(st.integers(low, high), grid)


def offsets(low: int, high: int, size: int = 20) -> st.SearchStrategy[list[datetime]]:
    return st.lists(seconds(low, high).map(lambda s: AT + sec(s)), max_size=size)


def fits_oracle(page: list[datetime], brand: list[datetime], lim: Limits, t: datetime) -> bool:
    """t fits after clean histories: adding it leaves both sequences clean."""
    return not guardrails.check_page_sequence([*page, t], lim.page) and not (
        guardrails.check_brand_sequence([*brand, t], lim.brand_per_24h)
    )


def fits_last(page: list[datetime], brand: list[datetime], lim: Limits, t: datetime) -> bool:
    """t, no earlier than any history, fits: the audit flags nothing at t itself."""
    flagged = guardrails.check_page_sequence([*page, t], lim.page)
    flagged += guardrails.check_brand_sequence([*brand, t], lim.brand_per_24h)
    return all(v.at != t for v in flagged)


def assert_earliest(
    decision: Decision, start: datetime, check: Callable[[datetime], bool], probes: list[int]
) -> None:
    """earliest fits, the microsecond before it does not, nor any probed second before it."""
    if decision.earliest is None:
        assert not decision.allowed and decision.retry_after_seconds == 0
        assert not any(check(start + sec(p)) for p in probes)
        return
    assert check(decision.earliest)
    assert decision.allowed == (decision.earliest == start)
    assert decision.retry_after_seconds == -((start - decision.earliest) // sec(1))
    if decision.earliest > start:
        assert not check(decision.earliest - timedelta(microseconds=1))
    for p in probes:
        if start + sec(p) < decision.earliest:
            assert not check(start + sec(p))


@settings(max_examples=200, deadline=None)
@given(
    page=offsets(-30 * 3600, 0),
    others=offsets(-30 * 3600, 0),
    lim=limits_st,
    probes=st.lists(st.integers(0, 30 * 3600), max_size=6),
)
def test_decide_earliest_is_the_first_instant_that_fits(
    page: list[datetime], others: list[datetime], lim: Limits, probes: list[int]
) -> None:
    """decide's earliest fits, and no earlier instant at or after `at` does."""
    brand = page + others
    decision = guardrails.decide(page, brand, lim, AT)
    assert_earliest(decision, AT, lambda t: fits_last(page, brand, lim, t), probes)


@settings(max_examples=200, deadline=None)
@given(page=offsets(-30 * 3600, 0), others=offsets(-30 * 3600, 0), lim=limits_st)
def test_fits_agrees_with_decide_on_past_history(
    page: list[datetime], others: list[datetime], lim: Limits
) -> None:
    """With no history after `at`, fits gives decide's answer, reason included."""
    brand = page + others
    assert guardrails.fits(page, brand, lim, AT) == guardrails.decide(page, brand, lim, AT)


def clean_histories(
    raw_page: list[datetime], raw_others: list[datetime], lim: Limits
) -> tuple[list[datetime], list[datetime]]:
    """Keep each raw publish that leaves the page's and the brand's sequences clean."""
    page: list[datetime] = []
    brand: list[datetime] = []
    for t in raw_page:
        if fits_oracle(page, brand, lim, t):
            page.append(t)
            brand.append(t)
    for t in raw_others:
        if not guardrails.check_brand_sequence([*brand, t], lim.brand_per_24h):
            brand.append(t)
    return page, brand


@settings(max_examples=200, deadline=None)
@given(
    raw_page=offsets(-26 * 3600, 26 * 3600, 25),
    raw_others=offsets(-26 * 3600, 26 * 3600, 25),
    lim=limits_st,
    start=seconds(-2 * 3600, 2 * 3600).map(lambda s: AT + sec(s)),
    probes=st.lists(st.integers(0, 30 * 3600), max_size=6),
)
def test_fits_earliest_is_the_first_instant_that_fits(
    raw_page: list[datetime],
    raw_others: list[datetime],
    lim: Limits,
    start: datetime,
    probes: list[int],
) -> None:
    """Among neighbours on both sides, fits' earliest fits and no earlier instant does."""
    page, brand = clean_histories(raw_page, raw_others, lim)
    decision = guardrails.fits(page, brand, lim, start)
    assert_earliest(decision, start, lambda t: fits_oracle(page, brand, lim, t), probes)


FB = limits(per_hour=10, per_24h=25, brand=500)  # the seed's Facebook defaults


def nearby_of(page: list[datetime], brand: list[datetime], lim: Limits, t: datetime) -> Nearby:
    """What queries.nearby counts: publishes in the open intervals around t."""

    def within(events: list[datetime], span: timedelta) -> int:
        return sum(1 for e in events if t - span < e < t + span)

    return Nearby(
        page_hour=within(page, hrs(1)),
        page_day=within(page, hrs(24)),
        page_gap=within(page, lim.page.min_gap),
        brand_day=within(brand, hrs(24)),
    )


def boundaries(events: list[datetime], lim: Limits) -> list[datetime]:
    """The instants where a rule may flip: each publish, and one span or gap either side of it."""
    spans = (sec(0), hrs(1), hrs(24), lim.page.min_gap)
    return sorted({e + sign * span for e in events for span in spans for sign in (-1, 1)})


@settings(max_examples=300, deadline=None)
@given(
    raw_page=offsets(-26 * 3600, 26 * 3600, 25),
    raw_others=offsets(-26 * 3600, 26 * 3600, 25),
    lim=limits_st,
    data=st.data(),
)
def test_fits_allows_exactly_what_the_audit_accepts(
    raw_page: list[datetime], raw_others: list[datetime], lim: Limits, data: st.DataObject
) -> None:
    """At every boundary instant, fits allows iff adding the publish keeps both audits clean;
    and the API's counts-only shortcut (surely_fits) never allows what they refuse."""
    page, brand = clean_histories(raw_page, raw_others, lim)
    instants = boundaries(brand, lim) or [AT]
    for t in data.draw(st.lists(st.sampled_from(instants), max_size=8)):
        allowed = fits_oracle(page, brand, lim, t)
        assert guardrails.fits(page, brand, lim, t).allowed == allowed
        if guardrails.surely_fits(nearby_of(page, brand, lim, t), lim):
            assert allowed


@pytest.mark.parametrize(
    ("near", "lim", "sure"),
    [
        pytest.param(Nearby(0, 0, 0, 0), FB, True, id="nothing-near"),
        pytest.param(Nearby(9, 24, 0, 499), FB, True, id="one-below-every-limit"),
        pytest.param(Nearby(10, 10, 0, 10), FB, False, id="hour-full"),
        pytest.param(Nearby(1, 25, 0, 25), FB, False, id="day-full"),
        pytest.param(Nearby(1, 1, 1, 1), FB, False, id="neighbour-within-gap"),
        pytest.param(Nearby(1, 1, 0, 500), FB, False, id="brand-full"),
        pytest.param(Nearby(0, 0, 0, 0), limits(per_hour=0), False, id="limit-0"),
    ],
)
def test_surely_fits(near: Nearby, lim: Limits, sure: bool) -> None:
    """True only when every count is below its limit and no neighbour is within the gap."""
    assert guardrails.surely_fits(near, lim) is sure
