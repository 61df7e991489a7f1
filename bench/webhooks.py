"""Webhook delivery benchmark: deliveries/s from postd's deliverer to a loopback receiver.

Not a test: it prints figures. On a throwaway database (SQLite in a temp dir by default;
``--db postgresql`` creates and drops a database on ``--pg-url``'s server) it makes one elite user
with ``--subs`` subscriptions (default 10) to a receiver running in **its own process** (a minimal
asyncio HTTP/1.1 server that answers 200 at once and notes when each delivery arrived), inserts
``--events`` outbox events at instant T (default 2,000, so 20,000 deliveries), and runs the App's
deliverer with the real SystemClock until every delivery is ``succeeded``:

- ``--driver drain`` (default): ``Deliverer.drain()`` in a loop;
- ``--driver pump``: the daemon's own path, ``Deliverer.pump()`` woken once at T;
- ``--rate R``: open loop instead of a burst: R events a second are recorded (in 50 ms ticks)
  while the pump runs, woken by each commit as in the daemon (R = 50 is 500 deliveries/s).

Everything of a delivery is measured: fan-out, claim under a lease, the quota charge, signing both
schemes, the HTTP POST through the SSRF policy, and the group-committed result.

Figures:

- **deliveries/s**: deliveries divided by (the last result committed - T);
- **latency p50/p99/max**: arrival at the receiver minus the instant the event was recorded
  (in a burst that is mostly queueing: every event is recorded at T), and the per-attempt HTTP
  duration from ``webhook_attempts.duration_ms``;
- **CPU ms/delivery**: this process's user+sys CPU from T to the end, divided by the deliveries;
- **peak RSS**: ``ru_maxrss`` of this process (postd's side; the receiver is another process).

    /work/venv/bin/python bench/webhooks.py
    /work/venv/bin/python bench/webhooks.py --rate 50          # 500 deliveries/s, steady
    /work/venv/bin/python bench/webhooks.py --events 5000 --concurrency 64 --json
    /work/venv/bin/python bench/webhooks.py --db postgresql --driver pump

Exit status 0 when every delivery succeeded and reached the receiver exactly once, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PG_URL = os.environ.get("POSTD_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
ROOMY = {
    "publishes": 10**9,
    "replies": 10**9,
    "reads": 10**9,
    "webhooks": 10**9,
    "per_minute": 10**9,
    "per_day": 10**9,
    "storage_bytes": 1 << 30,
    "max_file_bytes": 1 << 20,
    "active_keys": 25,
}


# -- the receiver (its own process) -------------------------------------------------------------


async def _serve_receiver(port: int) -> list[tuple[str, float]]:
    arrivals: list[tuple[str, float]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length, msg_id = 0, ""
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    key = name.strip().lower()
                    if key == b"content-length":
                        length = int(value)
                    elif key == b"webhook-id":
                        msg_id = value.strip().decode()
                await reader.readexactly(length)
                arrivals.append((msg_id, time.time()))
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # the parent closes stdin to stop us
    server.close()
    return arrivals


# -- postd's side -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def _settings(db_url: str, base: Path, args: argparse.Namespace) -> Any:
    from daemon import config

    return config.Settings.model_validate(
        {
            "database": {"url": db_url},
            "sandbox": {"state_path": str(base / "sandbox.db")},
            "netguard": {"allow_loopback": True, "allow_http": True},
            "webhooks": {"concurrency": args.concurrency, "batch_size": args.batch_size},
            "tiers": {tier: ROOMY for tier in ("free", "pro", "elite")},
            "logging": {"level": "warning"},
            "base_dir": base,
        }
    )


async def _seed(app: Any, url: str, subs: int) -> tuple[str, str]:
    """One elite user with a brand and ``subs`` subscriptions; (user id, brand id)."""
    from daemon import ids, netguard, tokens
    from daemon.events import service
    from daemon.store.models import Brand

    now = app.clock.now()
    async with app.sessions() as session, session.begin():
        user, _ = await tokens.add_user(session, "bench@example.com", now, tier="elite")
        brand = Brand(id=ids.new_id(), name="bench", owner_id=user.id, created_at=now)
        session.add(brand)
        guard = netguard.Policy.from_settings(app.settings.netguard)
        for n in range(subs):
            await service.create(
                session,
                service.Caller(user.id),
                url=f"{url}/hook/{n}",
                events=["post.published"],
                now=now,
                guard=guard,
            )
    await app.deliverer.drain()  # nothing yet: warms the engine
    return user.id, brand.id


async def _emit(app: Any, user_id: str, brand_id: str, n: int) -> None:
    """``n`` post.published outbox events, as the dispatcher writes them, recorded now."""
    from sqlalchemy import insert

    from daemon import ids, lifecycle
    from daemon.store.models import OutboxEvent

    now = app.clock.now()
    rows = []
    for _ in range(n):
        post_id = ids.new_id()
        view = lifecycle.PostView(
            id=post_id,
            page_id=brand_id,
            brand_id=brand_id,
            platform="sandbox",
            state=lifecycle.PUBLISHED,
            message=f"bench post {post_id}",
            media=[],
            first_comment=None,
            scheduled_at=now,
            created_at=now,
            published_at=now,
            remote_id=f"r{post_id}",
        )
        rows.append(
            {
                "event": "post.published",
                "post_id": post_id,
                "user_id": user_id,
                "brand_id": brand_id,
                "created_at": now,
                "payload": lifecycle.event_payload("post.published", view, user_id, now),
            }
        )
    async with app.engine.begin() as conn:
        await conn.execute(insert(OutboxEvent), rows)


async def _produce(app: Any, user_id: str, brand_id: str, events: int, rate: float) -> None:
    """Open loop: ``rate`` events a second, in ticks of 50 ms, until ``events`` are recorded."""
    tick, sent, start = 0.05, 0, time.monotonic()
    while sent < events:
        due = min(events, int((time.monotonic() - start) * rate) + 1)
        if due > sent:
            await _emit(app, user_id, brand_id, due - sent)
            sent = due
        await asyncio.sleep(tick)


async def _run(args: argparse.Namespace, db_url: str, base: Path, url: str) -> dict[str, Any]:
    from sqlalchemy import func, select

    from daemon.app import App
    from daemon.store import db
    from daemon.store.models import OutboxEvent, WebhookAttempt, WebhookDelivery

    app = App(_settings(db_url, base, args))
    await db.migrate(app.engine)
    await app.prepare()
    try:
        user_id, brand_id = await _seed(app, url, args.subs)
        expected = args.subs * args.events
        if not args.rate:
            await _emit(app, user_id, brand_id, args.events)
        cpu0, t0 = time.process_time(), time.time()
        if args.rate or args.driver == "pump":
            finished = _count_applied(app, expected)
            pump = asyncio.create_task(app.deliverer.pump())
            app.deliverer.wake()
            if args.rate:
                await _produce(app, user_id, brand_id, args.events, args.rate)
            await finished.wait()
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
        else:
            while await app.deliverer.drain() is not None:
                pass
        t1, cpu1 = time.time(), time.process_time()
        async with app.sessions() as session:
            statuses = dict(
                (
                    await session.execute(
                        select(WebhookDelivery.status, func.count()).group_by(
                            WebhookDelivery.status
                        )
                    )
                ).all()
            )
            durations = [
                float(d) for d in await session.scalars(select(WebhookAttempt.duration_ms))
            ]
            recorded = {
                msg_id: at.timestamp()
                for msg_id, at in await session.execute(
                    select(WebhookDelivery.id, OutboxEvent.created_at).join(
                        OutboxEvent, OutboxEvent.id == WebhookDelivery.event_id
                    )
                )
            }
    finally:
        await app.deliverer.stop(1)
        await app.dispatcher.stop(0)
        await app.close()
    return {
        "expected": expected,
        "statuses": statuses,
        "t0": t0,
        "t1": t1,
        "cpu_s": cpu1 - cpu0,
        "attempt_ms": durations,
        "recorded": recorded,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _count_applied(app: Any, expected: int) -> asyncio.Event:
    """An event set once ``expected`` results are committed (wraps the deliverer's apply)."""
    finished = asyncio.Event()
    original = app.deliverer.apply
    applied = 0

    async def counting(results: Any) -> Any:
        nonlocal applied
        out = await original(results)
        applied += out.applied
        if applied >= expected:
            finished.set()
        return out

    app.deliverer.apply = counting
    return finished


def _pg_database() -> tuple[str, str]:
    import psycopg

    name = f"postd_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{PG_URL.rpartition('/')[0]}/{name}", name


def _drop_pg(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--subs", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--driver", choices=("drain", "pump"), default="drain")
    parser.add_argument(
        "--rate", type=float, default=0, help="events/s, open loop (default 0: one burst at T)"
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--receiver", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver is not None:
        arrivals = asyncio.run(_serve_receiver(args.receiver))
        Path(args.out).write_text(json.dumps(arrivals))
        return 0

    from daemon import logs
    from daemon.config import LoggingSettings

    logs.configure(LoggingSettings(level="warning", format="json"))
    base = Path(tempfile.mkdtemp(prefix="postd-bench-hooks-"))
    port, arrivals_file = _free_port(), base / "arrivals.json"
    receiver = subprocess.Popen(
        [sys.executable, __file__, "--receiver", str(port), "--out", str(arrivals_file)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    pg_name = None
    try:
        assert receiver.stdout is not None and receiver.stdout.readline().strip() == "ready"
        if args.db == "postgresql":
            db_url, pg_name = _pg_database()
        else:
            db_url = f"sqlite:///{base / 'postd.db'}"
        result = asyncio.run(_run(args, db_url, base, f"http://127.0.0.1:{port}"))
    finally:
        if receiver.stdin is not None:
            receiver.stdin.close()
        receiver.wait(timeout=60)
        if pg_name is not None:
            _drop_pg(pg_name)
    arrivals = json.loads(arrivals_file.read_text()) if arrivals_file.exists() else []
    shutil.rmtree(base, ignore_errors=True)
    return _report(args, result, arrivals)


def _report(args: argparse.Namespace, result: dict[str, Any], arrivals: list[Any]) -> int:
    n = result["expected"]
    elapsed = result["t1"] - result["t0"]
    recorded = result["recorded"]
    latency = [at - recorded[msg_id] for msg_id, at in arrivals if msg_id in recorded]
    ids = [msg_id for msg_id, _ in arrivals]
    report = {
        "db": args.db,
        "driver": "pump" if args.rate else args.driver,
        "rate_events_per_s": args.rate or None,
        "subscriptions": args.subs,
        "events": args.events,
        "deliveries": n,
        "concurrency": args.concurrency,
        "seconds": round(elapsed, 2),
        "deliveries_per_s": round(n / elapsed, 1),
        "latency_p50_s": round(_percentile(latency, 50), 3),
        "latency_p99_s": round(_percentile(latency, 99), 3),
        "latency_max_s": round(max(latency, default=float("nan")), 3),
        "attempt_http_ms_p50": _percentile(result["attempt_ms"], 50),
        "attempt_http_ms_p99": _percentile(result["attempt_ms"], 99),
        "cpu_ms_per_delivery": round(result["cpu_s"] * 1000 / n, 3),
        "peak_rss_mib": round(result["peak_rss_mib"], 1),
        "statuses": result["statuses"],
        "received": len(arrivals),
        "run_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    problems = []
    if result["statuses"] != {"succeeded": n}:
        problems.append(f"not every delivery succeeded: {result['statuses']}")
    if len(ids) != n or len(set(ids)) != n:
        problems.append(f"receiver got {len(ids)} deliveries, {len(set(ids))} distinct; want {n}")
    if args.json:
        print(json.dumps({**report, "problems": problems}))
    else:
        width = max(len(k) for k in report)
        for key, value in report.items():
            print(f"{key:<{width}}  {value}")
        for problem in problems:
            print(f"ERROR {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
