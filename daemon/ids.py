"""Identifiers: 24 hex characters, time-ordered (4 bytes of seconds + 8 random bytes).

They look like the ids of the API document ("65f...") and sort by creation time, which is what
cursor pagination relies on.
"""

from __future__ import annotations

import os
import time


def new_id(now: float | None = None) -> str:
    seconds = int(time.time() if now is None else now)
    return f"{seconds & 0xFFFFFFFF:08x}{os.urandom(8).hex()}"
