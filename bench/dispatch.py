"""Dispatch benchmark: postd's dispatcher against the naive one-APScheduler-job-per-post design.

N posts due at the same instant T across M sandbox pages (guardrails configured so they never
bind), published through the sandbox adapter. For each design it prints posts/s, lateness p50/p99
(publish start - T), CPU per post and peak RSS, then the ratios. Each design runs in its own
subprocess (this script re-invoked with ``--only``) so each RSS figure is its own; see
bench/README.md.

    /work/venv/bin/python bench/dispatch.py                       # SQLite, N=20000, M=2000
    /work/venv/bin/python bench/dispatch.py --db postgresql --skip-naive
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

RESULT_MARKER = "BENCH_RESULT "
DEFAULT_PG_URL = os.environ.get("POSTD_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
PAGES_PER_BRAND = 100
BRAND_CEILING = 2_000  # guardrails.brand_per_24h hard ceiling (daemon.config)
PAGE_PER_HOUR = 100_000  # guardrails.sandbox.per_hour ceiling
SEED_CHUNK = 2_000
LEAD_SECONDS = 2.0  # T = this long after the design is ready


# ------------------------------------------------------------------------------------------------
# Shared by both designs
# ------------------------------------------------------------------------------------------------


def _sandbox_class() -> Any:
    from adapters import base
    from adapters.sandbox import SandboxAdapter

    class TimedSandbox(SandboxAdapter):
        """The sandbox, recording when each publish call starts (the lateness instrument)."""

        def __init__(self, *args: Any, target: int, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.starts: dict[str, float] = {}
            self.finished = 0
            self.failed = 0
            self.target = target
            self.all_finished = asyncio.Event()

        async def publish(self, post: base.PostPayload) -> base.Published:
            self.starts.setdefault(post.post_id, time.time())
            try:
                return await super().publish(post)
            except Exception:
                self.failed += 1
                raise
            finally:
                self.finished += 1
                if self.finished >= self.target:
                    self.all_finished.set()

    return TimedSandbox


def _rss_now_kib() -> int:
    with contextlib.suppress(OSError), open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _main_cpu_s() -> float:
    """CPU of the calling thread alone (the event loop's, when called from it)."""
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def _sandbox_audit(state_path: Path) -> tuple[int, int]:
    """(records, distinct posts) the sandbox holds."""
    with contextlib.closing(sqlite3.connect(state_path)) as conn:
        row = conn.execute("SELECT count(*), count(DISTINCT post_ref) FROM published").fetchone()
    return int(row[0]), int(row[1])


def _figures(design: str, n: int, due: float, sandbox: Any, end: float) -> dict[str, Any]:
    """Throughput over the posts the sandbox accepted (all N on a good run), lateness over
    every post whose publish call started."""
    lateness = sorted(s - due for s in sandbox.starts.values())
    elapsed = end - due
    done = sandbox.finished - sandbox.failed
    return {
        "design": design,
        "posts": n,
        "elapsed_s": round(elapsed, 3),
        "posts_per_s": round(done / elapsed, 1) if elapsed > 0 else math.nan,
        "lateness_p50_s": round(_percentile(lateness, 50), 4),
        "lateness_p99_s": round(_percentile(lateness, 99), 4),
        "lateness_max_s": round(lateness[-1], 4) if lateness else math.nan,
        "first_start_s": round(lateness[0], 4) if lateness else math.nan,
    }


def _layout(n: int, m: int) -> tuple[int, int]:
    """(brands, max posts on one brand): one brand per 100 pages, more if a brand would reach
    the brand ceiling (pages round-robin over brands, posts round-robin over pages)."""
    if m < 1 or n < 1:
        raise SystemExit("--n and --m must be positive")
    if math.ceil(n / m) > PAGE_PER_HOUR:
        raise SystemExit(f"guardrails would bind: over {PAGE_PER_HOUR} posts on one page")
    brands = max(math.ceil(m / PAGES_PER_BRAND), 1)
    while True:
        posts_on_page = [n // m + (1 if j < n % m else 0) for j in range(m)]
        per_brand = [0] * brands
        for j, count in enumerate(posts_on_page):
            per_brand[j % brands] += count
        worst = max(per_brand)
        if worst < BRAND_CEILING:
            return brands, worst
        if brands >= m:
            raise SystemExit(
                f"guardrails would bind: {worst} posts on one brand (ceiling {BRAND_CEILING});"
                " use more pages"
            )
        brands = min(m, brands * 2)


async def _sleep_until(when: float) -> None:
    delay = when - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


# ------------------------------------------------------------------------------------------------
# postd
# ------------------------------------------------------------------------------------------------


def _postd_settings(args: argparse.Namespace, workdir: Path) -> Any:
    from daemon import config

    return config.Settings.model_validate(
        {
            "database": {"url": args.db_url},
            "sandbox": {"state_path": str(workdir / "sandbox.db"), "latency_ms": args.latency_ms},
            "retry": {"inline_max_wait_seconds": 0},
            "guardrails": {
                "min_gap_seconds": 0,
                "brand_per_24h": BRAND_CEILING,
                "sandbox": {"per_hour": PAGE_PER_HOUR, "per_24h": 1_000_000},
            },
            "dispatch": {"concurrency": args.concurrency, "batch_size": args.batch_size},
            "logging": {"level": args.log_level, "format": "json"},
            "base_dir": workdir,
        }
    )


async def _seed(app: Any, n: int, m: int, brands: int, placeholder: datetime) -> None:
    """Brands, pages and N scheduled posts by bulk core inserts (post i on page i % M)."""
    from sqlalchemy import insert

    from daemon import ids, lifecycle
    from daemon.store.models import Brand, Page, Post

    now = datetime.now(UTC)
    brand_ids = [ids.new_id() for _ in range(brands)]
    page_ids = [ids.new_id() for _ in range(m)]
    page_brand = [brand_ids[j % brands] for j in range(m)]
    async with app.engine.begin() as conn:
        await conn.execute(
            insert(Brand),
            [{"id": b, "name": f"brand {i}", "created_at": now} for i, b in enumerate(brand_ids)],
        )
        await conn.execute(
            insert(Page),
            [
                {
                    "id": p,
                    "brand_id": page_brand[j],
                    "platform": "sandbox",
                    "name": f"page {j}",
                    "created_at": now,
                }
                for j, p in enumerate(page_ids)
            ],
        )
    for start in range(0, n, SEED_CHUNK):
        rows = [
            {
                "id": ids.new_id(),
                "page_id": page_ids[i % m],
                "brand_id": page_brand[i % m],
                "platform": "sandbox",
                "state": lifecycle.SCHEDULED,
                "message": f"bench post {i}",
                "media": [],
                "options": {},
                "scheduled_at": placeholder,
                "due_at": placeholder,
                "attempts": 0,
                "created_at": now,
                "updated_at": now,
            }
            for i in range(start, min(start + SEED_CHUNK, n))
        ]
        async with app.engine.begin() as conn:
            await conn.execute(insert(Post), rows)


async def _set_due(app: Any, due: datetime) -> None:
    from sqlalchemy import update

    from daemon.store.models import Post

    async with app.engine.begin() as conn:
        await conn.execute(update(Post).values(scheduled_at=due, due_at=due))


async def _drive_drain(app: Any, deadline: float) -> None:
    """The tools/tests path: Dispatcher.drain() until everything due now has been published."""
    while time.time() < deadline:
        wake = await app.dispatcher.drain()
        earliest = wake.earliest
        if earliest is None:
            return
        # Something is still scheduled (it should not be: nothing binds). Come back for it.
        await _sleep_until(min(earliest.timestamp(), deadline))


async def _drive_pump(app: Any, adapter: Any, due: datetime) -> None:
    """The daemon path: APScheduler date job at T wakes the pump, which settles on its own."""
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    app.scheduler = AsyncIOScheduler(timezone="UTC")
    app.scheduler.start()
    pump = asyncio.create_task(app.dispatcher.pump(), name="postd-pump")
    try:
        app.dispatcher.notify_due(due)  # arms the timer at T, as scheduling a post does
        await adapter.all_finished.wait()
        await app.dispatcher.drain()  # waits for the in-flight outcomes to be committed
    finally:
        app.scheduler.shutdown(wait=False)
        await asyncio.sleep(0)  # AsyncIOScheduler shuts down on the next loop iteration
        pump.cancel()
        await asyncio.gather(pump, return_exceptions=True)


async def _postd_counts(app: Any) -> dict[str, int]:
    from sqlalchemy import func, select

    from daemon.store.models import Post

    async with app.sessions() as session:
        rows = await session.execute(select(Post.state, func.count()).group_by(Post.state))
        return {state: int(count) for state, count in rows.all()}


async def run_postd(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from daemon import logs
    from daemon.app import App, freeze_heap
    from daemon.clock import SystemClock
    from daemon.store import db

    settings = _postd_settings(args, workdir)
    logs.configure(settings.logging)
    brands, worst_brand = _layout(args.n, args.m)
    adapter = _sandbox_class()(
        settings.sandbox_state_path, SystemClock(), latency_ms=args.latency_ms, target=args.n
    )
    app = App(settings, clock=SystemClock(), adapters={"sandbox": adapter})
    try:
        await db.migrate(app.engine)
        setup_start = time.time()
        await _seed(app, args.n, args.m, brands, datetime.now(UTC) + timedelta(days=1))
        await app.prepare()
        freeze_heap()  # as `postd run` does once started
        due = time.time() + LEAD_SECONDS
        due_dt = datetime.fromtimestamp(due, UTC)
        await _set_due(app, due_dt)
        setup_s = time.time() - setup_start
        rss_ready = _rss_now_kib()
        timed_out = False
        try:
            if args.driver == "pump":
                drive = _drive_pump(app, adapter, due_dt)
                cpu_start, loop_cpu_start = _cpu_s(), _main_cpu_s()  # the pump sleeps until T
            else:
                await _sleep_until(due)
                cpu_start, loop_cpu_start = _cpu_s(), _main_cpu_s()
                drive = _drive_drain(app, due + args.timeout)
            await asyncio.wait_for(drive, timeout=due + args.timeout - time.time())
        except TimeoutError:
            timed_out = True
        end = time.time()
        cpu = _cpu_s() - cpu_start
        loop_cpu = _main_cpu_s() - loop_cpu_start
        peak = _peak_rss_kib()
        counts = await _postd_counts(app)
    finally:
        await app.dispatcher.stop(0)
        await app.close()
    records, distinct = _sandbox_audit(settings.sandbox_state_path)
    result = _figures("postd", args.n, due, adapter, end)
    problems = [f"timed out {args.timeout} s after T"] if timed_out else []
    if counts.get("published", 0) != args.n:
        problems.append(f"posts by state {counts}, expected {args.n} published")
    if records != args.n or distinct != args.n:
        problems.append(f"sandbox holds {records} records for {distinct} posts, expected {args.n}")
    if adapter.failed:
        problems.append(f"{adapter.failed} sandbox publish calls failed")
    result.update(
        db=settings.database.url.split(":", 1)[0],
        driver=args.driver,
        brands=brands,
        max_posts_per_brand=worst_brand,
        concurrency=args.concurrency,
        batch_size=args.batch_size,
        setup_s=round(setup_s, 2),
        cpu_s=round(cpu, 2),
        cpu_ms_per_post=round(cpu * 1000 / args.n, 3),
        loop_cpu_ms_per_post=round(loop_cpu * 1000 / args.n, 3),
        rss_ready_mib=round(rss_ready / 1024, 1),
        peak_rss_mib=round(peak / 1024, 1),
        states=counts,
        problems=problems,
    )
    return result


# ------------------------------------------------------------------------------------------------
# The naive design: one APScheduler 3 date job per post in a SQLAlchemyJobStore on SQLite
# ------------------------------------------------------------------------------------------------

NAIVE_ADAPTER: Any = None
NAIVE_ENDS: list[float] = []


async def naive_publish(post_id: str, page_id: str, text: str) -> None:
    """The job of the naive design (module level: the job store pickles it by reference)."""
    from adapters import base

    payload = base.PostPayload(post_id=post_id, page_id=page_id, platform="sandbox", message=text)
    try:
        await NAIVE_ADAPTER.publish(payload)
    finally:
        NAIVE_ENDS.append(time.time())


def _naive_scheduler(url: str) -> Any:
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    return AsyncIOScheduler(timezone=UTC, jobstores={"default": SQLAlchemyJobStore(url=url)})


def _add_jobs(scheduler: Any, jobs: Sequence[tuple[str, str, str]], run_date: datetime) -> None:
    for post_id, page_id, text in jobs:
        scheduler.add_job(
            naive_publish,
            "date",
            run_date=run_date,
            args=(post_id, page_id, text),
            id=post_id,
            misfire_grace_time=None,
        )


async def run_naive(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    global NAIVE_ADAPTER
    from daemon import ids
    from daemon.clock import SystemClock

    state_path = workdir / "sandbox-naive.db"
    NAIVE_ADAPTER = _sandbox_class()(
        state_path, SystemClock(), latency_ms=args.latency_ms, target=args.n
    )
    page_ids = [ids.new_id() for _ in range(args.m)]
    jobs = [(ids.new_id(), page_ids[i % args.m], f"bench post {i}") for i in range(args.n)]
    setup_start = time.time()
    # The jobs are added while the scheduler is paused (no wakeup per add), with run_date = the
    # instant adding started; T is set once they are all in the store, and the scheduler is
    # resumed at T: from then on it does exactly what its own timer firing at T would do.
    run_date = datetime.fromtimestamp(setup_start, UTC)
    scheduler = _naive_scheduler(f"sqlite:///{workdir / 'jobs.db'}")
    scheduler.start(paused=True)
    try:
        _add_jobs(scheduler, jobs, run_date)
        added = time.time()
        per_add = (added - setup_start) / args.n
        del jobs
        due = added + LEAD_SECONDS
        setup_s = added - setup_start
        rss_ready = _rss_now_kib()
        await _sleep_until(due)
        cpu_start, loop_cpu_start = _cpu_s(), _main_cpu_s()
        scheduler.resume()
        # (The scheduler blocks the loop while it submits the jobs; the parent's subprocess
        # timeout bounds that part.)
        timed_out = False
        try:
            await asyncio.wait_for(NAIVE_ADAPTER.all_finished.wait(), timeout=args.timeout)
        except TimeoutError:
            timed_out = True
        await asyncio.sleep(0)  # let the last job's finally run
        end = max(NAIVE_ENDS, default=time.time())
        cpu = _cpu_s() - cpu_start
        loop_cpu = _main_cpu_s() - loop_cpu_start
        peak = _peak_rss_kib()
        left = len(scheduler.get_jobs())
    finally:
        if scheduler.running:
            scheduler.shutdown(wait=False)
            await asyncio.sleep(0.05)
        NAIVE_ADAPTER.close()
    records, distinct = _sandbox_audit(state_path)
    result = _figures("naive", args.n, due, NAIVE_ADAPTER, end)
    problems = [f"timed out {args.timeout} s after T"] if timed_out else []
    if records != args.n or distinct != args.n:
        problems.append(f"sandbox holds {records} records for {distinct} posts, expected {args.n}")
    if NAIVE_ADAPTER.failed:
        problems.append(f"{NAIVE_ADAPTER.failed} sandbox publish calls failed")
    if left:
        problems.append(f"{left} jobs left in the job store")
    result.update(
        db="sqlite",
        driver="apscheduler-3",
        setup_s=round(setup_s, 2),
        add_job_ms=round(per_add * 1000, 3),
        cpu_s=round(cpu, 2),
        cpu_ms_per_post=round(cpu * 1000 / args.n, 3),
        loop_cpu_ms_per_post=round(loop_cpu * 1000 / args.n, 3),
        rss_ready_mib=round(rss_ready / 1024, 1),
        peak_rss_mib=round(peak / 1024, 1),
        problems=problems,
    )
    return result


# ------------------------------------------------------------------------------------------------
# Parent: one subprocess per design, then the table
# ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _pg_database(url: str) -> Iterator[str]:
    """A throwaway PostgreSQL database next to ``url``'s; dropped on exit."""
    import psycopg

    name = f"postd_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = url.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _child_argv(args: argparse.Namespace, design: str, workdir: Path, db_url: str) -> list[str]:
    return [
        sys.executable,
        str(Path(__file__).resolve()),
        f"--only={design}",
        f"--workdir={workdir}",
        f"--db-url={db_url}",
        f"--n={args.n}",
        f"--m={args.m}",
        f"--concurrency={args.concurrency}",
        f"--batch-size={args.batch_size}",
        f"--latency-ms={args.latency_ms}",
        f"--driver={args.driver}",
        f"--log-level={args.log_level}",
        f"--timeout={args.timeout}",
    ]


def _run_child(args: argparse.Namespace, design: str, workdir: Path, db_url: str) -> dict[str, Any]:
    child_dir = workdir / design
    child_dir.mkdir()
    log_path = workdir / f"{design}.log"
    if not args.json:
        print(f"running {design} ...", file=sys.stderr, flush=True)
    with log_path.open("w") as log:
        try:
            proc = subprocess.run(
                _child_argv(args, design, child_dir, db_url),
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                timeout=args.timeout * 2 + 120,  # setup + T + run; the child bounds itself too
                check=False,
            )
        except subprocess.TimeoutExpired:
            return {"design": design, "problems": ["timed out (killed)"]}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            result: dict[str, Any] = json.loads(line[len(RESULT_MARKER) :])
            return result
    tail = log_path.read_text(errors="replace")[-3000:]
    return {"design": design, "problems": [f"exit {proc.returncode}; stderr tail:\n{tail}"]}


def _ratio(a: Any, b: Any) -> float | None:
    """a / b, unrounded: the target is judged on the exact ratio (3.998 is not 4)."""
    try:
        return float(a) / float(b)
    except (TypeError, ValueError, ZeroDivisionError):
        return None


def _report(args: argparse.Namespace, results: list[dict[str, Any]]) -> dict[str, Any]:
    by = {r["design"]: r for r in results}
    postd, naive = by.get("postd", {}), by.get("naive", {})
    throughput = _ratio(postd.get("posts_per_s"), naive.get("posts_per_s"))
    p99 = _ratio(naive.get("lateness_p99_s"), postd.get("lateness_p99_s"))
    return {
        "n": args.n,
        "m": args.m,
        "db": args.db,
        "latency_ms": args.latency_ms,
        "results": results,
        "throughput_postd_over_naive": throughput,
        "p99_naive_over_postd": p99,
        "target_met": None if throughput is None or p99 is None else throughput >= 4 and p99 > 2,
    }


def _print_table(report: dict[str, Any]) -> None:
    cols = (
        "design",
        "db",
        "posts/s",
        "late p50 s",
        "late p99 s",
        "late max s",
        "CPU ms/post",
        "loop CPU ms/post",
        "peak RSS MiB",
    )
    rows = [cols]
    for r in report["results"]:
        rows.append(
            (
                r["design"],
                str(r.get("db", "-")),
                str(r.get("posts_per_s", "-")),
                str(r.get("lateness_p50_s", "-")),
                str(r.get("lateness_p99_s", "-")),
                str(r.get("lateness_max_s", "-")),
                str(r.get("cpu_ms_per_post", "-")),
                str(r.get("loop_cpu_ms_per_post", "-")),
                str(r.get("peak_rss_mib", "-")),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    print(f"N={report['n']} posts due at one instant T, M={report['m']} pages, ", end="")
    print(f"sandbox latency {report['latency_ms']} ms")
    for r in report["results"]:
        if r["design"] == "postd" and "concurrency" in r:
            print(
                f"postd: driver={r['driver']} concurrency={r['concurrency']} "
                f"batch_size={r['batch_size']} brands={r['brands']} "
                f"(max {r['max_posts_per_brand']} posts/brand) setup {r['setup_s']} s"
            )
        elif r["design"] == "naive" and "setup_s" in r:
            print(f"naive: add_job {r['add_job_ms']} ms each, setup {r['setup_s']} s")
    for i, row in enumerate(rows):
        print(
            "  ".join(
                cell.rjust(w) if i and j > 1 else cell.ljust(w)
                for j, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    if report["throughput_postd_over_naive"] is not None:
        print(f"throughput postd/naive: {report['throughput_postd_over_naive']:.3f}x")
        print(f"p99 lateness naive/postd: {report['p99_naive_over_postd']:.3f}x")
        verdict = "MET" if report["target_met"] else "MISSED"
        print(f"target (>= 4x throughput and p99 under half the naive one): {verdict}")
    for r in report["results"]:
        for problem in r.get("problems", []):
            print(f"ERROR {r['design']}: {problem}", file=sys.stderr)


def parent(args: argparse.Namespace) -> int:
    _layout(args.n, args.m)  # refuse a layout where a guardrail would bind, before any work
    workdir = Path(tempfile.mkdtemp(prefix="postd-bench-"))
    results: list[dict[str, Any]] = []
    try:
        with contextlib.ExitStack() as stack:
            if args.db == "postgresql":
                try:
                    db_url = stack.enter_context(_pg_database(args.pg_url))
                except Exception as exc:  # psycopg.OperationalError and the like
                    print(f"error: PostgreSQL at {args.pg_url}: {exc}", file=sys.stderr)
                    return 2
            else:
                db_url = f"sqlite:///{workdir / 'postd' / 'postd.db'}"
            results.append(_run_child(args, "postd", workdir, db_url))
        if not args.skip_naive:
            results.append(_run_child(args, "naive", workdir, ""))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report = _report(args, results)
    if args.json:
        print(json.dumps(report, indent=2))
        for r in results:
            for problem in r.get("problems", []):
                print(f"ERROR {r['design']}: {problem}", file=sys.stderr)
    else:
        _print_table(report)
    return 1 if any(r.get("problems") for r in results) else 0


def child(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir)
    run = run_postd if args.only == "postd" else run_naive
    result = asyncio.run(run(args, workdir))
    print(RESULT_MARKER + json.dumps(result), flush=True)
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="posts (default 20000)")
    parser.add_argument("--m", type=int, default=2_000, help="pages (default 2000)")
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help="server for a throwaway database")
    parser.add_argument("--skip-naive", action="store_true", help="run postd only")
    parser.add_argument("--concurrency", type=int, default=1024, help="dispatch.concurrency")
    parser.add_argument("--batch-size", type=int, default=1000, help="dispatch.batch_size")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="sandbox latency, both")
    parser.add_argument(
        "--driver",
        choices=("drain", "pump"),
        default="pump",
        help="postd: Dispatcher.drain() in a loop, or the daemon's timer + pump",
    )
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="warning",
        help="postd's structlog level (info logs every post)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="seconds each design may take from T (and, again, to set up)",
    )
    parser.add_argument("--json", action="store_true", help="print machine-readable results")
    parser.add_argument("--only", choices=("postd", "naive"), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--db-url", default="", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.only:
        return child(args)
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
