"""``postd webhook ...`` and the check-config warnings, as an operator uses them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from outreply.webhooks import verify_webhook_signature

from daemon import config
from daemon.app import App
from daemon.cli import main
from daemon.clock import FakeClock
from tests.webhook_receiver import Receiver, running


def postd(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from running()


@pytest.fixture
def cfg(tmp_path: Path) -> str:
    """An initialised config that lets loopback http receivers in, with one user and brand."""
    code, out, _ = postd("init", "--dir", str(tmp_path / "data"))
    assert code == 0
    path = out.strip().splitlines()[-1]
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("\n[netguard]\nallow_loopback = true\nallow_http = true\n")
    assert postd("--config", path, "user", "add", "ops@example.com", "--tier", "pro")[0] == 0
    assert postd("--config", path, "brand", "add", "Acme")[0] == 0
    return path


def _deliver_pending(path: str) -> None:
    """What the daemon would do: one drain of its deliverer on this database."""

    async def go() -> None:
        app = App(config.load(path), clock=FakeClock(datetime.now(UTC)))
        await app.prepare()
        try:
            await app.deliverer.drain()
        finally:
            await app.dispatcher.stop(0)
            await app.close()

    asyncio.run(go())


def test_add_list_test_deliveries_redeliver_rotate_disable_delete(
    cfg: str, receiver: Receiver
) -> None:
    """The secret is printed once, last; the test ping arrives signed with it; the delivery log
    and redelivery work; rotate prints a new secret; disable/enable/delete change the list."""
    code, out, err = postd(
        "--config", cfg, "webhook", "add", receiver.url, "--events", "post.published,post.failed"
    )
    assert code == 0, err
    lines = out.strip().splitlines()
    hook_id, secret = lines[0].removeprefix("webhook: "), lines[-1]
    assert secret.startswith("whsec_") and len(hook_id) == 24

    code, out, _ = postd("--config", cfg, "webhook", "list", "--json")
    (listed,) = json.loads(out)
    assert listed["id"] == hook_id and "secret" not in listed
    assert listed["events"] == ["post.published", "post.failed"]
    assert secret not in postd("--config", cfg, "webhook", "show", hook_id)[1]

    code, out, err = postd("--config", cfg, "webhook", "test", hook_id)
    assert code == 0, err
    delivery_id = out.strip()
    assert delivery_id.startswith("msg_")
    _deliver_pending(cfg)
    (ping,) = receiver.received
    assert ping.event == "webhook.test" and ping.webhook_id == delivery_id
    assert verify_webhook_signature(ping.body, ping.headers["x-outreply-signature"], secret)

    code, out, _ = postd("--config", cfg, "webhook", "deliveries", hook_id, "--json")
    (row,) = json.loads(out)
    assert row["id"] == delivery_id and row["status"] == "succeeded"
    assert row["attempt_log"][0]["status_code"] == 200
    assert delivery_id in postd("--config", cfg, "webhook", "deliveries", hook_id)[1]

    assert postd("--config", cfg, "webhook", "redeliver", hook_id, delivery_id)[0] == 0
    _deliver_pending(cfg)
    assert [r.webhook_id for r in receiver.received] == [delivery_id, delivery_id]

    code, out, _ = postd("--config", cfg, "webhook", "rotate-secret", hook_id)
    new_secret = out.strip().splitlines()[-1]
    assert code == 0 and new_secret.startswith("whsec_") and new_secret != secret
    assert "keeps signing until" in out

    code, out, _ = postd("--config", cfg, "webhook", "disable", hook_id)
    assert code == 0 and "disabled (manual)" in out
    code, _, err = postd("--config", cfg, "webhook", "test", hook_id)
    assert code == 1 and "WEBHOOK_DISABLED" in err
    assert "enabled" in postd("--config", cfg, "webhook", "enable", hook_id)[1]
    assert postd("--config", cfg, "webhook", "delete", hook_id)[0] == 0
    assert json.loads(postd("--config", cfg, "webhook", "list", "--json")[1]) == []
    code, _, err = postd("--config", cfg, "webhook", "show", hook_id)
    assert code == 1 and "NOT_FOUND" in err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["https://192.168.1.1/x"], "UNSAFE_URL"),
        (["http://10.1.2.3/x"], "UNSAFE_URL"),
        (["{url}", "--events", "post.deleted"], "INVALID_EVENTS"),
        (["{url}", "--user", "nobody@example.com"], "NOT_FOUND"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(
    cfg: str, receiver: Receiver, args: list[str], expected: str
) -> None:
    """A refused URL, unknown events or user: exit 1, one line naming the code, nothing stored."""
    args = [a.replace("{url}", receiver.url) for a in args]
    code, out, err = postd("--config", cfg, "webhook", "add", *args)
    assert code == 1 and expected in err and err.count("\n") == 1
    assert "whsec_" not in out
    assert json.loads(postd("--config", cfg, "webhook", "list", "--json")[1]) == []


def test_check_config_warns_about_loopback_and_http(cfg: str, tmp_path: Path) -> None:
    """allow_loopback and allow_http each get a warning line; the defaults get none."""
    code, out, _ = postd("--config", cfg, "check-config")
    assert code == 0
    assert "warning: netguard.allow_loopback is on" in out
    assert "warning: netguard.allow_http is on" in out
    plain = tmp_path / "plain.toml"
    plain.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "p.db"}"\n')
    code, out, _ = postd("--config", str(plain), "check-config")
    assert code == 0 and "netguard" not in out
