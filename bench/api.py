"""API benchmark: POST /api/v1/posts/schedule and GET /api/v1/posts/scheduled over loopback.

Not a test: it prints figures. It seeds a throwaway SQLite database (one elite user with limits
raised out of the way, ``--brands`` x ``--pages`` sandbox pages, guardrails wide open so every
schedule is accepted), runs ``postd --config F run`` on a free 127.0.0.1 port, and drives it with
a minimal keep-alive HTTP/1.1 client (one connection per worker; httpx would be the bottleneck).

A short sequential phase (one request at a time: the cost of one schedule), then four phases,
each ``--seconds`` long:

1. schedule, closed loop, ``--concurrency`` workers: throughput (target >= 1,000/s) and latency;
2. schedule, open loop at a fixed ``--rate`` (default 300/s): p50/p99 latency, measured from the
   instant each request was due to be sent (no coordinated omission; target p99 <= 50 ms);
3. list (``GET /posts/scheduled?limit=50``), closed loop;
4. list, open loop at ``--rate``.

Every POST carries a fresh Idempotency-Key, as the official SDK sends (``--no-idempotency`` to
leave it out). Each phase also prints the server's CPU per request (user + sys of the postd
process, all threads, from /proc): steadier than req/s on a shared machine. ``--phases`` runs a
subset (one, closed, open, list, list-open).

    /work/venv/bin/python bench/api.py
    /work/venv/bin/python bench/api.py --seconds 5 --concurrency 32 --rate 300
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOMY = (
    "publishes = 100000000\nreplies = 1000000\nreads = 1000000000\nwebhooks = 1000000\n"
    "per_minute = 100000000\nper_day = 1000000000\nstorage_bytes = 1073741824\n"
    "max_file_bytes = 104857600\nactive_keys = 25\n"
)
SPACING = timedelta(seconds=37)  # between consecutive schedules: ~230 a day per brand of 10
START = timedelta(hours=2)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_config(directory: Path, port: int) -> Path:
    path = directory / "postd.toml"
    path.write_text(
        f'[server]\nbind = "127.0.0.1:{port}"\n\n'
        f'[database]\nurl = "sqlite:///{directory / "postd.db"}"\n\n'
        "[scheduling]\nmax_horizon_days = 3650\n\n"
        "[guardrails]\nmin_gap_seconds = 0\nbrand_per_24h = 2000\n\n"
        "[guardrails.sandbox]\nper_hour = 100000\nper_24h = 1000000\n\n"
        f'[sandbox]\nstate_path = "{directory / "sandbox.db"}"\nlatency_ms = 0\n\n'
        f"[tiers.elite]\n{ROOMY}\n"
        '[logging]\nlevel = "warning"\nformat = "json"\n',
        encoding="utf-8",
    )
    return path


async def seed(config_path: Path, brands: int, pages: int) -> tuple[str, list[str]]:
    """Migrate, then one elite user, its brands and pages, and an all-scopes token."""
    from daemon import config, services, tokens
    from daemon.store import db

    settings = config.load(config_path, environ={})
    engine = db.create_engine(settings.database.url, settings.base_dir)
    await db.migrate(engine)
    sessions = db.sessionmaker(engine)
    now = datetime.now(UTC)
    page_ids: list[str] = []
    async with sessions() as session, session.begin():
        user, _ = await tokens.add_user(session, "bench@example.com", now, tier="elite")
        for b in range(brands):
            brand = await services.add_brand(session, f"brand {b}", now, owner_id=user.id)
            await session.flush()
            for p in range(pages):
                page = await services.add_page(
                    session, brand_id=brand.id, platform="sandbox", name=f"page {b}.{p}", now=now
                )
                await session.flush()
                page_ids.append(page.id)
        _, raw = await tokens.create_token(
            session, user_id=user.id, name="bench", scopes=["*"], now=now, tiers=settings.tiers
        )
    await engine.dispose()
    return raw, page_ids


# -- a minimal keep-alive HTTP/1.1 client --------------------------------------------------------


class Connection:
    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.token = token
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"", key: bool = False) -> int:
        status = await self._request(method, path, body, key)
        if status == 0:  # the server closed an idle keep-alive connection: once more, afresh
            status = await self._request(method, path, body, key)
        return status

    async def _request(self, method: str, path: str, body: bytes, key: bool) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {self.token}\r\nContent-Length: {len(body)}\r\n"
        )
        if body:
            head += "Content-Type: application/json\r\n"
        if key:
            head += f"Idempotency-Key: {uuid.uuid4()}\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        status_line = await self.reader.readline()
        if not status_line:
            self.close()
            return 0
        length, close = 0, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and "close" in value.lower():
                close = True
        await self.reader.readexactly(length)
        if close:
            self.writer.close()
            self.writer = None
        return int(status_line.split()[1])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


# -- load ---------------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    seconds: float
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    cpu_seconds: float = 0.0  # the server process's user + sys CPU during the phase

    def quantile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] * 1000

    def line(self) -> str:
        n = len(self.latencies)
        return (
            f"{self.name:<34} {n / self.seconds:>8.0f} req/s  p50 {self.quantile(0.5):6.1f} ms  "
            f"p99 {self.quantile(0.99):6.1f} ms  max {self.quantile(1.0):7.1f} ms  "
            f"server CPU {1000 * self.cpu_seconds / max(n, 1):5.2f} ms/req  "
            f"statuses {dict(self.statuses)}"
        )


Call = Callable[[Connection, int], Awaitable[int]]


async def closed_loop(name: str, call: Call, conns: list[Connection], seconds: float) -> Result:
    result = Result(name, seconds)
    deadline = time.perf_counter() + seconds
    counter = iter(range(10**9))

    async def worker(conn: Connection) -> None:
        while (started := time.perf_counter()) < deadline:
            status = await call(conn, next(counter))
            result.latencies.append(time.perf_counter() - started)
            result.statuses[status] += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    result.seconds = time.perf_counter() - started  # until the last answer, not the deadline
    return result


async def open_loop(
    name: str, call: Call, conns: list[Connection], seconds: float, rate: float
) -> Result:
    """Requests due every 1/rate s; latency counts from the due instant, so a stalled server
    shows up in the figures instead of silently slowing the generator down."""
    result = Result(name, seconds)
    free: asyncio.Queue[Connection] = asyncio.Queue()
    for conn in conns:
        free.put_nowait(conn)
    start = time.perf_counter()
    total = int(seconds * rate)

    async def one(i: int, due: float) -> None:
        conn = await free.get()
        try:
            status = await call(conn, i)
        finally:
            free.put_nowait(conn)
        result.latencies.append(time.perf_counter() - due)
        result.statuses[status] += 1

    tasks = []
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    # Throughput over the time it took to answer them all: below --rate when postd fell behind.
    result.seconds = time.perf_counter() - start
    return result


def schedule_call(token_pages: list[str], base: datetime, offset: int, key: bool) -> Call:
    async def call(conn: Connection, i: int) -> int:
        n = offset + i
        at = base + START + SPACING * n
        body = {
            "page_id": token_pages[n % len(token_pages)],
            "message": f"bench post {n}",
            "scheduled_at": at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        }
        return await conn.request("POST", "/api/v1/posts/schedule", json.dumps(body).encode(), key)

    return call


async def list_call(conn: Connection, _i: int) -> int:
    return await conn.request("GET", "/api/v1/posts/scheduled?limit=50")


def process_cpu(pid: int) -> float:
    """User + sys CPU seconds of process ``pid``, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


async def measured(pid: int, phase: Awaitable[Result]) -> Result:
    before = process_cpu(pid)
    result = await phase
    result.cpu_seconds = process_cpu(pid) - before
    return result


async def drive(
    args: argparse.Namespace, port: int, token: str, pages: list[str], pid: int
) -> None:
    conns = [Connection(port, token) for _ in range(args.concurrency)]
    base = datetime.now(UTC)
    key = not args.no_idempotency
    try:
        await closed_loop("warm-up", schedule_call(pages, base, 4 * 10**6, key), conns, 1.0)
        phases = [
            closed_loop(
                "schedule one at a time (c=1)",
                schedule_call(pages, base, 3 * 10**6, key),
                conns[:1],
                min(args.seconds, 3.0),
            ),
            closed_loop(
                f"schedule closed loop (c={args.concurrency})",
                schedule_call(pages, base, 0, key),
                conns,
                args.seconds,
            ),
            open_loop(
                f"schedule open loop @{args.rate:.0f}/s",
                schedule_call(pages, base, 2 * 10**6, key),
                conns,
                args.seconds,
                args.rate,
            ),
            closed_loop(f"list closed loop (c={args.concurrency})", list_call, conns, args.seconds),
            open_loop(
                f"list open loop @{args.rate:.0f}/s", list_call, conns, args.seconds, args.rate
            ),
        ]
        names = ["one", "closed", "open", "list", "list-open"]
        wanted = set(args.phases.split(","))
        for name, phase in zip(names, phases, strict=True):
            if name in wanted:
                print((await measured(pid, phase)).line(), flush=True)
            else:
                phase.close()  # never awaited
    finally:
        for conn in conns:
            conn.close()


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"postd exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("postd did not become ready in time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--brands", type=int, default=10)
    parser.add_argument("--pages", type=int, default=10, help="pages per brand")
    parser.add_argument("--no-idempotency", action="store_true")
    parser.add_argument(
        "--phases",
        default="one,closed,open,list,list-open",
        help="comma-separated subset of: one, closed, open, list, list-open",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    args = parser.parse_args()

    directory = Path(tempfile.mkdtemp(prefix="postd-bench-api-"))
    port = free_port()
    config_path = write_config(directory, port)
    token, pages = asyncio.run(seed(config_path, args.brands, args.pages))
    postd = Path(sys.executable).with_name("postd")
    command = [str(postd) if postd.exists() else "postd", "--config", str(config_path), "run"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_ready(port, proc)
        print(f"postd on 127.0.0.1:{port}, SQLite {directory / 'postd.db'}, {len(pages)} pages")
        asyncio.run(drive(args, port, token, pages, proc.pid))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if proc.returncode != 0:
            print(f"postd exited with {proc.returncode}:\n{err.decode()[-2000:]}", file=sys.stderr)
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
