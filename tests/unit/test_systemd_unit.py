"""systemd/postd.service: the directives postd relies on, and systemd's own verdict on the file."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "postd.service"
EXEC_START_BINARY = "/opt/postd/venv/bin/postd"
MAX_EXPOSURE = 1.5


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Section -> key -> every value in file order (systemd allows repeated keys)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        assert not line.endswith("\\"), f"line continuation not expected: {raw!r}"
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"directive outside a section: {raw!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    return parse_unit(UNIT.read_text(encoding="utf-8"))["Service"]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("ExecStart", f"{EXEC_START_BINARY} --config /etc/postd/postd.toml run"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("WatchdogSec", "120"),
        ("Restart", "on-failure"),
        ("KillMode", "mixed"),
        ("StateDirectory", "postd"),
        ("LoadCredential", "postd-secret-key:/etc/postd/secret.key"),
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("CapabilityBoundingSet", ""),
    ],
)
def test_service_pins_directive(service: dict[str, list[str]], key: str, value: str) -> None:
    """Each directive postd's runtime depends on is set, once, to the expected value."""
    assert service.get(key) == [value]


def test_runs_as_a_dedicated_non_root_user(service: dict[str, list[str]]) -> None:
    """The service has its own identity: User= (not root) or DynamicUser=yes."""
    user = service.get("User", ["root"])[-1]
    assert user not in ("root", "0") or service.get("DynamicUser") == ["yes"]


def test_stop_timeout_exceeds_shutdown_grace(service: dict[str, list[str]]) -> None:
    """TimeoutStopSec leaves room beyond the daemon's 20 s shutdown grace before SIGKILL."""
    assert int(service["TimeoutStopSec"][-1]) > 20


def test_network_is_not_ip_restricted(service: dict[str, list[str]]) -> None:
    """No IP allow/deny list: postd publishes to arbitrary internet endpoints."""
    assert "IPAddressDeny" not in service
    assert "IPAddressAllow" not in service


def _systemd_analyze(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not on PATH")
    env = os.environ | {"SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": ""}
    return subprocess.run(
        [exe, *args, "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_security_exposure_is_low() -> None:
    """`systemd-analyze security --offline=true` rates the unit at or below 1.5."""
    result = _systemd_analyze("security", "--offline=true")
    if "unrecognized option" in result.stderr:
        pytest.skip(f"systemd-analyze lacks --offline (needs systemd >= 250): {result.stderr}")
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match, f"no exposure figure in output:\n{result.stdout}\n{result.stderr}"
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


def test_verify_reports_nothing_but_a_missing_binary() -> None:
    """`systemd-analyze verify` finds no problem, apart from ExecStart absent on a dev machine."""
    result = _systemd_analyze("verify")
    missing_binary = f"postd.service: Command {EXEC_START_BINARY} is not executable"
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line.strip()
        and not (line.startswith(missing_binary) and not Path(EXEC_START_BINARY).exists())
    ]
    assert problems == []
