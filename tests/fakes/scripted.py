"""A sandbox whose next publish calls follow a script: the failure modes the pipeline must handle.

It is the real sandbox (durable record, find_published) with faults injected in front of it, so
tests can assert what the "platform" really holds afterwards.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Set as AbstractSet
from datetime import datetime
from pathlib import Path
from typing import Any

from adapters import base, sandbox

# Script steps: an exception raised before the platform records anything, or one of these words.
PUBLISH = "publish"  # the platform accepts it
AMBIGUOUS_AFTER = "ambiguous_after"  # recorded at the platform, then the answer is lost (502)
AMBIGUOUS_BEFORE = "ambiguous_before"  # the answer is lost and the platform has nothing
HANG = "hang"  # never answers (until cancelled): a publish in flight at shutdown
GATED = "gated"  # publishes once the test opens ``adapter.gate``: a slow publish


class ScriptedAdapter(sandbox.SandboxAdapter):
    def __init__(self, state_path: Path, clock: Any, script: list[Any] | None = None) -> None:
        super().__init__(state_path, clock)
        self.script: deque[Any] = deque(script or [])
        self.calls = 0
        self.find_mode = "platform"  # | "unsupported" | "error"
        self.reported = base.PlatformLimits()
        self.gate = asyncio.Event()
        self.comment_script: deque[Any] = deque()  # the same steps, for post_comment
        self.comment_calls = 0

    async def publish(self, post: base.PostPayload) -> base.Published:
        self.calls += 1
        step = self.script.popleft() if self.script else PUBLISH
        if isinstance(step, BaseException):
            raise step
        if step == AMBIGUOUS_AFTER:
            await super().publish(post)
            raise base.AmbiguousError("502 after accept", http_status=502, excerpt="Bad Gateway")
        if step == AMBIGUOUS_BEFORE:
            raise base.AmbiguousError("read timeout", code="READ_TIMEOUT")
        if step == HANG:
            await asyncio.Event().wait()
        if step == GATED:
            await self.gate.wait()
        return await super().publish(post)

    async def post_comment(
        self, post: base.PostPayload, remote_id: str, message: str
    ) -> base.Comment:
        self.comment_calls += 1
        step = self.comment_script.popleft() if self.comment_script else PUBLISH
        if isinstance(step, BaseException):
            raise step
        if step == AMBIGUOUS_AFTER:
            await super().post_comment(post, remote_id, message)
            raise base.AmbiguousError("502 after accept", http_status=502, excerpt="Bad Gateway")
        return await super().post_comment(post, remote_id, message)

    async def find_published(
        self,
        post: base.PostPayload,
        since: datetime,
        exclude_remote_ids: AbstractSet[str] = frozenset(),
    ) -> base.Published | None:
        if self.find_mode == "unsupported":
            raise base.UnsupportedAction("this platform cannot list recent posts")
        if self.find_mode == "error":
            raise base.RetryableError("listing failed", code="UPSTREAM_503", http_status=503)
        return await super().find_published(post, since, exclude_remote_ids)

    def limits(self) -> base.PlatformLimits:
        return self.reported
