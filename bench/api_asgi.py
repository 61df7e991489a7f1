"""API benchmark without HTTP: the ASGI app driven in-process, CPU per request by thread.

Not a test: it prints figures. Same throwaway database as ``bench/api.py`` (its ``seed``), but
no server, no sockets and no load generator competing for the two cores: each request is one
call of the daemon's ASGI app (``App.http``), ``--concurrency`` of them in flight. It prints
requests/s, the process's CPU per request and the event loop thread's share (the rest is the
group writer's thread). On a shared machine these figures move much less than
``bench/api.py``'s, so use it to compare two commits (alternate the runs); ``bench/api.py``
stays the end-to-end figure. ``--profile FILE`` writes a cProfile of the loop thread.

    /work/venv/bin/python bench/api_asgi.py                      # schedule, 2,000 requests
    /work/venv/bin/python bench/api_asgi.py --endpoint list --requests 4000
    /work/venv/bin/python bench/api_asgi.py --rate 300 --requests 2400   # open loop, latency
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import api as http_bench  # bench/api.py: the same config, seed and bodies

from daemon import config
from daemon.app import App, freeze_heap


async def call(app: App, token: str, method: str, path: str, body: bytes, query: bytes) -> int:
    """One request through the ASGI app; its status."""
    headers = [
        (b"host", b"127.0.0.1"),
        (b"authorization", f"Bearer {token}".encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    if body:  # every POST carries a fresh key, as the SDK sends
        headers += [(b"content-type", b"application/json")]
        headers += [(b"idempotency-key", str(uuid.uuid4()).encode())]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    status: list[int] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.Event().wait()  # a disconnect never comes
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(int(message["status"]))

    await app.http(scope, receive, send)
    return status[0]


def requests(
    app: App, token: str, pages: list[str], endpoint: str
) -> Callable[[int], Awaitable[int]]:
    base = datetime.now(UTC)

    async def schedule(n: int) -> int:
        at = base + http_bench.START + http_bench.SPACING * n
        body = {
            "page_id": pages[n % len(pages)],
            "message": f"bench post {n}",
            "scheduled_at": at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        }
        return await call(
            app, token, "POST", "/api/v1/posts/schedule", json.dumps(body).encode(), b""
        )

    async def listing(_n: int) -> int:
        return await call(app, token, "GET", "/api/v1/posts/scheduled", b"", b"limit=50")

    return schedule if endpoint == "schedule" else listing


async def run(args: argparse.Namespace, directory: Path) -> None:
    config_path = http_bench.write_config(directory, http_bench.free_port())
    token, pages = await http_bench.seed(config_path, args.brands, args.pages)
    app = App(config.load(config_path, environ={}))
    await app.prepare()
    freeze_heap()
    one = requests(app, token, pages, args.endpoint)
    counter = iter(range(10**9))
    statuses: Counter[int] = Counter()

    async def worker(count: int) -> None:
        for _ in range(count):
            statuses[await one(next(counter))] += 1

    latencies: list[float] = []
    loop = asyncio.get_running_loop()

    async def fire(n: int, due: float) -> None:
        statuses[await one(n)] += 1
        latencies.append(loop.time() - due)

    async def open_loop(count: int) -> None:
        """``count`` requests at ``--rate`` per second, each timed from the instant it was due
        (as bench/api.py's open loop: no coordinated omission)."""
        start, fired = loop.time(), []
        for i in range(count):
            due = start + i / args.rate
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            fired.append(asyncio.create_task(fire(next(counter), due)))
        await asyncio.gather(*fired)

    try:
        # Warm-up (and, for the list, something to list): a few hundred schedules.
        warm = requests(app, token, pages, "schedule")
        await asyncio.gather(*(warm(10**6 + i) for i in range(300)))
        per_worker = max(1, args.requests // args.concurrency)
        profile = cProfile.Profile() if args.profile else None
        if profile is not None:
            profile.enable()
        wall, cpu, loop_cpu = time.perf_counter(), time.process_time(), time.thread_time()
        if args.rate:
            per_worker, args.concurrency = args.requests, 1
            await open_loop(args.requests)
        else:
            await asyncio.gather(*(worker(per_worker) for _ in range(args.concurrency)))
        wall = time.perf_counter() - wall
        cpu, loop_cpu = time.process_time() - cpu, time.thread_time() - loop_cpu
        if profile is not None:
            profile.disable()
            profile.dump_stats(args.profile)
    finally:
        await app.close()
    n = per_worker * args.concurrency
    shape = f"open loop at {args.rate:g}/s" if args.rate else f"c={args.concurrency}"
    if latencies:
        latencies.sort()
        at = [latencies[min(n - 1, int(n * q))] * 1000 for q in (0.5, 0.9, 0.99)]
        shape += f" (latency p50 {at[0]:.1f} p90 {at[1]:.1f} p99 {at[2]:.1f} ms)"
    print(
        f"{args.endpoint} {shape}: {n / wall:.0f} req/s, "
        f"CPU {1000 * cpu / n:.2f} ms/req (loop thread {1000 * loop_cpu / n:.2f}), "
        f"statuses {dict(statuses)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint", choices=("schedule", "list"), default="schedule")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--brands", type=int, default=10)
    parser.add_argument("--pages", type=int, default=10, help="pages per brand")
    parser.add_argument("--profile", help="write a cProfile of the loop thread here")
    parser.add_argument(
        "--rate",
        type=float,
        default=0,
        help="open loop: send --requests at this many per second (0: closed loop)",
    )
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="postd-bench-asgi-"))
    try:
        asyncio.run(run(args, directory))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
