"""Acceptance 4 (slow): ``postd run`` on SQLite is SIGKILLed during a burst of 500 events
(500 posts publishing at once, each one event for one subscription), restarted each time; in the
end every event reached the receiver at least once, and a duplicate always carries the webhook-id
of its first copy.

The sleeps here are the adversary's timing (when to pull the plug), not waits for time to pass.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import closing, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from daemon import config, services, tokens
from daemon.store import db
from tests.live_server import free_port
from tests.support import clean_env, postd_command
from tests.webhook_receiver import Receiver, running

POSTS = 500
PAGES = 50
KILL_AT = (40, 160, 300, 430)  # distinct events received when the plug is pulled
REJECT_EVERY = 25  # every 25th post fails: post.failed is delivered too
UP_TIMEOUT = 30.0
FINISH_TIMEOUT = 60.0

CONFIG = """\
[server]
bind = "127.0.0.1:{port}"

[database]
url = "sqlite:///{db}"

[scheduling]
sweep_seconds = 1
lease_seconds = 15

[dispatch]
concurrency = 16
shutdown_grace_seconds = 5

[guardrails]
min_gap_seconds = 0
brand_per_24h = 2000

[guardrails.sandbox]
per_hour = 100000
per_24h = 1000000

[sandbox]
state_path = "{sandbox}"
latency_ms = 15
latency_jitter_ms = 10

[netguard]
allow_loopback = true
allow_http = true

[webhooks]
concurrency = 8
retry_schedule_seconds = [1, 2, 5]

[logging]
level = "warning"
format = "json"
"""


def _run(config_path: Path, *args: str) -> str:
    done = subprocess.run(
        [*postd_command(), "--config", str(config_path), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def _seed(settings: config.Settings) -> dict[str, bool]:
    """An elite user owning 50 sandbox pages and 500 posts due a second ago; post id -> fails."""
    now = datetime.now(UTC)
    engine = db.create_engine(settings.database.url, settings.base_dir)
    posts: dict[str, bool] = {}
    try:
        async with db.sessionmaker(engine)() as session, session.begin():
            user, _ = await tokens.add_user(session, "crash@example.com", now, tier="elite")
            brand = await services.add_brand(session, "crash brand", now, owner_id=user.id)
            await session.flush()
            pages = []
            for p in range(PAGES):
                page = await services.add_page(
                    session, brand_id=brand.id, platform="sandbox", name=f"page {p}", now=now
                )
                await session.flush()
                pages.append(page.id)
            for n in range(POSTS):
                rejected = n % REJECT_EVERY == REJECT_EVERY - 1
                post = await services.schedule_post(
                    session,
                    services.NewPost(
                        page_id=pages[n % PAGES],
                        scheduled_at=now - timedelta(seconds=1),
                        message=f"burst {n}" + (" [sandbox:reject]" if rejected else ""),
                    ),
                    now=now,
                    scheduling=settings.scheduling,
                    check_lead=False,
                )
                posts[post.id] = rejected
    finally:
        await engine.dispose()
    return posts


def _query(db_path: Path, sql: str) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)) as conn:
        return conn.execute(sql).fetchall()


class Daemon:
    def __init__(self, config_path: Path, port: int, log_path: Path) -> None:
        self.config_path, self.port, self.log_path = config_path, port, log_path
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        with self.log_path.open("ab") as log:
            proc = subprocess.Popen(
                [*postd_command(), "--config", str(self.config_path), "run"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.config_path.parent,
                env=clean_env(),
            )
        self.procs.append(proc)
        deadline = time.monotonic() + UP_TIMEOUT
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"postd exited:\n{self.tail()}"
            with suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=0.5).is_success:
                    return proc
            time.sleep(0.02)
        raise AssertionError(f"postd did not come up:\n{self.tail()}")

    def tail(self) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-30:])

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)


def _unfinished(db_path: Path) -> int:
    """Deliveries not yet succeeded (a resend of what a killed run sent may still be due)."""
    rows = _query(db_path, "SELECT count(*) FROM webhook_deliveries WHERE status != 'succeeded'")
    total = _query(db_path, "SELECT count(*) FROM webhook_deliveries")
    return int(str(rows[0][0])) + POSTS - int(str(total[0][0]))


def _post_ids(receiver: Receiver) -> dict[str, set[str]]:
    """Post id -> the webhook-ids it arrived with."""
    seen: dict[str, set[str]] = defaultdict(set)
    for item in list(receiver.received):
        seen[item.payload["data"]["post"]["id"]].add(item.webhook_id)
    return seen


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from running()


@pytest.mark.slow
def test_sigkill_during_a_burst_loses_no_event(tmp_path: Path, receiver: Receiver) -> None:
    """Killed 4 times while 500 events are being delivered: all arrive; copies share an id."""
    port = free_port()
    db_path = tmp_path / "postd.db"
    config_path = tmp_path / "postd.toml"
    config_path.write_text(CONFIG.format(port=port, db=db_path, sandbox=tmp_path / "sb.db"))
    _run(config_path, "migrate")
    posts = asyncio.run(_seed(config.load(config_path)))
    _run(config_path, "webhook", "add", receiver.url, "--events", "post.published,post.failed")

    daemon = Daemon(config_path, port, tmp_path / "daemon.log")
    kills: list[dict[str, int]] = []
    started = time.monotonic()
    try:
        for threshold in KILL_AT:
            proc = daemon.start()
            deadline = time.monotonic() + FINISH_TIMEOUT
            while len(_post_ids(receiver)) < threshold:
                assert proc.poll() is None, f"postd died on its own:\n{daemon.tail()}"
                assert time.monotonic() < deadline, f"stuck at {len(_post_ids(receiver))}"
                time.sleep(0.005)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            in_flight = _query(
                db_path, "SELECT count(*) FROM webhook_deliveries WHERE status = 'delivering'"
            )[0][0]
            kills.append(
                {"received": len(_post_ids(receiver)), "left_delivering": int(str(in_flight))}
            )
        proc = daemon.start()
        deadline = time.monotonic() + FINISH_TIMEOUT
        while len(_post_ids(receiver)) < POSTS or _unfinished(db_path):
            assert proc.poll() is None, f"postd died on its own:\n{daemon.tail()}"
            assert time.monotonic() < deadline, (
                f"{len(_post_ids(receiver))} of {POSTS} events arrived, "
                f"{_unfinished(db_path)} unfinished:\n{daemon.tail()}"
            )
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, daemon.tail()
    finally:
        daemon.cleanup()

    seen = _post_ids(receiver)
    assert set(seen) == set(posts), "events lost or invented"
    mixed = {post: ids for post, ids in seen.items() if len(ids) != 1}
    assert not mixed, f"copies of one event with different webhook-ids: {mixed}"
    by_id: dict[str, set[str]] = defaultdict(set)
    for post, ids in seen.items():
        by_id[next(iter(ids))].add(post)
    assert all(len(p) == 1 for p in by_id.values()), "one webhook-id for two events"
    events = {r.payload["data"]["post"]["id"]: r.event for r in receiver.received}
    assert all(
        events[p] == ("post.failed" if bad else "post.published") for p, bad in posts.items()
    )
    duplicates = len(receiver.received) - POSTS
    statuses = dict(_query(db_path, "SELECT status, count(*) FROM webhook_deliveries GROUP BY 1"))
    assert statuses == {"succeeded": POSTS}, statuses
    print(
        f"webhook crash test: kills={kills} duplicates={duplicates} "
        f"total_s={time.monotonic() - started:.1f}"
    )
    assert all(k["received"] < POSTS for k in kills), "a kill came after the burst"
