"""X's chunked video upload (platforms.md §5 (c), the dedicated v2 endpoints of OpenAPI v2.159):

1. ``POST /2/media/upload/initialize`` JSON ``{"media_type", "total_bytes", "media_category":
   "tweet_video"}`` -> ``data.id``;
2. ``POST /2/media/upload/{id}/append`` multipart ``media`` (one chunk) + ``segment_index``
   (0-999), chunks of at most :data:`CHUNK_BYTES` (configurable);
3. ``POST /2/media/upload/{id}/finalize`` -> ``data.processing_info`` when X still processes;
4. while processing: ``GET /2/media/upload?command=STATUS&media_id=<id>``, waiting
   ``check_after_secs`` through the injected ``sleep`` between polls (waits are not tries: after
   ``media_poll_max_seconds`` a RetryableError keeps the media id for the next try).

None of these calls publishes anything, so 5xx and timeouts are RetryableError; ``failed``
processing is a PermanentError named after X's ``processing_info.error.name`` [U] and forgets the
upload. A finalized media id is remembered per (post, media) until X's ``expires_after_secs``, so
a later try (after a failed post call, or a poll that ran out of time) does not upload again.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from adapters import _http, base
from adapters._media import mp4_duration

VIDEO_TYPES = ("video/mp4", "video/quicktime")
VIDEO_MAX_BYTES = 512 * 1024 * 1024
VIDEO_SECONDS = (0.5, 140.0)
CHUNK_BYTES = 4 * 1024 * 1024  # client libraries use 1-4 MB [C3]
MAX_SEGMENTS = 1000  # segment_index 0-999 [C]
UPLOAD = "/2/media/upload"

# XAdapter._call: one authenticated request, non-2xx raised as typed errors
Call = Callable[..., Awaitable[httpx.Response]]


@dataclass
class Upload:
    """A finalized video: its media id, whether X finished processing it, and until when X
    keeps it (epoch seconds; ``None`` when X did not say)."""

    media_id: str
    ready: bool
    expires_at: float | None


def _data(response: httpx.Response, what: str) -> dict[str, Any]:
    data = _http.json_object(response, final=False, what=what).get("data")
    return data if isinstance(data, dict) else {}


class VideoUploader:
    def __init__(
        self,
        call: Call,
        fetch: _http.MediaFetcher,
        now: _http.Now,
        sleep: _http.Sleep,
        uploads: _http.BoundedCache,
        *,
        poll_seconds: float,
        poll_max_seconds: float,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        self._call = call
        self._fetch = fetch
        self._now = now
        self._sleep = sleep
        self._uploads = uploads
        self._poll = poll_seconds
        self._poll_max = poll_max_seconds
        self._chunk = max(int(chunk_bytes), 1)

    async def upload(self, page_id: str, key: str, item: base.MediaItem) -> str:
        """The media id of ``item`` (uploaded and processed), from the cache when it is there."""
        found = self._uploads.get(key)
        cached = found if isinstance(found, Upload) else None
        if cached is not None and (cached.expires_at or math.inf) <= self._now().timestamp():
            del self._uploads[key]
            cached = None
        if cached is None:
            blob = await self._fetch(item, VIDEO_MAX_BYTES)
            check(blob)
            cached, info = await self._send(page_id, blob)
            self._uploads[key] = cached
            if not cached.ready:
                await self._processed(page_id, key, cached, info)
        elif not cached.ready:
            await self._processed(page_id, key, cached, None)
        return cached.media_id

    async def _send(self, page_id: str, blob: _http.MediaBlob) -> tuple[Upload, dict[str, Any]]:
        total = len(blob.data)
        body = {"media_type": blob.mime_type, "total_bytes": total, "media_category": "tweet_video"}
        init = _data(
            await self._call(
                page_id, "POST", UPLOAD + "/initialize", final=False, what="media init", json=body
            ),
            "media init",
        )
        media_id = str(init.get("id") or "")
        if not media_id:
            raise base.RetryableError("x: media init without an id", code="BAD_RESPONSE")
        chunk = max(self._chunk, math.ceil(total / MAX_SEGMENTS))
        for index, start in enumerate(range(0, total, chunk)):
            await self._call(
                page_id,
                "POST",
                f"{UPLOAD}/{media_id}/append",
                final=False,
                what="media append",
                data={"segment_index": str(index)},
                files={"media": ("chunk", blob.data[start : start + chunk], blob.mime_type)},
            )
        done = _data(
            await self._call(
                page_id, "POST", f"{UPLOAD}/{media_id}/finalize", final=False, what="media finalize"
            ),
            "media finalize",
        )
        seconds = done.get("expires_after_secs") or init.get("expires_after_secs")
        expires = self._now().timestamp() + float(seconds) if seconds else None
        info = done.get("processing_info")
        info = info if isinstance(info, dict) else {}
        upload = Upload(media_id, info.get("state") in (None, "succeeded"), expires)
        return upload, info

    async def _processed(
        self, page_id: str, key: str, upload: Upload, info: dict[str, Any] | None
    ) -> None:
        """Poll STATUS until X says succeeded or failed; each wait is X's ``check_after_secs``
        (the configured poll interval when it names none). ``info``: FINALIZE's answer, when
        this is the first wait."""
        waited = 0.0
        while True:
            if info is not None:
                state = info.get("state")
                if state == "failed":
                    del self._uploads[key]
                    error = info.get("error")
                    error = error if isinstance(error, dict) else {}
                    name = str(error.get("name") or "MEDIA_PROCESSING_FAILED")
                    message = error.get("message") or "processing failed"
                    raise base.PermanentError(
                        f"x: video {upload.media_id} processing failed: {message}", code=name
                    )
                if state in (None, "succeeded"):
                    upload.ready = True
                    return
                wait = float(info.get("check_after_secs") or self._poll)
                if waited >= self._poll_max:
                    raise base.RetryableError(
                        f"x: video {upload.media_id} still {state} after {waited:.0f} s",
                        code="MEDIA_NOT_READY",
                        retry_after=max(wait, self._poll),
                    )
                await self._sleep(wait)
                waited += wait
            response = await self._call(
                page_id,
                "GET",
                UPLOAD,
                final=False,
                what="media status",
                params={"command": "STATUS", "media_id": upload.media_id},
            )
            found = _data(response, "media status").get("processing_info")
            info = found if isinstance(found, dict) else {}


def check(blob: _http.MediaBlob) -> None:
    """The fetched video's type and, when its ``mvhd`` says, its duration (platforms.md §5)."""
    if blob.mime_type not in VIDEO_TYPES:
        raise base.PermanentError(
            f"x: {blob.mime_type} is not a supported video type (MP4 or QuickTime)",
            code="UNSUPPORTED_MEDIA",
        )
    seconds = mp4_duration(blob.data)
    shortest, longest = VIDEO_SECONDS
    if seconds is not None and not shortest <= seconds <= longest:
        raise base.PermanentError(
            f"x: the video lasts {seconds:.1f} s; X takes {shortest}-{longest:.0f} s",
            code="VIDEO_DURATION",
        )
