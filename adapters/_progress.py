"""Where a two-phase adapter keeps what it must not lose between tries of one post: the
intermediate object the platform created (an Instagram container id) and the fact that the
irreversible call was sent. The composition root injects a store over the database
(``daemon/progress.py``); :class:`MemoryProgress` serves processes that only validate, and tests.

Keys are the adapter's own (``"ig_container:<fingerprint>"``...); values are short strings. A
``put`` is durable when it returns: an adapter calls it the moment the platform answers, before
its next request.
"""

from __future__ import annotations

from typing import Protocol


class ProgressStore(Protocol):
    """Per-post, per-key progress of a multi-step publish."""

    async def get(self, post_id: str, key: str) -> str | None: ...

    async def put(self, post_id: str, key: str, value: str) -> None: ...

    async def delete(self, post_id: str, key: str) -> None: ...


class MemoryProgress:
    """A :class:`ProgressStore` in memory (lost with the process); ``puts`` logs every write."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], str] = {}
        self.puts: list[tuple[str, str, str]] = []

    async def get(self, post_id: str, key: str) -> str | None:
        return self.values.get((post_id, key))

    async def put(self, post_id: str, key: str, value: str) -> None:
        self.values[(post_id, key)] = value
        self.puts.append((post_id, key, value))

    async def delete(self, post_id: str, key: str) -> None:
        self.values.pop((post_id, key), None)
