"""daemon.systemd.Notifier against real AF_UNIX datagram sockets standing in for systemd."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from daemon import systemd

RECV_TIMEOUT = 2.0  # seconds; only reached when a test is about to fail


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket at a filesystem path, as systemd's notify socket is."""
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(RECV_TIMEOUT)
        yield sock, path


def recv(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_ready_sends_ready_1(listener: tuple[socket.socket, str]) -> None:
    """ready() sends exactly READY=1."""
    sock, path = listener
    systemd.Notifier.from_env({"NOTIFY_SOCKET": path}).ready()
    assert recv(sock) == "READY=1"


def test_ready_with_status_sends_both_in_one_datagram(listener: tuple[socket.socket, str]) -> None:
    """ready(status) sends READY=1 and STATUS= together."""
    sock, path = listener
    systemd.Notifier.from_env({"NOTIFY_SOCKET": path}).ready("serving on 127.0.0.1:8787")
    assert recv(sock) == "READY=1\nSTATUS=serving on 127.0.0.1:8787"


def test_status_stopping_and_watchdog_messages(listener: tuple[socket.socket, str]) -> None:
    """status(), watchdog() and stopping() send STATUS=..., WATCHDOG=1, STOPPING=1 in order."""
    sock, path = listener
    notifier = systemd.Notifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "120000000"})
    notifier.status("3 posts due")
    notifier.watchdog()
    notifier.stopping()
    assert [recv(sock) for _ in range(3)] == ["STATUS=3 posts due", "WATCHDOG=1", "STOPPING=1"]


def test_status_text_is_flattened_to_one_line(listener: tuple[socket.socket, str]) -> None:
    """A newline in status text cannot inject another KEY=VALUE line."""
    sock, path = listener
    systemd.Notifier.from_env({"NOTIFY_SOCKET": path}).status("a\nREADY=1\r\nb")
    assert recv(sock) == "STATUS=a READY=1 b"


def test_reloading_sends_monotonic_usec(listener: tuple[socket.socket, str]) -> None:
    """reloading() sends RELOADING=1 with the current CLOCK_MONOTONIC in microseconds."""
    sock, path = listener
    before = time.monotonic_ns() // 1000
    systemd.Notifier.from_env({"NOTIFY_SOCKET": path}).reloading()
    after = time.monotonic_ns() // 1000
    first, second = recv(sock).split("\n")
    key, _, value = second.partition("=")
    assert (first, key) == ("RELOADING=1", "MONOTONIC_USEC")
    assert before <= int(value) <= after


def test_abstract_namespace_socket() -> None:
    """An "@name" NOTIFY_SOCKET reaches the Linux abstract-namespace socket "\\0name"."""
    name = f"postd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(RECV_TIMEOUT)
        notifier = systemd.Notifier.from_env({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "1"})
        notifier.ready()
        notifier.watchdog()
        assert [recv(sock), recv(sock)] == ["READY=1", "WATCHDOG=1"]


def test_without_notify_socket_everything_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    """No NOTIFY_SOCKET: disabled, no watchdog, and no socket is ever opened."""

    def no_socket(*args: object, **kwargs: object) -> socket.socket:
        raise AssertionError("a disabled Notifier opened a socket")

    monkeypatch.setattr(socket, "socket", no_socket)
    notifier = systemd.Notifier.from_env({"WATCHDOG_USEC": "120000000"})
    notifier.ready("x")
    notifier.status("x")
    notifier.watchdog()
    notifier.reloading()
    notifier.stopping()
    assert (notifier.enabled, notifier.watchdog_interval) == (False, None)


def test_enabled_with_a_socket(listener: tuple[socket.socket, str]) -> None:
    """A path NOTIFY_SOCKET enables the notifier."""
    _, path = listener
    assert systemd.Notifier.from_env({"NOTIFY_SOCKET": path}).enabled


@pytest.mark.parametrize(
    ("watchdog_env", "interval"),
    [
        ({"WATCHDOG_USEC": "120000000"}, 120.0),
        ({"WATCHDOG_USEC": "1500000"}, 1.5),
        ({"WATCHDOG_USEC": "120000000", "WATCHDOG_PID": "<self>"}, 120.0),
        ({"WATCHDOG_USEC": "120000000", "WATCHDOG_PID": "<other>"}, None),
        ({}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "two minutes"}, None),
        ({"WATCHDOG_USEC": "120000000", "WATCHDOG_PID": "nope"}, None),
    ],
)
def test_watchdog_interval_parsed(
    listener: tuple[socket.socket, str], watchdog_env: dict[str, str], interval: float | None
) -> None:
    """watchdog_interval is WATCHDOG_USEC in seconds, None when unset, invalid or not our pid."""
    _, path = listener
    pids = {"<self>": str(os.getpid()), "<other>": str(os.getpid() + 1)}
    env = {k: pids.get(v, v) for k, v in watchdog_env.items()} | {"NOTIFY_SOCKET": path}
    assert systemd.Notifier.from_env(env).watchdog_interval == interval


def test_watchdog_pid_of_another_process_sends_no_ping(listener: tuple[socket.socket, str]) -> None:
    """With WATCHDOG_PID naming another process, watchdog() sends nothing but other messages go."""
    sock, path = listener
    env = {
        "NOTIFY_SOCKET": path,
        "WATCHDOG_USEC": "120000000",
        "WATCHDOG_PID": str(os.getpid() + 1),
    }
    notifier = systemd.Notifier.from_env(env)
    notifier.watchdog()
    notifier.status("after")
    # Datagrams on one AF_UNIX socket keep their order: had a ping gone out, it would come first.
    assert recv(sock) == "STATUS=after"


def test_send_failure_never_raises_and_logs_once(tmp_path: Path) -> None:
    """A missing socket: no exception, one sd_notify_failed warning per outage."""
    notifier = systemd.Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    with capture_logs() as logs:
        notifier.ready()
        notifier.stopping()
    assert [(e["event"], e["log_level"]) for e in logs] == [("sd_notify_failed", "warning")]
    assert logs[0]["errno"] is not None


def test_full_receive_queue_does_not_block(listener: tuple[socket.socket, str]) -> None:
    """A listener that never reads fills its queue; further pings are dropped, not blocking."""
    sock, path = listener
    notifier = systemd.Notifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})
    with capture_logs() as logs:
        for _ in range(200):  # far beyond net.unix.max_dgram_qlen (default 10)
            notifier.watchdog()
    assert [e["event"] for e in logs] == ["sd_notify_failed"]
    assert recv(sock) == "WATCHDOG=1"


def test_warning_is_rearmed_after_a_successful_send(tmp_path: Path) -> None:
    """After a send succeeds again, the next failure is logged again."""
    path = str(tmp_path / "notify")
    notifier = systemd.Notifier.from_env({"NOTIFY_SOCKET": path})
    with capture_logs() as logs:
        notifier.status("down")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            sock.settimeout(RECV_TIMEOUT)
            notifier.status("up")
            assert recv(sock) == "STATUS=up"
        os.unlink(path)
        notifier.status("down again")
    assert [e["event"] for e in logs] == ["sd_notify_failed", "sd_notify_failed"]


def test_unsupported_socket_address_disables_notifier() -> None:
    """A NOTIFY_SOCKET that is neither a path nor @abstract (e.g. vsock:) disables the notifier."""
    with capture_logs() as logs:
        notifier = systemd.Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled
    assert [e["event"] for e in logs] == ["sd_notify_unsupported_socket"]
