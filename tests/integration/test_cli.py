"""The CLI as operators and acceptance checks use it: happy path and every bad input."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from daemon.cli import main


def postd(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def setup(tmp_path: Path) -> tuple[str, str]:
    """An initialised config with one brand and one sandbox page: (config path, page id)."""
    code, out, _ = postd("init", "--dir", str(tmp_path / "data"))
    assert code == 0
    cfg = out.strip().splitlines()[-1]
    _, brand, _ = postd("--config", cfg, "brand", "add", "Acme")
    code, page, err = postd(
        "--config",
        cfg,
        "page",
        "add",
        "--brand",
        brand.strip(),
        "--platform",
        "sandbox",
        "--name",
        "Main",
    )
    assert code == 0, err
    return cfg, page.strip()


def _at(minutes: float) -> str:
    return (datetime.now(UTC) + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _snapshot(cfg: str) -> str:
    code, out, err = postd("--config", cfg, "post", "list", "--json")
    assert code == 0, err
    return out


def test_init_schedule_list_cancel_events_status(setup: tuple[str, str]) -> None:
    """init writes a migrated config; schedule prints an id; list/cancel/events/status work."""
    cfg, page = setup
    code, out, err = postd(
        "--config", cfg, "post", "schedule", "--page", page, "--at", _at(30), "--text", "hello"
    )
    assert code == 0, err
    post_id = out.strip()
    assert len(post_id) == 24
    posts = json.loads(_snapshot(cfg))
    assert [(p["id"], p["status"]) for p in posts] == [(post_id, "scheduled")]
    assert posts[0]["attempts"] == []
    code, out, _ = postd("--config", cfg, "status", "--json")
    assert json.loads(out)["posts"]["scheduled"] == 1
    assert postd("--config", cfg, "post", "cancel", post_id)[0] == 0
    assert json.loads(_snapshot(cfg))[0]["status"] == "cancelled"
    code, out, err = postd("--config", cfg, "post", "cancel", post_id)
    assert code == 1 and "NOT_FOUND" in err
    assert json.loads(postd("--config", cfg, "events", "--json")[1]) == []


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--page", "{page}", "--at", "2030-01-01T10:00:00", "--text", "x"], "INVALID_DATE"),
        (["--page", "{page}", "--at", "tomorrow", "--text", "x"], "INVALID_DATE"),
        (["--page", "{page}", "--at", "2020-01-01T10:00:00Z", "--text", "x"], "in the past"),
        (["--page", "{page}", "--at", "{soon}", "--text", "x"], "SCHEDULE_TOO_SOON"),
        (["--page", "{page}", "--at", "{far}", "--text", "x"], "SCHEDULE_TOO_FAR"),
        (["--page", "nope", "--at", "{ok}", "--text", "x"], "unknown page"),
        (["--page", "{page}", "--at", "{ok}"], "MISSING_FIELD"),
        (["--page", "{page}", "--at", "{ok}", "--text", "x" * 5001], "MESSAGE_TOO_LONG"),
    ],
)
def test_bad_schedule_input_is_one_line_nonzero_and_changes_nothing(
    setup: tuple[str, str], args: list[str], expected: str
) -> None:
    """A zoneless/past/too-soon/too-far time, unknown page or bad text: one line, exit 1, no row."""
    cfg, page = setup
    before = _snapshot(cfg)
    filled = [a.format(page=page, soon=_at(2), far=_at(76 * 24 * 60), ok=_at(30)) for a in args]
    code, out, err = postd("--config", cfg, "post", "schedule", *filled)
    assert code == 1
    assert out == ""
    assert expected in err and err.count("\n") == 1 and err.startswith("postd: error:")
    assert _snapshot(cfg) == before


def test_bad_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    """A bad config: exit 2, one line naming the key, for every command."""
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[scheduling]\nsweep_seconds = -1\n")
    for command in (["run"], ["migrate"], ["check-config"], ["status"]):
        code, _out, err = postd("--config", str(cfg), *command)
        assert code == 2
        assert err.strip() == (
            "postd: config error: scheduling.sweep_seconds: Input should be greater than 0"
        )


def test_unmigrated_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    """run/status on a database that was never migrated: clear error, exit 1, no file created."""
    db = tmp_path / "postd.db"
    cfg = tmp_path / "postd.toml"
    cfg.write_text(f'[database]\nurl = "sqlite:///{db}"\n[server]\nbind = "127.0.0.1:1"\n')
    for command in (["run"], ["status"], ["brand", "add", "x"]):
        code, _, err = postd("--config", str(cfg), *command)
        assert code == 1
        assert "postd migrate" in err and err.count("\n") == 1
    assert not db.exists()


def test_unmigrated_existing_database_is_refused(tmp_path: Path) -> None:
    """An existing but empty database file is refused too, and stays without tables."""
    db = tmp_path / "postd.db"
    db.touch()
    cfg = tmp_path / "postd.toml"
    cfg.write_text(f'[database]\nurl = "sqlite:///{db}"\n')
    code, _, err = postd("--config", str(cfg), "run")
    assert code == 1 and "not initialised" in err and "postd migrate" in err
    assert db.stat().st_size == 0


def test_unknown_brand_and_platform_are_refused(setup: tuple[str, str]) -> None:
    """page add with an unknown brand or platform: stable code, exit 1."""
    cfg, _ = setup
    code, _, err = postd(
        "--config", cfg, "page", "add", "--brand", "nope", "--platform", "sandbox", "--name", "x"
    )
    assert code == 1 and "NOT_FOUND" in err
    _, brand, _ = postd("--config", cfg, "brand", "add", "B")
    code, _, err = postd(
        "--config",
        cfg,
        "page",
        "add",
        "--brand",
        brand.strip(),
        "--platform",
        "myspace",
        "--name",
        "x",
    )
    assert code == 1 and "INVALID_PLATFORM" in err


def test_brand_list_shows_owner_and_page_count(setup: tuple[str, str]) -> None:
    """brand list: every brand with its owner and pages; page list --json names each page's
    brand, so an operator who lost the id printed by `brand add` can find it again."""
    cfg, page = setup
    code, out, err = postd("--config", cfg, "user", "add", "ops@example.com")
    assert code == 0, err
    user = out.strip().splitlines()[-1]
    _, second, _ = postd("--config", cfg, "brand", "add", "Beta", "--owner", "ops@example.com")
    code, out, err = postd("--config", cfg, "brand", "list", "--json")
    assert code == 0, err
    brands = json.loads(out)
    assert [(b["name"], b["owner_id"], b["owner_email"], b["pages"]) for b in brands] == [
        ("Acme", None, None, 1),
        ("Beta", user, "ops@example.com", 0),
    ]
    assert brands[1]["id"] == second.strip()
    code, text, _ = postd("--config", cfg, "brand", "list")
    lines = text.splitlines()
    assert code == 0 and len(lines) == 2
    assert lines[0].startswith(brands[0]["id"]) and "(no owner)" in lines[0]
    assert " 1 page " in lines[0] and lines[0].endswith("Acme")
    assert "ops@example.com" in lines[1] and " 0 pages " in lines[1] and lines[1].endswith("Beta")
    code, out, _ = postd("--config", cfg, "page", "list", "--json")
    assert [(p["id"], p["brand_id"]) for p in json.loads(out)] == [(page, brands[0]["id"])]


def test_page_list_says_which_pages_are_not_connected(setup: tuple[str, str]) -> None:
    """A Facebook page added without `page connect` lists as not_connected; the sandbox, which
    needs no credentials, as active."""
    cfg, sandbox = setup
    brand = json.loads(postd("--config", cfg, "brand", "list", "--json")[1])[0]["id"]
    code, out, err = postd(
        "--config", cfg, "page", "add", "--brand", brand, "--platform", "facebook", "--name", "FB"
    )
    assert code == 0, err
    facebook = out.strip()
    code, out, _ = postd("--config", cfg, "page", "list", "--json")
    assert {p["id"]: p["status"] for p in json.loads(out)} == {
        sandbox: "active",
        facebook: "not_connected",
    }
    code, text, _ = postd("--config", cfg, "page", "list")
    assert any(line.startswith(facebook) and "not_connected" in line for line in text.splitlines())
    code, text, _ = postd("--config", cfg, "status")
    lines = {line.split()[0]: line for line in text.splitlines() if line.startswith("  ")}
    assert lines[facebook].endswith("  not_connected") and "connected" not in lines[sandbox]
