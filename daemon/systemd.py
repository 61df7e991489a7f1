"""sd_notify: tell systemd that postd is ready, alive, reloading or stopping.

Hand-written on purpose. The protocol (``man 3 sd_notify``) is one datagram of newline-separated
``KEY=VALUE`` lines sent to the AF_UNIX socket named by ``$NOTIFY_SOCKET``; that is a few lines of
socket code. The ``systemd-python`` binding would add a C extension that needs the libsystemd
headers at install time, for nothing we use.

Behaviour the daemon relies on:

- Without ``$NOTIFY_SOCKET`` (a terminal, a test, a container) every method is a no-op that opens
  no socket.
- Sending never blocks and never raises: the socket is non-blocking, and a failed send is logged
  once (event ``sd_notify_failed``) until a later send succeeds. Losing a notification must not
  take the daemon down; a lost watchdog ping is what systemd's restart is for.
- Like libsystemd, each message goes out on a fresh socket, so there is no descriptor to leak,
  close or share across a fork.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import structlog

log = structlog.get_logger(__name__)


class Notifier:
    """Sends sd_notify messages to the service manager, or nothing when not run by one."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        """``address`` is ``$NOTIFY_SOCKET`` as systemd sets it (a path or ``@abstract``)."""
        self._address = _socket_address(address) if address else None
        self._watchdog_usec = watchdog_usec if self._address is not None else None
        self._failing = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        """Read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` as libsystemd does.

        The watchdog counts as enabled only when ``WATCHDOG_USEC`` is a positive integer and
        ``WATCHDOG_PID`` is unset or names this process (a child that inherited the environment
        must not ping on its parent's behalf).
        """
        return cls(environ.get("NOTIFY_SOCKET") or None, _watchdog_usec(environ))

    @property
    def enabled(self) -> bool:
        """True when a service manager is listening (``$NOTIFY_SOCKET`` was set and usable)."""
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """The watchdog timeout in seconds (raw ``WATCHDOG_USEC``), or None when disabled.

        systemd restarts the unit when no ping arrives within this time; ping at half of it.
        """
        return None if self._watchdog_usec is None else self._watchdog_usec / 1_000_000

    def ready(self, status: str | None = None) -> None:
        """Start-up (or a reload) is complete: ``READY=1``, with an optional status line."""
        self._send("READY=1" if status is None else f"READY=1\nSTATUS={_one_line(status)}")

    def stopping(self) -> None:
        """Shutdown has begun: ``STOPPING=1``."""
        self._send("STOPPING=1")

    def status(self, text: str) -> None:
        """A free-form status line for ``systemctl status`` (newlines are flattened)."""
        self._send(f"STATUS={_one_line(text)}")

    def watchdog(self) -> None:
        """Keep-alive ping ``WATCHDOG=1``; a no-op when the watchdog is not enabled for us."""
        if self._watchdog_usec is not None:
            self._send("WATCHDOG=1")

    def reloading(self) -> None:
        """A reload has begun: ``RELOADING=1`` + ``MONOTONIC_USEC``; call :meth:`ready` after."""
        # systemd compares MONOTONIC_USEC with CLOCK_MONOTONIC, which time.monotonic reads on Linux.
        self._send(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def _send(self, message: str) -> None:
        if self._address is None:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                sock.sendto(message.encode("utf-8", "replace"), self._address)
        except OSError as exc:
            if not self._failing:
                self._failing = True
                log.warning(
                    "sd_notify_failed",
                    socket=_printable(self._address),
                    message=message.split("\n", 1)[0],
                    error=exc.strerror or str(exc),
                    errno=exc.errno,
                )
            return
        self._failing = False


def _socket_address(value: str) -> str | None:
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]  # Linux abstract namespace
    # systemd >= 254 may also hand out "vsock:CID:PORT"; postd does not run in such VMs.
    log.warning("sd_notify_unsupported_socket", socket=value)
    return None


def _watchdog_usec(environ: Mapping[str, str]) -> int | None:
    raw = environ.get("WATCHDOG_USEC")
    if not raw:
        return None
    pid = environ.get("WATCHDOG_PID")
    try:
        usec = int(raw)
        if pid and int(pid) != os.getpid():
            return None
    except ValueError:
        log.warning("sd_watchdog_env_invalid", watchdog_usec=raw, watchdog_pid=pid)
        return None
    return usec if usec > 0 else None


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())


def _printable(address: str) -> str:
    return "@" + address[1:] if address.startswith("\0") else address
