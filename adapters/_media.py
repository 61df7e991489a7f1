"""What the adapters read of a media file's bytes themselves."""

from __future__ import annotations

import struct


def mp4_duration(data: bytes) -> float | None:
    """Seconds from an MP4/MOV ``mvhd`` box; ``None`` when there is none to read."""
    at = data.find(b"mvhd")
    if at < 4:
        return None
    try:
        version = data[at + 4]
        if version == 1:
            scale, length = struct.unpack_from(">IQ", data, at + 4 + 4 + 16)
        else:
            scale, length = struct.unpack_from(">II", data, at + 4 + 4 + 8)
    except (IndexError, struct.error):
        return None
    return length / scale if scale else None
