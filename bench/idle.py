"""Idle-daemon benchmark (SPEC §2): CPU, memory and queries of postd with 100,000 future posts.

Not a test: it prints figures. Two modes, both on a throwaway database (SQLite in a temp dir by
default; ``--db postgresql`` creates and drops a database on ``--pg-url``'s server):

- subprocess (default): ``postd --config F run`` on a free loopback port; once /readyz says 200,
  samples ``/proc/<pid>/stat`` (utime+stime) over ``--seconds`` and reports CPU %, RSS
  (VmRSS/VmHWM), sweeps (``postd_dispatcher_ticks_total`` from /metrics, scraped outside the
  window because it counts posts) and, on PostgreSQL, ``pg_stat_database`` transactions and
  ``pg_stat_user_tables`` scans of ``posts``. postd has no query counter of its own, so
  statements are counted in the other mode. Ends with SIGTERM and checks the exit status is 0.
- ``--inprocess``: the App with the real SystemClock and APScheduler (``app.start()``), counting
  every statement with SQLAlchemy's ``before_cursor_execute`` for ``--seconds``, then
  ``app.stop()``.

    python bench/idle.py                                   # SQLite, sweep 30 s, 120 s window
    python bench/idle.py --inprocess --sweep 2 --seconds 20
    python bench/idle.py --db postgresql --pg-url postgresql://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import event, func, insert, select

from daemon import config, ids, lifecycle
from daemon.store import db
from daemon.store.models import Brand, Page, Post

CLK_TCK = os.sysconf("SC_CLK_TCK")
TICKS_METRIC = "postd_dispatcher_ticks_total"
BRANDS, PAGES_PER_BRAND = 10, 10
LEAD = timedelta(days=2)  # the earliest post is due two days from now
SPACING = timedelta(seconds=30)  # 100,000 posts over ~35 days
STRIDE, OFFSET = 7919, 12_345  # row i gets slot (i * STRIDE + OFFSET) % n: earliest mid-table
TRANSACTION_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "PRAGMA")


# -- set-up ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def postd_executable(given: str | None) -> str:
    if given:
        return given
    sibling = Path(sys.executable).with_name("postd")
    return str(sibling) if sibling.exists() else (shutil.which("postd") or "postd")


def write_config(directory: Path, url: str, port: int, sweep: float) -> Path:
    path = directory / "postd.toml"
    path.write_text(
        f'[server]\nbind = "127.0.0.1:{port}"\n\n'
        f'[database]\nurl = "{url}"\n\n'
        f"[scheduling]\nsweep_seconds = {sweep}\n\n"
        f'[sandbox]\nstate_path = "{directory / "sandbox.db"}"\n\n'
        '[logging]\nlevel = "info"\nformat = "json"\n',
        encoding="utf-8",
    )
    return path


@dataclass
class PgDatabase:
    admin_url: str
    name: str

    @property
    def url(self) -> str:
        return f"{self.admin_url.rpartition('/')[0]}/{self.name}"

    @classmethod
    def create(cls, admin_url: str) -> PgDatabase:
        name = f"postd_idle_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return cls(admin_url, name)

    def drop(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


async def seed(settings: config.Settings, n: int) -> tuple[datetime, float]:
    """``n`` scheduled posts due from now + LEAD on, bulk-inserted; (earliest due, seconds)."""
    started = time.perf_counter()
    now = datetime.now(UTC)
    brands = [{"id": ids.new_id(), "name": f"brand {b}", "created_at": now} for b in range(BRANDS)]
    pages = [
        {
            "id": ids.new_id(),
            "brand_id": brand["id"],
            "platform": "sandbox",
            "name": f"page {b}.{p}",
            "created_at": now,
        }
        for b, brand in enumerate(brands)
        for p in range(PAGES_PER_BRAND)
    ]
    first = now + LEAD
    rows = []
    for i in range(n):
        page = pages[i % len(pages)]
        due = first + ((i * STRIDE + OFFSET) % n) * SPACING
        rows.append(
            {
                "id": ids.new_id(),
                "page_id": page["id"],
                "brand_id": page["brand_id"],
                "platform": "sandbox",
                "state": lifecycle.SCHEDULED,
                "message": f"future post {i}",
                "media": [],
                "options": {},
                "scheduled_at": due,
                "due_at": due,
                "attempts": 0,
                "created_at": now,
                "updated_at": now,
            }
        )
    engine = db.create_engine(settings.database.url, settings.base_dir)
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(Brand.__table__), brands)
            await conn.execute(insert(Page.__table__), pages)
            for start in range(0, n, 20_000):
                await conn.execute(insert(Post.__table__), rows[start : start + 20_000])
        async with engine.connect() as conn:
            count, earliest = (
                await conn.execute(
                    select(func.count(), func.min(Post.due_at)).where(
                        Post.state == lifecycle.SCHEDULED
                    )
                )
            ).one()
    finally:
        await engine.dispose()
    if count != n or earliest != first:
        raise SystemExit(f"seeding went wrong: {count} posts, earliest {earliest}")
    return first, time.perf_counter() - started


# -- measuring ---------------------------------------------------------------------------------


def cpu_seconds(pid: int | str) -> float:
    """utime + stime of a whole process (all its threads), from /proc/<pid>/stat."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()  # fields[0] is field 3 (state)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory(pid: int | str) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            out[key] = value.strip()
    return out


def mib(value: str) -> str:
    return f"{int(value.split()[0]) / 1024:.1f} MiB"


@dataclass
class PgStats:
    """Counters PostgreSQL keeps for one database; read from outside the daemon."""

    xacts: int
    scans: int

    @staticmethod
    def read(database: PgDatabase, conn: psycopg.Connection[Any]) -> PgStats:
        with psycopg.connect(database.admin_url, autocommit=True) as admin:
            row = admin.execute(
                "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
                (database.name,),
            ).fetchone()
        scans = conn.execute(
            "SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0)"
            " FROM pg_stat_user_tables WHERE relname = 'posts'"
        ).fetchone()
        assert row is not None and scans is not None
        return PgStats(int(row[0]), int(scans[0]))


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def ticks_from_metrics(base: str) -> float:
    status, body = http_get(f"{base}/metrics")
    match = re.search(rf"^{TICKS_METRIC} ([0-9.e+]+)$", body, re.MULTILINE)
    if status != 200 or match is None:
        raise SystemExit(f"/metrics: HTTP {status}, no {TICKS_METRIC}")
    return float(match.group(1))


def wait_ready(base: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"postd exited with {proc.returncode} before it was ready")
        try:
            if http_get(f"{base}/readyz", timeout=2)[0] == 200:
                return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"postd not ready after {timeout:.0f} s")


def report(title: str, rows: list[tuple[str, str]]) -> None:
    print(f"\n== {title}")
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key.ljust(width)}  {value}")


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# -- subprocess mode ---------------------------------------------------------------------------


def run_subprocess(
    args: argparse.Namespace, cfg: Path, port: int, pg: PgDatabase | None
) -> list[tuple[str, str]]:
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    log_path = cfg.with_name("postd.log")
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [postd_executable(args.postd), "--config", str(cfg), "run"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    rows: list[tuple[str, str]] = [("daemon", f"pid {proc.pid}, log {log_path}")]
    try:
        rows.append(("ready after", f"{wait_ready(base, proc):.1f} s"))
        time.sleep(args.settle)  # start-up work, and PostgreSQL's lazily flushed statistics
        stats_conn = psycopg.connect(pg.url, autocommit=True) if pg else None
        ticks0 = ticks_from_metrics(base)
        pg0 = PgStats.read(pg, stats_conn) if pg and stats_conn else None
        cpu0, wall0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(args.seconds)
        cpu1, wall1 = cpu_seconds(proc.pid), time.monotonic()
        pg1 = PgStats.read(pg, stats_conn) if pg and stats_conn else None
        mem = memory(proc.pid)
        ticks1 = ticks_from_metrics(base)
        if stats_conn is not None:
            stats_conn.close()
        window = wall1 - wall0
        cpu = cpu1 - cpu0
        percent = 100 * cpu / window
        sweeps = ticks1 - ticks0
        rows += [
            ("window", f"{window:.1f} s"),
            ("sweeps in window", f"{sweeps:.0f} (ticks between the /metrics scrapes)"),
            ("CPU", f"{cpu:.2f} s user+sys = {percent:.3f} % of one core"),
            ("RSS", f"VmRSS {mib(mem['VmRSS'])}, VmHWM {mib(mem['VmHWM'])}"),
            ("threads", mem["Threads"]),
            ("SPEC §2 CPU < 1 %", verdict(percent < 1)),
        ]
        if pg0 is not None and pg1 is not None:
            # The first stats query of stats_conn (at the start) counts in the window.
            xacts, scans = pg1.xacts - pg0.xacts - 1, pg1.scans - pg0.scans
            per = f"{xacts / sweeps:.2f}" if sweeps else "n/a"
            rows += [
                ("PG transactions", f"{xacts} in window ({per} per sweep; pg_stat_database)"),
                ("PG scans of posts", f"{scans} in window (seq+idx; pg_stat_user_tables)"),
            ]
        else:
            rows.append(("queries", "not observable from outside on SQLite: see --inprocess"))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
                rows.append(("SIGTERM", "did not exit within 60 s: killed"))
        else:
            code = proc.returncode
        rows += [("exit status", str(code)), ("exit 0 on SIGTERM", verdict(code == 0))]
    return rows


# -- in-process mode ---------------------------------------------------------------------------


@dataclass
class Recorder:
    statements: list[tuple[float, str]] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)

    def attach(self, engine: Any) -> None:
        def on_execute(*args: Any) -> None:
            self.statements.append((time.monotonic(), " ".join(args[2].split())))

        event.listen(engine, "before_cursor_execute", on_execute)
        for name in ("begin", "commit", "rollback"):
            event.listen(engine, name, self._count(f"transaction {name}"))
        for name in ("connect", "checkout"):
            event.listen(engine, name, self._count(f"pool {name}"))

    def _count(self, key: str) -> Any:
        def handler(*_args: Any) -> None:
            self.events.append((time.monotonic(), key))

        return handler

    def per_sweep(self, gap: float) -> list[int]:
        """Statements grouped into bursts (a burst ends after ``gap`` s of silence)."""
        sizes: list[int] = []
        last = None
        for at, _ in self.statements:
            if last is None or at - last > gap:
                sizes.append(0)
            sizes[-1] += 1
            last = at
        return sizes


async def run_inprocess(
    args: argparse.Namespace, cfg: Path, pg: PgDatabase | None
) -> list[tuple[str, str]]:
    from daemon import logs
    from daemon.app import App

    settings = config.load(cfg)
    logs.configure(config.LoggingSettings(level="warning", format="json"))
    app = App(settings)
    rec = Recorder()
    stats_conn = await asyncio.to_thread(psycopg.connect, pg.url, autocommit=True) if pg else None
    interval = settings.scheduling.sweep_seconds
    await app.start()  # sweeps run at 0, interval, 2 * interval... from here
    started = time.monotonic()
    try:
        # Let start-up settle (PostgreSQL flushes a busy backend's statistics up to 10 s late),
        # then start the window half an interval off the sweeps, so neither end cuts one.
        first = math.ceil(args.settle / interval) * interval + interval / 2
        await asyncio.sleep(first - (time.monotonic() - started))
        rec.attach(app.engine.sync_engine)
        pg0 = await asyncio.to_thread(PgStats.read, pg, stats_conn) if pg and stats_conn else None
        ticks0 = app.metrics.registry.get_sample_value(TICKS_METRIC) or 0.0
        cpu0, wall0 = cpu_seconds("self"), time.monotonic()
        await asyncio.sleep(args.seconds)
        cpu1, wall1 = cpu_seconds("self"), time.monotonic()
        ticks1 = app.metrics.registry.get_sample_value(TICKS_METRIC) or 0.0
        pg1 = await asyncio.to_thread(PgStats.read, pg, stats_conn) if pg and stats_conn else None
        mem = memory("self")
    finally:
        app.request_stop()  # as run_forever does on SIGTERM
        await app.stop()
        if stats_conn is not None:
            stats_conn.close()
    rec.statements = [(at, s) for at, s in rec.statements if at <= wall1]
    events = Counter(key for at, key in rec.events if at <= wall1)
    window = wall1 - wall0
    sweeps = ticks1 - ticks0
    total = len(rec.statements)
    data = [s for _, s in rec.statements if not s.upper().startswith(TRANSACTION_CONTROL)]
    bursts = rec.per_sweep(gap=min(0.5, interval / 2))
    kinds = Counter(s[:60] for _, s in rec.statements)
    rows: list[tuple[str, str]] = [
        ("window", f"{window:.1f} s"),
        ("sweeps in window", f"{sweeps:.0f} (postd_dispatcher_ticks_total)"),
        ("statements", f"{total} via SQLAlchemy ({total / sweeps:.2f} per sweep)"),
        ("  of which data", f"{len(data)} ({len(data) / sweeps:.2f} per sweep)"),
        ("  per burst", f"{bursts} (statements per sweep, grouped by time)"),
        *((f"  {n} x", text) for text, n in kinds.most_common()),
        *((key, str(n)) for key, n in sorted(events.items())),
        (
            "per sweep interval",
            f"{total / (window / interval):.2f} statements",
        ),
        ("CPU (bench process)", f"{cpu1 - cpu0:.2f} s = {100 * (cpu1 - cpu0) / window:.3f} %"),
        ("RSS (bench process)", f"VmRSS {mib(mem['VmRSS'])}, VmHWM {mib(mem['VmHWM'])}"),
        ("SPEC §2 <= 1 statement/sweep", verdict(max(bursts, default=0) <= 1)),
        ("SPEC §2 <= 1 data query/sweep", verdict(len(data) <= sweeps)),
    ]
    if pg0 is not None and pg1 is not None:
        # The first stats query of stats_conn (at the start) counts in the window.
        xacts, scans = pg1.xacts - pg0.xacts - 1, pg1.scans - pg0.scans
        rows += [
            ("PG transactions", f"{xacts} ({xacts / sweeps:.2f} per sweep; pg_stat_database)"),
            ("PG scans of posts", f"{scans} (seq+idx; pg_stat_user_tables)"),
        ]
    return rows


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("POSTD_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"),
        help="a database on the server to create the throwaway database on",
    )
    parser.add_argument("--posts", type=int, default=100_000)
    parser.add_argument("--sweep", type=float, default=30.0, help="[scheduling] sweep_seconds")
    parser.add_argument("--seconds", type=float, default=120.0, help="measurement window")
    parser.add_argument(
        "--settle", type=float, default=11.0, help="wait after start-up before the window (s)"
    )
    parser.add_argument("--inprocess", action="store_true", help="count statements in process")
    parser.add_argument("--postd", help="the postd executable (default: beside this Python)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    directory = Path(tempfile.mkdtemp(prefix="postd-idle-"))
    pg = PgDatabase.create(args.pg_url) if args.db == "postgresql" else None
    try:
        url = pg.url if pg else f"sqlite:///{directory / 'postd.db'}"
        port = free_port()
        cfg = write_config(directory, url, port, args.sweep)
        migrated = subprocess.run(
            [postd_executable(args.postd), "--config", str(cfg), "migrate"],
            capture_output=True,
            text=True,
            check=False,
        )
        if migrated.returncode != 0:
            raise SystemExit(f"postd migrate failed: {migrated.stderr.strip()}")
        earliest, seconds = asyncio.run(seed(config.load(cfg), args.posts))
        mode = "in-process (App.start, SystemClock)" if args.inprocess else "subprocess"
        rows = [
            ("mode", mode),
            ("database", f"{args.db}: {pg.name if pg else directory / 'postd.db'}"),
            ("migrate", migrated.stdout.strip()),
            ("posts", f"{args.posts:,} scheduled, earliest due {earliest:%Y-%m-%d %H:%M} UTC"),
            ("seeding", f"{seconds:.1f} s (bulk core insert)"),
            ("sweep_seconds", f"{args.sweep:g}"),
        ]
        if args.inprocess:
            rows += asyncio.run(run_inprocess(args, cfg, pg))
        else:
            rows += run_subprocess(args, cfg, port, pg)
        report("postd idle benchmark", rows)
        return 0 if all(v != "FAIL" for _, v in rows) else 1
    finally:
        if pg is not None:
            pg.drop()
        if args.keep:
            print(f"\nkept {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
