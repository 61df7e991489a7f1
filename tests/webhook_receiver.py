"""A webhook receiver for tests: an HTTP/1.1 server on a free 127.0.0.1 port, in a thread, that
records every request (headers, raw body) and answers with the status its script says."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A sender that went away (killed, timed out) is part of the tests: stay quiet."""


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    answered: int

    @property
    def payload(self) -> Any:
        return json.loads(self.body)

    @property
    def event(self) -> str:
        return str(self.payload["event"])

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


class Receiver:
    """``status`` answers every request, unless ``script`` (a list of statuses, consumed in
    order) or ``respond`` (called with the request's index and headers) says otherwise."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.script: list[int] = []
        self.respond: Callable[[int, dict[str, str]], int] | None = None
        self.received: list[Received] = []
        self._lock = threading.Condition()
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            # shutdown() waits for serve_forever's next poll: 0.5 s by default
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.01},
            daemon=True,
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/hook"

    def _answer(self, headers: dict[str, str]) -> int:
        with self._lock:
            index = len(self.received)
            if self.script:
                return self.script.pop(0)
            if self.respond is not None:
                return self.respond(index, headers)
            return self.status

    def _record(self, item: Received) -> None:
        with self._lock:
            self.received.append(item)
            self._lock.notify_all()

    def wait_until(self, count: int, timeout: float = 10.0) -> bool:
        """Block until ``count`` requests have arrived (True) or ``timeout`` passed (False).
        From async code: ``await asyncio.to_thread(receiver.wait_until, n)``."""
        with self._lock:
            return self._lock.wait_for(lambda: len(self.received) >= count, timeout)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if len(body) < length:  # the sender went away mid-request: nothing arrived
                    self.close_connection = True
                    return
                headers = {k.lower(): v for k, v in self.headers.items()}
                status = receiver._answer(headers)
                receiver._record(Received(self.path, headers, body, status))
                reply = b"ok" if status < 300 else b"receiver says no"
                self.send_response(status)
                if status in (301, 302, 307, 308):
                    self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *_args: Any) -> None:
                return

        return Handler

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def events(self) -> list[str]:
        return [r.event for r in self.received]


def running(status: int = 200) -> Iterator[Receiver]:
    """A started receiver, stopped afterwards (use as a fixture body)."""
    receiver = Receiver(status).start()
    try:
        yield receiver
    finally:
        receiver.stop()
