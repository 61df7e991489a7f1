"""The dispatcher's per-batch plan: tables of cases, and a simulated dispatcher as a property."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon import guardrails
from daemon.dispatch import plan
from daemon.dispatch.plan import Action, Candidate, Claim, Defer, Miss, Skip
from daemon.guardrails import Limits, PageLimits

NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
PAGE = "PAGE_PUBLISH_GUARDRAIL"
BRAND = "BRAND_PUBLISH_GUARDRAIL"


def sec(n: int) -> timedelta:
    return timedelta(seconds=n)


ZERO = sec(0)


TABLE_LIMITS = {
    "fb": Limits(PageLimits(per_hour=2, per_24h=5, min_gap=sec(60)), brand_per_24h=4),
    "tw": Limits(PageLimits(per_hour=10, per_24h=50, min_gap=sec(0)), brand_per_24h=4),
    "off": Limits(PageLimits(per_hour=0, per_24h=5, min_gap=sec(60)), brand_per_24h=4),
}


def cand(
    post_id: str,
    page: str = "p1",
    brand: str = "b1",
    platform: str = "fb",
    due: timedelta = ZERO,
    late: timedelta = ZERO,
) -> Candidate:
    """A candidate scheduled at NOW + due - late and due at NOW + due."""
    return Candidate(post_id, page, brand, platform, NOW + due - late, NOW + due)


def ago(*offsets: int) -> list[datetime]:
    return [NOW - sec(s) for s in offsets]


PLAN_CASES = [
    pytest.param([], {}, {}, set(), [], id="empty-batch"),
    pytest.param([cand("a")], {}, {}, set(), [Claim("a")], id="claims-a-due-post"),
    pytest.param(
        [cand("a", due=-2 * HOUR)], {}, {}, set(), [Miss("a", 7200)], id="misses-past-catch-up"
    ),
    pytest.param(
        [cand("a", due=-HOUR)], {}, {}, set(), [Claim("a")], id="exactly-catch-up-late-claims"
    ),
    pytest.param(
        [cand("a", due=-HOUR - sec(1))], {"p1": ago(3000, 1200)}, {}, set(), [Miss("a", 3601)],
        id="miss-before-guardrail",
    ),
    pytest.param(
        [cand("a")], {"p1": ago(3000, 1200)}, {"b1": ago(3000, 1200)}, set(),
        [Defer("a", NOW + sec(600), "page_per_hour", PAGE)], id="defers-on-page-guardrail",
    ),
    pytest.param(
        [cand("a")], {}, {"b1": ago(80000, 70000, 60000, 50000)}, set(),
        [Defer("a", NOW + sec(86400 - 80000), "brand_per_24h", BRAND)], id="defers-on-brand",
    ),
    pytest.param(
        [cand("a", platform="off")], {}, {}, set(), [Defer("a", None, "page_per_hour", PAGE)],
        id="limit-0-defers-forever",
    ),
    pytest.param([cand("a")], {}, {}, {"p1"}, [Skip("a", "page_busy")], id="skips-busy-page"),
    pytest.param(
        [cand("a")], {"p1": ago(30)}, {}, {"p1"},
        [Defer("a", NOW + sec(30), "page_min_gap", PAGE)], id="guardrail-before-busy",
    ),
    pytest.param(
        [cand("a"), cand("b", page="p2")], {}, {}, {"p1"}, [Skip("a", "page_busy"), Claim("b")],
        id="busy-page-does-not-block-others",
    ),
    pytest.param(
        [cand("a"), cand("b")], {}, {}, set(),
        [Claim("a"), Defer("b", NOW + sec(60), "page_min_gap", PAGE)],
        id="batch-claim-counts-for-gap",
    ),
    pytest.param(
        [cand("a", platform="tw"), cand("b", platform="tw")], {}, {}, set(),
        [Claim("a"), Skip("b", "page_busy")], id="batch-claim-makes-page-busy",
    ),
    pytest.param(
        [cand("a"), cand("b", page="p2")], {}, {"b1": ago(80000, 70000, 60000)}, set(),
        [Claim("a"), Defer("b", NOW + sec(86400 - 80000), "brand_per_24h", BRAND)],
        id="batch-claim-counts-for-brand",
    ),
    pytest.param(
        [cand("a"), cand("b", page="p2", brand="b2")], {}, {"b1": ago(80000, 70000, 60000)}, set(),
        [Claim("a"), Claim("b")], id="other-brand-unaffected",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("candidates", "pages", "brands", "busy", "expected"), PLAN_CASES)
def test_plan_batch(
    candidates: list[Candidate],
    pages: dict[str, list[datetime]],
    brands: dict[str, list[datetime]],
    busy: set[str],
    expected: list[Action],
) -> None:
    """Each candidate gets the first of Miss, Defer, Skip, Claim that applies."""
    actions = plan.plan_batch(candidates, pages, brands, busy, TABLE_LIMITS.__getitem__, NOW, HOUR)
    assert actions == expected


def test_plan_batch_leaves_the_callers_histories_alone() -> None:
    """Claims within a batch are counted on copies, never in the caller's mappings."""
    pages = {"p1": ago(600)}
    brands = {"b1": ago(600)}
    plan.plan_batch(
        [cand("a"), cand("b", page="p2")], pages, brands, set(), TABLE_LIMITS.__getitem__, NOW, HOUR
    )
    assert pages == {"p1": ago(600)} and brands == {"b1": ago(600)}


@pytest.mark.parametrize(
    "candidate",
    [cand("a", due=sec(1)), Candidate("a", "p1", "b1", "fb", NOW, NOW - sec(1))],
    ids=["not-due-yet", "due-before-scheduled"],
)
def test_plan_batch_rejects_caller_bugs(candidate: Candidate) -> None:
    """A candidate not yet due, or due before it was scheduled, is a caller bug."""
    with pytest.raises(ValueError):
        plan.plan_batch([candidate], {}, {}, set(), TABLE_LIMITS.__getitem__, NOW, HOUR)


# --- the simulated dispatcher -------------------------------------------------------------------

PLATFORMS = {
    "ln": PageLimits(per_hour=2, per_24h=5, min_gap=sec(60)),
    "fb": PageLimits(per_hour=4, per_24h=12, min_gap=sec(60)),
    "tw": PageLimits(per_hour=6, per_24h=30, min_gap=sec(0)),
    "yt": PageLimits(per_hour=1, per_24h=3, min_gap=sec(300)),
}


@dataclass(frozen=True)
class Schedule:
    pages: dict[str, tuple[str, str]]  # page id -> (brand id, platform)
    posts: list[Candidate]
    brand_per_24h: int

    def limits_for(self, platform: str) -> Limits:
        return Limits(PLATFORMS[platform], self.brand_per_24h)


@dataclass
class Run:
    published: dict[str, list[datetime]] = field(default_factory=lambda: defaultdict(list))
    missed: dict[str, list[Miss]] = field(default_factory=lambda: defaultdict(list))
    late: list[timedelta] = field(default_factory=list)  # now - due_at of each claim
    page_history: dict[str, list[datetime]] = field(default_factory=lambda: defaultdict(list))
    brand_history: dict[str, list[datetime]] = field(default_factory=lambda: defaultdict(list))


@st.composite
def schedules(draw: st.DrawFn) -> Schedule:
    n_pages = draw(st.integers(1, 12))
    pages = {
        f"page{i}": (f"brand{draw(st.integers(0, 2))}", draw(st.sampled_from(sorted(PLATFORMS))))
        for i in range(n_pages)
    }
    n_posts = draw(st.integers(0, 40))  # drawn first: hypothesis keeps plain lists short
    slot = st.tuples(st.integers(0, n_pages - 1), st.integers(0, 900))
    raw = draw(st.lists(slot, min_size=n_posts, max_size=n_posts))
    posts = [
        Candidate(f"post{i}", f"page{p}", *pages[f"page{p}"], NOW + sec(s), NOW + sec(s))
        for i, (p, s) in enumerate(raw)
    ]
    return Schedule(pages, posts, draw(st.integers(3, 20)))


def simulate(schedule: Schedule, catch_up: timedelta, boot: datetime, tick: timedelta) -> Run:
    """Run the dispatcher, publishing each claim at once, until every post is settled."""
    run = Run()
    pending = {c.post_id: c for c in schedule.posts}
    for _ in range(50 * len(pending) + 10):
        if not pending:
            return run
        earliest = max(boot, min(c.due_at for c in pending.values()))
        now = NOW + -((NOW - earliest) // tick) * tick  # the dispatcher wakes every tick
        due = sorted((c for c in pending.values() if c.due_at <= now), key=lambda c: c.due_at)
        actions = plan.plan_batch(
            due, run.page_history, run.brand_history, set(), schedule.limits_for, now, catch_up
        )
        for action in actions:
            apply(run, pending, action, now)
    raise AssertionError(f"the dispatcher did not settle: {len(pending)} posts pending")


def apply(run: Run, pending: dict[str, Candidate], action: Action, now: datetime) -> None:
    post = pending[action.post_id]
    if isinstance(action, Claim):
        run.published[post.post_id].append(now)
        run.late.append(now - post.due_at)
        run.page_history[post.page_id].append(now)
        run.brand_history[post.brand_id].append(now)
        del pending[post.post_id]
    elif isinstance(action, Defer):
        assert action.not_before is not None and action.not_before > now
        pending[post.post_id] = replace(post, due_at=action.not_before)
    elif isinstance(action, Miss):
        run.missed[post.post_id].append(action)
        del pending[post.post_id]


def assert_guardrails_held(schedule: Schedule, run: Run) -> None:
    for page_id, instants in run.page_history.items():
        limits = PLATFORMS[schedule.pages[page_id][1]]
        assert guardrails.check_page_sequence(instants, limits) == []
    for instants in run.brand_history.values():
        assert guardrails.check_brand_sequence(instants, schedule.brand_per_24h) == []
    scheduled = {c.post_id: c.scheduled_at for c in schedule.posts}
    assert all(t >= scheduled[post_id] for post_id, ts in run.published.items() for t in ts)


@settings(max_examples=150, deadline=None)
@given(schedule=schedules())
def test_dispatcher_publishes_everything_within_the_guardrails(schedule: Schedule) -> None:
    """With a wide catch-up window every post publishes once, never early, no limit broken."""
    run = simulate(schedule, catch_up=timedelta(days=30), boot=NOW, tick=sec(1))
    assert not run.missed
    assert Counter({pid: len(ts) for pid, ts in run.published.items()}) == Counter(
        {c.post_id: 1 for c in schedule.posts}
    )
    assert_guardrails_held(schedule, run)


@settings(max_examples=150, deadline=None)
@given(
    schedule=schedules(),
    catch_up=st.integers(0, 600).map(sec),
    boot=st.integers(0, 1800).map(lambda s: NOW + sec(s)),
    tick=st.integers(1, 120).map(sec),
)
def test_dispatcher_misses_what_is_too_late_and_publishes_nothing_stale(
    schedule: Schedule, catch_up: timedelta, boot: datetime, tick: timedelta
) -> None:
    """After downtime, stale posts are missed once and nothing publishes beyond catch-up."""
    run = simulate(schedule, catch_up, boot, tick)
    outcomes = Counter([*run.published, *run.missed])
    assert outcomes == Counter(c.post_id for c in schedule.posts)
    assert all(len(ts) == 1 for ts in run.published.values())
    assert all(late <= catch_up for late in run.late)
    assert all(sec(m.overdue_seconds) > catch_up for (m,) in run.missed.values())
    stale = {c.post_id for c in schedule.posts if c.scheduled_at < boot - catch_up}
    assert stale <= run.missed.keys()
    assert_guardrails_held(schedule, run)
