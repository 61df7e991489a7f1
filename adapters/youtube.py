"""YouTube (Data API v3; platforms.md §6). A post is one video: its title is ``options["title"]``
or the post's first line (shortened to 100 characters), its description the post's text.

Publishing is a resumable upload:

1. ``POST /upload/youtube/v3/videos?uploadType=resumable&part=snippet,status`` with the video
   resource as JSON answers a session URI in ``Location``. It is written to the injected
   :class:`adapters._progress.ProgressStore` before anything else happens, so a later try (after a
   crash, a timeout, a 5xx) goes on with the same session instead of uploading a second video.
2. ``PUT <session>`` in chunks of a multiple of 256 KiB with ``Content-Range: bytes a-b/total``;
   ``308 Resume Incomplete`` with ``Range: bytes=0-N`` says to go on at N+1. A try that finds a
   stored session first asks where it stands (``PUT``, ``Content-Range: bytes */total``) and
   resumes from the offset YouTube reports.
3. The final chunk is the irreversible call (its 200/201 creates the video); a mark is stored
   before it is sent. When its answer is lost (timeout, 5xx) the session is asked again: a
   completed upload answers 200/201 with the video; 308 proves nothing was created (retryable);
   anything else is :class:`base.AmbiguousError`.

A session that expired (404/410) starts a new upload only when no final chunk is in doubt (see
:meth:`YouTubeAdapter._session_gone`).

Quota (10,000 units a day per Google Cloud project, reset at midnight Pacific time; an upload
costs 1,600 units, or one of 100 daily ``videos.insert`` calls in the current docs):
``quotaExceeded`` waits for the reset, and no request is made before it
(:mod:`adapters.youtube_client`). :meth:`YouTubeAdapter.limits` reports how many uploads a quota
day held when it ran out (nothing before that happened).

Credentials (from the Google OAuth connect flow, :mod:`adapters.youtube_oauth`):
``access_token``, ``refresh_token``, ``expires_at`` (epoch seconds), ``channel_id``,
``channel_title``. Access tokens last an hour; :mod:`adapters.youtube_client` refreshes them
five minutes before expiry and once after a 401, then raises AuthError.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx

from adapters import _http, _progress, base, youtube_client
from adapters import youtube_oauth as oauth

UPLOAD_PATH = "/upload/youtube/v3/videos"
API = oauth.API
CHUNK_UNIT = 256 * 1024
DEFAULT_CHUNK = 32 * CHUNK_UNIT  # 8 MiB
VIDEO_MAX_BYTES = 1024**3  # held in memory while uploading; YouTube itself takes 256 GB
MAX_TITLE = 100
MAX_DESCRIPTION_BYTES = 5000
PAGE_SIZE = 50
MAX_PAGES = 4
FIND_SKEW = timedelta(minutes=2)
_RANGE = re.compile(r"bytes=0-(\d+)")


def title_of(post: base.PostPayload) -> str:
    """``options["title"]``, else the first non-blank line, shortened to 100 characters."""
    given = post.options.get("title")
    if isinstance(given, str) and given.strip():
        return given.strip()
    line = next((ln.strip() for ln in (post.message or "").splitlines() if ln.strip()), "")
    return line if len(line) <= MAX_TITLE else line[: MAX_TITLE - 1].rstrip() + "…"


def watch_url(video_id: str) -> str:
    return f"https://www.youtube.com/watch?v={video_id}"


def _collapse(text: Any) -> str:
    return " ".join(str(text or "").split())


class _SessionGone(Exception):
    """The upload session answered 404/410."""


@dataclass(frozen=True, slots=True)
class _Where:
    """What a status query found: the video (complete), or the next offset to send."""

    video: dict[str, Any] | None = None
    offset: int = 0


class _Keys:
    """Progress keys of one post's content (an edited post is a new upload)."""

    def __init__(self, post: base.PostPayload) -> None:
        fp = post.fingerprint()[:16]
        self.session = f"yt_session:{fp}"
        self.final = f"yt_final_sent:{fp}"
        self.video = f"yt_video:{fp}"


class YouTubeAdapter:
    """The platform ``"youtube"``; implements :class:`adapters.base.Adapter`."""

    platform: str = "youtube"

    def __init__(
        self,
        credentials: _http.CredentialStore,
        progress: _progress.ProgressStore,
        *,
        now: _http.Now,
        app: oauth.OAuthApp,
        fetch_media: _http.MediaFetcher = _http.no_media,
        api_base: str = oauth.PRODUCTION_API,
        timeouts: _http.Timeouts | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        chunk_bytes: int = DEFAULT_CHUNK,
        video_max_bytes: int = VIDEO_MAX_BYTES,
    ) -> None:
        if chunk_bytes <= 0 or chunk_bytes % CHUNK_UNIT:
            raise ValueError(f"chunk_bytes must be a positive multiple of {CHUNK_UNIT}")
        self._progress = progress
        self._now = now
        self._fetch = fetch_media
        self._chunk = chunk_bytes
        self._max_bytes = video_max_bytes
        self._uploads_playlist: dict[str, str] = {}  # page id -> uploads playlist id
        self._api = youtube_client.GoogleClient(
            credentials,
            now=now,
            app=app,
            api_base=api_base,
            timeouts=timeouts or _http.Timeouts(),
            transport=transport,
        )

    # --- publishing ---------------------------------------------------------------------------

    async def publish(self, post: base.PostPayload) -> base.Published:
        problems = self.validate(post)
        if problems:
            raise base.PermanentError("; ".join(problems), code="INVALID_POST")
        self._api.check_quota()
        keys = _Keys(post)
        done = await self._progress.get(post.post_id, keys.video)
        if done:  # uploaded by an earlier try whose answer the daemon did not record
            return base.Published(done, watch_url(done), self._now())
        blob = await self._fetch(post.media[0], self._max_bytes)
        mime = _http.sniff_mime(blob.data, blob.mime_type)
        if not (mime.startswith("video/") or mime == "application/octet-stream"):
            raise base.PermanentError(f"youtube: {mime} is not a video", code="UNSUPPORTED_MEDIA")
        if not blob.data:
            raise base.PermanentError("youtube: the video is empty", code="EMPTY_VIDEO")
        for _ in range(2):  # a second round only after an expired session
            session = await self._progress.get(post.post_id, keys.session)
            try:
                if session is None:
                    session = await self._start(post, keys, len(blob.data), mime)
                    video = await self._send(post, keys, session, blob.data, mime, 0)
                else:
                    where = await self._query(post.page_id, session, len(blob.data), final=False)
                    await self._progress.delete(post.post_id, keys.final)  # answered: not lost
                    video = where.video or await self._send(
                        post, keys, session, blob.data, mime, where.offset
                    )
            except _SessionGone:
                found = await self._session_gone(post, keys)
                if found is not None:
                    return found
                continue
            return await self._finish(post, keys, video)
        raise base.RetryableError("youtube: a new upload session expired at once", code="EXPIRED")

    async def _session_gone(self, post: base.PostPayload, keys: _Keys) -> base.Published | None:
        """A session that answers 404/410 may be restarted only if no final chunk is in doubt:
        its 200/201 would have created the video, which the vanished session can no longer
        report. With the mark stored, the uploads playlist is searched; a video not found there
        fails permanently (a duplicate upload is worse than a post an operator re-schedules)."""
        sent_at = await self._progress.get(post.post_id, keys.final)
        if sent_at is None:  # nothing irreversible happened: a new session is safe
            await self._progress.delete(post.post_id, keys.session)
            return None
        since = _http.parse_time(sent_at, self._now()) - FIND_SKEW
        found = await self.find_published(post, since)
        if found is None:
            raise base.PermanentError(
                "youtube: the upload session vanished after its final chunk was sent and the"
                " video is not among the channel's uploads; not uploading it again",
                code="SESSION_GONE_AFTER_FINAL",
            )
        await self._progress.put(post.post_id, keys.video, found.remote_id)
        return found

    async def _start(self, post: base.PostPayload, keys: _Keys, total: int, mime: str) -> str:
        """A new upload session; its URI is stored before it is used."""
        resource = {
            "snippet": {"title": title_of(post), "description": post.message or ""},
            "status": {"privacyStatus": "public"},
        }
        response = await self._api.request(
            post.page_id,
            "POST",
            self._api.api_base + UPLOAD_PATH,
            final=False,
            what="upload session",
            params={"uploadType": "resumable", "part": "snippet,status"},
            headers={
                "Content-Type": "application/json; charset=UTF-8",
                "X-Upload-Content-Length": str(total),
                "X-Upload-Content-Type": mime,
            },
            content=json.dumps(resource, ensure_ascii=False).encode("utf-8"),
        )
        if not response.is_success:
            raise self._api.error(response, final=False, what="upload session")
        location = str(response.headers.get("location") or "")
        if not location:
            raise _http.unreadable(response, final=False, what="youtube upload session")
        await self._progress.put(post.post_id, keys.session, location)
        return location

    async def _query(self, page_id: str, session: str, total: int, *, final: bool) -> _Where:
        """Where the upload stands (``Content-Range: bytes */total``); _SessionGone on 404/410."""
        response = await self._api.request(
            page_id,
            "PUT",
            session,
            final=final,
            what="upload status",
            headers={"Content-Range": f"bytes */{total}"},
        )
        return self._where(response, final=final, what="upload status")

    def _where(self, response: httpx.Response, *, final: bool, what: str) -> _Where:
        status = response.status_code
        if status in (200, 201):
            return _Where(video=_http.json_object(response, final=True, what=f"youtube {what}"))
        if status == 308:
            match = _RANGE.fullmatch(response.headers.get("range", "").strip())
            return _Where(offset=int(match.group(1)) + 1 if match else 0)
        if status in (404, 410):
            raise _SessionGone
        raise self._api.error(response, final=final, what=what)

    async def _send(
        self,
        post: base.PostPayload,
        keys: _Keys,
        session: str,
        data: bytes,
        mime: str,
        offset: int,
    ) -> dict[str, Any]:
        """The bytes from ``offset`` on, chunk by chunk; the video resource at the end."""
        while True:
            where = await self._put_chunk(post, keys, session, data, mime, offset)
            if where.video is not None:
                return where.video
            if where.offset <= offset:
                raise base.RetryableError(
                    f"youtube: the upload did not advance past byte {where.offset}",
                    code="UPLOAD_STALLED",
                )
            offset = where.offset

    async def _put_chunk(
        self,
        post: base.PostPayload,
        keys: _Keys,
        session: str,
        data: bytes,
        mime: str,
        offset: int,
    ) -> _Where:
        """One chunk. The last one is marked as sent first; any answer but a video (or a lost
        one) proves it created nothing, and the mark goes."""
        total = len(data)
        end = min(offset + self._chunk, total)
        final = end == total
        if final:
            await self._progress.put(post.post_id, keys.final, self._now().isoformat())
        try:
            response = await self._api.request(
                post.page_id,
                "PUT",
                session,
                final=final,
                what="upload",
                headers={
                    "Content-Range": f"bytes {offset}-{end - 1}/{total}",
                    "Content-Type": mime,
                },
                content=data[offset:end],
            )
            if final and response.status_code >= 500:  # 503 included: maybe created
                cause = self._api.error(response, final=True, what="upload")
                raise base.AmbiguousError(
                    cause.message,
                    code=cause.code,
                    http_status=cause.http_status,
                    excerpt=cause.excerpt,
                )
            where = self._where(response, final=False, what="upload")
        except base.AmbiguousError as exc:  # sent and the answer lost (or no video in a 2xx)
            return _Where(video=await self._recheck(post, keys, session, total, exc))
        except (_SessionGone, base.AdapterError):
            if final:
                await self._progress.delete(post.post_id, keys.final)
            raise
        if final and where.video is None:
            await self._progress.delete(post.post_id, keys.final)
        return where

    async def _recheck(
        self,
        post: base.PostPayload,
        keys: _Keys,
        session: str,
        total: int,
        cause: base.AdapterError,
    ) -> dict[str, Any]:
        """The final chunk's answer was lost: ask the session before calling it ambiguous."""
        try:
            where = await self._query(post.page_id, session, total, final=True)
        except (base.AdapterError, _SessionGone) as exc:
            raise base.AmbiguousError(
                f"{cause.message}; the session could not tell either",
                code=cause.code,
                http_status=cause.http_status,
                excerpt=cause.excerpt,
            ) from exc
        if where.video is not None:
            return where.video
        await self._progress.delete(post.post_id, keys.final)
        raise base.RetryableError(
            f"{cause.message}; the session holds {where.offset} of {total} bytes (resumed next)",
            code="UPLOAD_INCOMPLETE",
            http_status=cause.http_status,
        )

    async def _finish(
        self, post: base.PostPayload, keys: _Keys, video: Mapping[str, Any]
    ) -> base.Published:
        if not video.get("id"):
            raise base.AmbiguousError("youtube: a video without an id", code="BAD_RESPONSE")
        video_id = str(video["id"])
        await self._progress.put(post.post_id, keys.video, video_id)
        await self._progress.delete(post.post_id, keys.session)
        await self._progress.delete(post.post_id, keys.final)
        self._api.note_upload()
        snippet = video.get("snippet") or {}
        when = _http.parse_time(snippet.get("publishedAt"), self._now())
        return base.Published(video_id, watch_url(video_id), when)

    # --- reconciliation -----------------------------------------------------------------------

    async def _uploads(self, page_id: str) -> str:
        if page_id not in self._uploads_playlist:
            data = await self._api.json(
                page_id,
                "GET",
                API + "/channels",
                final=False,
                what="channel",
                params={"part": "contentDetails", "mine": "true"},
            )
            items = data.get("items") or [{}]
            details = items[0].get("contentDetails") or {}
            uploads = (details.get("relatedPlaylists") or {}).get("uploads")
            if not uploads:
                raise base.RetryableError("youtube: no uploads playlist", code="BAD_RESPONSE")
            self._uploads_playlist[page_id] = str(uploads)
        return self._uploads_playlist[page_id]

    async def find_published(
        self,
        post: base.PostPayload,
        since: datetime,
        exclude_remote_ids: AbstractSet[str] = frozenset(),
    ) -> base.Published | None:
        """The channel's uploads playlist, newest first [U], by title and description."""
        playlist = await self._uploads(post.page_id)
        title, text = _collapse(title_of(post)), _collapse(post.message)
        params: dict[str, Any] = {
            "part": "snippet,contentDetails",
            "playlistId": playlist,
            "maxResults": PAGE_SIZE,
        }
        for _ in range(MAX_PAGES):
            data = await self._api.json(
                post.page_id,
                "GET",
                API + "/playlistItems",
                final=False,
                what="list uploads",
                params=params,
            )
            reached_older = False
            for item in data.get("items") or []:
                snippet = item.get("snippet") or {}
                details = item.get("contentDetails") or {}
                video_id = str(details.get("videoId") or "")
                when = _http.parse_time(
                    details.get("videoPublishedAt") or snippet.get("publishedAt"), self._now()
                )
                if when < since:
                    reached_older = True
                    continue
                if (
                    video_id
                    and video_id not in exclude_remote_ids
                    and _collapse(snippet.get("title")) == title
                    and _collapse(snippet.get("description")) == text
                ):
                    return base.Published(video_id, watch_url(video_id), when)
            token = data.get("nextPageToken")
            if reached_older or not token:
                return None
            params["pageToken"] = token
        raise base.UnsupportedAction(f"youtube: more than {PAGE_SIZE * MAX_PAGES} uploads since")

    # --- comments -----------------------------------------------------------------------------

    async def post_comment(
        self, post: base.PostPayload, remote_id: str, message: str
    ) -> base.Comment:
        """``commentThreads.insert``: a top-level comment on the video."""
        page = await self._api.page(post.page_id)
        body = {
            "snippet": {
                "channelId": page.creds["channel_id"],
                "videoId": remote_id,
                "topLevelComment": {"snippet": {"textOriginal": message}},
            }
        }
        thread = await self._api.json(
            post.page_id,
            "POST",
            API + "/commentThreads",
            final=True,
            what="comment",
            params={"part": "snippet"},
            json=body,
        )
        top = (thread.get("snippet") or {}).get("topLevelComment") or {}
        if not top.get("id"):
            raise base.AmbiguousError("youtube: a comment without an id", code="BAD_RESPONSE")
        return self._comment(top, remote_id, None)

    async def reply_to_comment(
        self, post: base.PostPayload, comment_id: str, message: str
    ) -> base.Comment:
        """``comments.insert`` with ``parentId``."""
        made = await self._api.json(
            post.page_id,
            "POST",
            API + "/comments",
            final=True,
            what="reply",
            params={"part": "snippet"},
            json={"snippet": {"parentId": comment_id, "textOriginal": message}},
        )
        if not made.get("id"):
            raise base.AmbiguousError("youtube: a reply without an id", code="BAD_RESPONSE")
        video = str((made.get("snippet") or {}).get("videoId") or "")
        return self._comment(made, video, comment_id)

    async def list_comments(
        self, post: base.PostPayload, remote_id: str, since: datetime | None = None
    ) -> list[base.Comment]:
        """``commentThreads.list`` with their replies; threads with more replies than the list
        carries [C3: about five] get theirs from ``comments.list?parentId``."""
        params: dict[str, Any] = {
            "part": "snippet,replies",
            "videoId": remote_id,
            "maxResults": 100,
            "order": "time",
            "textFormat": "plainText",
        }
        comments: list[base.Comment] = []
        for _ in range(MAX_PAGES):
            data = await self._api.json(
                post.page_id,
                "GET",
                API + "/commentThreads",
                final=False,
                what="list comments",
                params=params,
            )
            for thread in data.get("items") or []:
                snippet = thread.get("snippet") or {}
                top = snippet.get("topLevelComment") or {}
                comments.append(self._comment(top, remote_id, None))
                replies = (thread.get("replies") or {}).get("comments") or []
                if int(snippet.get("totalReplyCount") or 0) > len(replies):
                    replies = await self._replies(post.page_id, str(top.get("id")))
                comments += [self._comment(r, remote_id, str(top.get("id"))) for r in replies]
            token = data.get("nextPageToken")
            if not token:
                break
            params["pageToken"] = token
        if since is not None:
            comments = [c for c in comments if c.created_at >= since]
        return sorted(comments, key=lambda c: c.created_at)

    async def _replies(self, page_id: str, parent: str) -> list[Any]:
        data = await self._api.json(
            page_id,
            "GET",
            API + "/comments",
            final=False,
            what="list replies",
            params={"part": "snippet", "parentId": parent, "maxResults": 100},
        )
        return list(data.get("items") or [])

    def _comment(self, item: Any, video_id: str, parent: str | None) -> base.Comment:
        if not isinstance(item, dict) or not item.get("id"):
            raise base.RetryableError("youtube: a comment without an id", code="BAD_RESPONSE")
        snippet = item.get("snippet") or {}
        channel_url = str(snippet.get("authorChannelUrl") or "")
        handle = channel_url.rsplit("/@", 1)[1] if "/@" in channel_url else None
        return base.Comment(
            id=str(item["id"]),
            post_remote_id=video_id,
            # textOriginal only reaches the comment's author; textDisplay is asked as plain text
            message=str(snippet.get("textOriginal") or snippet.get("textDisplay") or ""),
            author_name=snippet.get("authorDisplayName"),
            author_username=handle,
            created_at=_http.parse_time(snippet.get("publishedAt"), self._now()),
            parent_id=parent,
        )

    # --- the rest of the contract -------------------------------------------------------------

    async def refresh_credentials(self, credentials: Mapping[str, str]) -> Mapping[str, str]:
        """A new access token from ``refresh_token`` (Google keeps the refresh token)."""
        return await self._api.refresh_credentials(credentials)

    def limits(self) -> base.PlatformLimits:
        """Uploads per day: the most a quota day held when ``quotaExceeded`` came (a day whose
        quota other calls ate must not lock the pace below what a day can take); unknown until
        then."""
        return base.PlatformLimits(per_24h=self._api.day_capacity)

    def validate(self, post: base.PostPayload) -> list[str]:
        problems = []
        if not post.media:
            problems.append("a YouTube post needs a video (there are no text or photo posts)")
        elif len(post.media) > 1 or post.media[0].kind != "video":
            problems.append("a YouTube post is exactly one video")
        title, description = title_of(post), post.message or ""
        given = post.options.get("title")
        if not title:
            problems.append("a YouTube video needs a title: the post's first line or a title")
        elif isinstance(given, str) and len(title) > MAX_TITLE:
            problems.append(f"title is {len(title)} characters; YouTube allows {MAX_TITLE}")
        size = len(description.encode("utf-8"))
        if size > MAX_DESCRIPTION_BYTES:
            problems.append(f"description is {size} bytes; YouTube allows {MAX_DESCRIPTION_BYTES}")
        if any(c in title + description for c in "<>"):
            problems.append("YouTube does not allow < or > in a title or description")
        return problems

    async def aclose(self) -> None:
        await self._api.aclose()
