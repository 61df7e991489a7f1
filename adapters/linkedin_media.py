"""LinkedIn media for posts (platforms.md §3 (b), (c)): images through the Images API
(``initializeUpload``, then ``PUT`` to the returned ``uploadUrl``), one video through the Videos
API (``initializeUpload``, ``PUT`` each part to its pre-signed URL collecting the ETags,
``finalizeUpload``, then ``GET /rest/videos/{urn}`` until ``AVAILABLE``). An asset's URN is stored
in the :class:`adapters._progress.ProgressStore` the moment its upload is complete, and a later
try of the same post reuses it (a video is re-read for its status; one that vanished is uploaded
again, once)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import httpx

from adapters import _http, _progress, base
from adapters import linkedin_auth as auth

IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif")
IMAGE_MAX_BYTES = 10 * 1024 * 1024  # [U]
VIDEO_TYPES = ("video/mp4",)
VIDEO_MAX_BYTES = 500 * 1024 * 1024  # [U]


class Api(Protocol):
    """The adapter's authenticated ``/rest`` calls (LinkedIn headers, one refresh on 401)."""

    @property
    def client(self) -> httpx.AsyncClient: ...

    async def call(
        self,
        page_id: str,
        method: str,
        path: str,
        *,
        final: bool,
        what: str,
        headers: Mapping[str, str] | None = None,
        **request: Any,
    ) -> httpx.Response: ...

    async def json(self, page_id: str, method: str, path: str, **kwargs: Any) -> dict[str, Any]: ...

    async def account(self, page_id: str) -> auth.Account: ...


class Keys:
    """Progress keys of one post's content (an edited post uploads anew)."""

    def __init__(self, post: base.PostPayload) -> None:
        fp = post.fingerprint()[:16]
        self.sent = f"li_post_sent:{fp}"
        self.post = f"li_post:{fp}"
        self._asset = f"li_asset:{fp}"

    def asset(self, index: int) -> str:
        return f"{self._asset}:{index}"


class Media:
    """Uploads a post's media and answers the post's ``content``."""

    def __init__(
        self,
        api: Api,
        progress: _progress.ProgressStore,
        *,
        fetch: _http.MediaFetcher,
        now: _http.Now,
        sleep: _http.Sleep,
        poll_seconds: float,
        poll_max_seconds: float,
    ) -> None:
        self._api = api
        self._progress = progress
        self._fetch = fetch
        self._now = now
        self._sleep = sleep
        self._poll = poll_seconds
        self._poll_max = poll_max_seconds

    async def content(
        self, post: base.PostPayload, account: auth.Account, keys: Keys
    ) -> dict[str, Any]:
        if not post.media:
            return {}
        if post.media[0].kind == "video":
            return {"media": {"id": await self._ready_video(post, account, keys)}}
        urns = []
        for index, item in enumerate(post.media):
            urn = await self._progress.get(post.post_id, keys.asset(index))
            if urn is None:
                urn = await self._upload_image(post, account, item)
                await self._progress.put(post.post_id, keys.asset(index), urn)
            urns.append(urn)
        if len(urns) == 1:
            return {"media": {"id": urns[0]}}
        return {"multiImage": {"images": [{"id": urn} for urn in urns]}}

    async def _fetch_checked(
        self, item: base.MediaItem, limit: int, types: tuple[str, ...]
    ) -> _http.MediaBlob:
        blob = await self._fetch(item, limit)
        if blob.mime_type not in types:
            raise base.PermanentError(
                f"linkedin: {blob.mime_type} is not a supported {item.kind} type",
                code="UNSUPPORTED_MEDIA",
            )
        return blob

    async def _upload_image(
        self, post: base.PostPayload, account: auth.Account, item: base.MediaItem
    ) -> str:
        blob = await self._fetch_checked(item, IMAGE_MAX_BYTES, IMAGE_TYPES)
        made = await self._api.json(
            post.page_id,
            "POST",
            "/images",
            final=False,
            what="image init",
            params={"action": "initializeUpload"},
            json={"initializeUploadRequest": {"owner": account.author}},
        )
        value = made.get("value") or {}
        if not value.get("uploadUrl") or not value.get("image"):
            raise base.RetryableError("linkedin: image init without an upload", code="BAD_RESPONSE")
        token = (await self._api.account(post.page_id)).token  # refreshed by init, maybe
        response = await _http.send(
            self._api.client,
            "PUT",
            str(value["uploadUrl"]),
            final=False,
            what="image upload",
            content=blob.data,
            headers={"Authorization": f"Bearer {token}", "Content-Type": blob.mime_type},
        )
        if not response.is_success:
            raise auth.classify(response, final=False, now=self._now(), what="image upload")
        return str(value["image"])

    async def _ready_video(self, post: base.PostPayload, account: auth.Account, keys: Keys) -> str:
        """An AVAILABLE video: the stored one, or a new upload (once more if the stored one is
        gone)."""
        for _ in range(2):
            urn = await self._progress.get(post.post_id, keys.asset(0))
            if urn is None:
                urn = await self._upload_video(post, account, post.media[0])
                await self._progress.put(post.post_id, keys.asset(0), urn)
            if await self._wait_available(post, urn, keys):
                return urn
        raise base.RetryableError("linkedin: a new video vanished at once", code="VIDEO_GONE")

    async def _upload_video(
        self, post: base.PostPayload, account: auth.Account, item: base.MediaItem
    ) -> str:
        blob = await self._fetch_checked(item, VIDEO_MAX_BYTES, VIDEO_TYPES)
        request = {
            "owner": account.author,
            "fileSizeBytes": len(blob.data),
            "uploadCaptions": False,
            "uploadThumbnail": False,
        }
        made = await self._api.json(
            post.page_id,
            "POST",
            "/videos",
            final=False,
            what="video init",
            params={"action": "initializeUpload"},
            json={"initializeUploadRequest": request},
        )
        value = made.get("value") or {}
        instructions = value.get("uploadInstructions") or []
        if not value.get("video") or not instructions:
            raise base.RetryableError("linkedin: video init without an upload", code="BAD_RESPONSE")
        etags = [await self._upload_part(blob.data, part) for part in instructions]
        finalize = {
            "video": value["video"],
            "uploadToken": value.get("uploadToken") or "",
            "uploadedPartIds": etags,
        }
        await self._api.call(
            post.page_id,
            "POST",
            "/videos",
            final=False,
            what="video finalize",
            params={"action": "finalizeUpload"},
            json={"finalizeUploadRequest": finalize},
        )
        return str(value["video"])

    async def _upload_part(self, data: bytes, part: Any) -> str:
        """PUT one part to its pre-signed URL (no LinkedIn headers); its ETag, unquoted."""
        first, last = int(part["firstByte"]), int(part["lastByte"])
        response = await _http.send(
            self._api.client,
            "PUT",
            str(part["uploadUrl"]),
            final=False,
            what="video upload",
            content=data[first : last + 1],
            headers={"Content-Type": "application/octet-stream"},
        )
        if not response.is_success:
            raise auth.classify(response, final=False, now=self._now(), what="video upload")
        etag = response.headers.get("etag", "").strip().strip('"')
        if not etag:
            raise base.RetryableError(
                "linkedin: an uploaded part without ETag", code="BAD_RESPONSE"
            )
        return str(etag)

    async def _wait_available(self, post: base.PostPayload, urn: str, keys: Keys) -> bool:
        """True once the video is AVAILABLE; False when it is gone (upload again). PROCESSING is
        waited out up to ``media_poll_max_seconds`` (not a try), then RetryableError keeps the
        video for the next try; PROCESSING_FAILED is permanent."""
        waited = 0.0
        while True:
            try:
                video = await self._api.json(
                    post.page_id,
                    "GET",
                    f"/videos/{auth.enc(urn)}",
                    final=False,
                    what="video status",
                )
            except base.PermanentError as exc:
                if exc.http_status != 404:
                    raise
                await self._progress.delete(post.post_id, keys.asset(0))
                return False
            status = str(video.get("status") or "")
            if status == "AVAILABLE":
                return True
            if status == "PROCESSING_FAILED":
                await self._progress.delete(post.post_id, keys.asset(0))
                reason = video.get("processingFailureReason") or status
                raise base.PermanentError(
                    f"linkedin: video {urn} failed: {reason}", code="VIDEO_PROCESSING_FAILED"
                )
            if waited >= self._poll_max:
                raise base.RetryableError(
                    f"linkedin: video {urn} still {status} after {waited:.0f} s",
                    code="MEDIA_NOT_READY",
                    retry_after=self._poll * 10,
                )
            await self._sleep(self._poll)
            waited += self._poll
