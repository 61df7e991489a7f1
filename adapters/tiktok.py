"""TikTok (Content Posting API, Direct Post; platforms.md §4). Wire rules live in
:mod:`adapters.tiktok_api`.

A post is one video (FILE_UPLOAD: postd fetches the bytes through the injected fetcher and
uploads them) or up to 35 photos (PULL_FROM_URL: TikTok fetches them from their public URLs).
There are no text-only posts. Publishing:

0. ``POST /v2/post/publish/creator_info/query/``: the privacy levels the creator may use, the
   longest video they may post, their @username (for permalinks); errors here (a creator who
   may not post now) stop the post before anything is created.
1. ``POST /v2/post/publish/video/init/`` (or ``/content/init/`` for photos), the final call: it
   creates the post that will publish, and TikTok has no idempotency key, so its timeouts and
   5xx are ambiguous. Its ``publish_id`` goes to the injected ProgressStore the moment it
   returns, before any upload.
2. ``PUT <upload_url>`` chunk by chunk with ``Content-Range``; a mark is stored when done.
3. ``POST /v2/post/publish/status/fetch/`` until ``PUBLISH_COMPLETE`` (polls wait through the
   injected ``sleep`` and are not tries; past ``media_poll_max_seconds`` a RetryableError keeps
   the publish for the next try). ``FAILED`` is classified by its ``fail_reason``.

A try that finds a stored ``publish_id`` never inits again: it polls that publish (and uploads
to its ``upload_url`` if the upload was cut short). Reconciliation (:meth:`find_published`)
asks the stored publish first; without one (the init went unanswered) it lists the account's
public videos. A FILE_UPLOAD init that went unanswered cannot publish anything without its
bytes, so "not found" is then the truth.

TikTok has no API to post or read comments: the comment methods raise UnsupportedAction
``NOT_SUPPORTED`` and :meth:`validate` refuses a first comment.

Credentials (OAuth connect flow): ``access_token``, ``refresh_token``, ``expires_at`` (epoch
seconds), ``open_id``; refreshed :data:`REFRESH_EARLY` before expiry under a per-page lock.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from adapters import _graph, _http, _media, _progress, _tokens, base, tiktok_api

REFRESH_EARLY = timedelta(minutes=10)
VIDEO_TYPES = ("video/mp4", "video/quicktime", "video/webm")
MAX_VIDEO_BYTES = 1024 * 1024 * 1024  # TikTok takes 4 GB [U]; postd holds the file in memory
MAX_CAPTION_UTF16 = 2200
MAX_PHOTOS = 35
MAX_PHOTO_DESCRIPTION = 4000
LIST_FIELDS = "id,create_time,share_url,title,video_description,duration"
LIST_PAGE = 20
LIST_MAX_PAGES = 5
DAILY_POSTS = 15  # [C3] reported by limits() once TikTok said the daily cap was reached
DONE = "PUBLISH_COMPLETE"


_Page = _tokens.Tokens


@dataclass
class _Publish:
    """What a try keeps of its publish (one JSON progress value)."""

    publish_id: str
    at: str
    upload_url: str = ""
    size: int = 0

    def dump(self) -> str:
        return json.dumps(self.__dict__, separators=(",", ":"))

    @classmethod
    def load(cls, value: str | None) -> _Publish | None:
        try:
            raw = json.loads(value) if value else None
            return cls(**raw) if isinstance(raw, dict) and raw.get("publish_id") else None
        except (ValueError, TypeError):
            return None


class TikTokAdapter:
    """The platform ``"tiktok"``; implements :class:`adapters.base.Adapter`."""

    platform: str = "tiktok"

    def __init__(
        self,
        credentials: _http.CredentialStore,
        progress: _progress.ProgressStore,
        *,
        now: _http.Now,
        app: tiktok_api.OAuthApp,
        fetch_media: _http.MediaFetcher = _http.no_media,
        api_base: str = tiktok_api.PRODUCTION_API,
        timeouts: _http.Timeouts | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: _http.Sleep = asyncio.sleep,
        media_poll_seconds: float = 2.0,
        media_poll_max_seconds: float = 300.0,
        chunk_bytes: int = 10 * 1024 * 1024,
        min_chunk_bytes: int = 5 * 1024 * 1024,
        public_media_only: bool = True,
    ) -> None:
        self._store = credentials
        self._progress = progress
        self._now = now
        self._app = app
        self._fetch = fetch_media
        self._api_base = api_base.rstrip("/")
        self._timeouts = timeouts or _http.Timeouts()
        self._transport = transport
        self._sleep = sleep
        self._poll, self._poll_max = media_poll_seconds, media_poll_max_seconds
        self._chunk, self._min_chunk = chunk_bytes, min_chunk_bytes
        self._public_only = public_media_only
        self._client: httpx.AsyncClient | None = None
        self._tokens = _tokens.PageTokens(
            credentials,
            now,
            self.refresh_credentials,
            _Page,
            platform="tiktok",
            early=REFRESH_EARLY,
        )
        self._usernames: dict[str, str] = {}  # page id -> creator_username
        self._capped = False

    # --- plumbing -----------------------------------------------------------------------------

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = _http.make_client(self._timeouts, self._transport)
        return self._client

    async def _api(
        self,
        page_id: str,
        path: str,
        *,
        final: bool,
        what: str,
        body: Any = None,
        method: str = "POST",
        params: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """One authenticated call; ``access_token_invalid`` refreshes once and calls again."""
        content = None if body is None else json.dumps(body).encode()

        async def send(page: _Page) -> httpx.Response:
            headers = {"Authorization": f"Bearer {page.token}"}
            if method == "POST":
                headers["Content-Type"] = tiktok_api.JSON_TYPE
            return await _http.send(
                self.client,
                method,
                self._api_base + path,
                final=final,
                what=f"tiktok {what}",
                content=content,
                headers=headers,
                params=params,
            )

        def refused(response: httpx.Response) -> bool:
            error = tiktok_api.classify(response, final=final, now=self._now(), what=what)
            return error is not None and error.code == "access_token_invalid"

        response = await self._tokens.send(page_id, send, refused=refused)
        error = tiktok_api.classify(response, final=final, now=self._now(), what=what)
        if error is None:
            return tiktok_api.data_of(response, final=final, what=what)
        if error.code in tiktok_api.WINDOW_CODES:
            self._capped = True
        raise error

    # --- publishing ---------------------------------------------------------------------------

    async def publish(self, post: base.PostPayload) -> base.Published:
        problems = self.validate(post)
        if problems:
            raise base.PermanentError("; ".join(problems), code="INVALID_POST")
        key = _key(post)
        state = _Publish.load(await self._progress.get(post.post_id, key))
        blob: _http.MediaBlob | None = None
        if state is None:
            creator = await self._creator_info(post.page_id)
            privacy = _privacy_allowed(post, creator)
            if _is_video(post):
                blob = await self._video(post, creator)
                state = await self._init_video(post, key, privacy, creator, blob)
            else:
                state = await self._init_photos(post, key, privacy, creator)
        if state.upload_url and not await self._progress.get(post.post_id, key + ":up"):
            start: int | None = 0
            if blob is None:  # a try cut short before its upload finished
                start = await self._uploaded(post, state)
                if start is not None:
                    blob = await self._fetch(post.media[0], MAX_VIDEO_BYTES)
            if blob is not None and start is not None:
                await self._upload(post, key, state, blob, start)
            await self._progress.put(post.post_id, key + ":up", "1")
        return await self._until_published(post, key, state)

    async def _creator_info(self, page_id: str) -> dict[str, Any]:
        creator = await self._api(
            page_id, "/v2/post/publish/creator_info/query/", final=False, what="creator info"
        )
        if creator.get("creator_username"):
            self._usernames[page_id] = str(creator["creator_username"])
        return creator

    async def _video(self, post: base.PostPayload, creator: Mapping[str, Any]) -> _http.MediaBlob:
        blob = await self._fetch(post.media[0], MAX_VIDEO_BYTES)
        if blob.mime_type not in VIDEO_TYPES:
            raise base.PermanentError(
                f"tiktok: {blob.mime_type} is not MP4, MOV or WebM", code="UNSUPPORTED_MEDIA"
            )
        longest = creator.get("max_video_post_duration_sec")
        seconds = _media.mp4_duration(blob.data)
        if isinstance(longest, int) and seconds is not None and seconds > longest:
            raise base.PermanentError(
                f"tiktok: the video lasts {seconds:.0f} s; this creator may post {longest} s",
                code="duration_check_failed",
            )
        return blob

    async def _init_video(
        self,
        post: base.PostPayload,
        key: str,
        privacy: str,
        creator: Mapping[str, Any],
        blob: _http.MediaBlob,
    ) -> _Publish:
        plan = tiktok_api.ChunkPlan.of(len(blob.data), self._chunk, self._min_chunk)
        body = {
            "post_info": tiktok_api.post_info(post, privacy, creator),
            "source_info": {
                "source": "FILE_UPLOAD",
                "video_size": plan.size,
                "chunk_size": plan.chunk,
                "total_chunk_count": plan.count,
            },
        }
        at = self._now()
        data = await self._api(
            post.page_id, "/v2/post/publish/video/init/", final=True, what="video init", body=body
        )
        if not data.get("publish_id") or not data.get("upload_url"):
            raise base.AmbiguousError("tiktok: an init without publish_id", code="BAD_RESPONSE")
        state = _Publish(
            str(data["publish_id"]), at.isoformat(), str(data["upload_url"]), plan.size
        )
        await self._progress.put(post.post_id, key, state.dump())
        return state

    async def _init_photos(
        self, post: base.PostPayload, key: str, privacy: str, creator: Mapping[str, Any]
    ) -> _Publish:
        info = tiktok_api.post_info(post, privacy, creator)
        info = {
            k: v for k, v in info.items() if k not in ("title", "disable_duet", "disable_stitch")
        }
        body = {
            "media_type": "PHOTO",
            "post_mode": "DIRECT_POST",
            "post_info": {"description": post.message or "", **info, "auto_add_music": True},
            "source_info": {
                "source": "PULL_FROM_URL",
                "photo_images": [item.url for item in post.media],
                "photo_cover_index": 0,
            },
        }
        at = self._now()
        data = await self._api(
            post.page_id, "/v2/post/publish/content/init/", final=True, what="photo init", body=body
        )
        if not data.get("publish_id"):
            raise base.AmbiguousError("tiktok: an init without publish_id", code="BAD_RESPONSE")
        state = _Publish(str(data["publish_id"]), at.isoformat())
        await self._progress.put(post.post_id, key, state.dump())
        return state

    async def _uploaded(self, post: base.PostPayload, state: _Publish) -> int | None:
        """How many bytes TikTok holds of a publish whose upload was cut short; ``None`` when
        it has them all (or moved on)."""
        data = await self._status(post, state.publish_id)
        uploaded = data.get("uploaded_bytes")
        done = isinstance(uploaded, int) and uploaded >= state.size > 0
        if data.get("status") != "PROCESSING_UPLOAD" or done:
            return None
        return uploaded if isinstance(uploaded, int) else 0

    async def _upload(
        self, post: base.PostPayload, key: str, state: _Publish, blob: _http.MediaBlob, start: int
    ) -> None:
        """The chunks in order, from the one starting at byte ``start`` (what TikTok already
        holds; any other value starts over). 5xx and timeouts keep the publish (the next try
        resumes it); a refused upload drops it so the next try starts a new one (a publish
        without its bytes never goes out)."""
        plan = tiktok_api.ChunkPlan.of(len(blob.data), self._chunk, self._min_chunk)
        ranges = plan.ranges()
        firsts = [first for first, _ in ranges]
        for first, last in ranges[firsts.index(start) if start in firsts else 0 :]:
            headers = {
                "Content-Type": blob.mime_type,
                "Content-Range": f"bytes {first}-{last}/{plan.size}",
            }
            response = await _http.send(
                self.client,
                "PUT",
                state.upload_url,
                final=False,
                what="tiktok upload",
                content=blob.data[first : last + 1],
                headers=headers,
            )
            if response.is_success:
                continue
            error = tiktok_api.classify(response, final=False, now=self._now(), what="upload")
            if isinstance(error, base.PermanentError):
                await self._progress.delete(post.post_id, key)
                raise base.RetryableError(
                    error.message,
                    code="UPLOAD_REFUSED",
                    http_status=error.http_status,
                    excerpt=error.excerpt,
                )
            raise error or _http.unreadable(response, final=False, what="tiktok upload")

    async def _status(self, post: base.PostPayload, publish_id: str) -> dict[str, Any]:
        return await self._api(
            post.page_id,
            "/v2/post/publish/status/fetch/",
            final=False,
            what="status",
            body={"publish_id": publish_id},
        )

    async def _until_published(
        self, post: base.PostPayload, key: str, state: _Publish
    ) -> base.Published:
        waited = 0.0
        while True:
            data = await self._status(post, state.publish_id)
            status = str(data.get("status") or "")
            if status == DONE:
                return self._published(post.page_id, state, data)
            if status == "FAILED":
                await self._forget(post, key)
                raise tiktok_api.failed_publish(
                    state.publish_id, str(data.get("fail_reason") or "")
                )
            if waited >= self._poll_max:
                raise base.RetryableError(
                    f"tiktok: publish {state.publish_id} still {status} after {waited:.0f} s",
                    code="MEDIA_NOT_READY",
                    retry_after=self._poll * 10,
                )
            await self._sleep(self._poll)
            waited += self._poll

    async def _forget(self, post: base.PostPayload, key: str) -> None:
        await self._progress.delete(post.post_id, key)
        await self._progress.delete(post.post_id, key + ":up")

    def _published(self, page_id: str, state: _Publish, data: Mapping[str, Any]) -> base.Published:
        """Remote id: the public post id once TikTok gives one (after moderation, public posts
        only; TikTok's own spelling ``publicaly_available_post_id``), else the publish_id."""
        ids = data.get("publicaly_available_post_id") or []
        post_id = str(ids[0]) if isinstance(ids, list) and ids else ""
        username = self._usernames.get(page_id)
        link = (
            f"https://www.tiktok.com/@{username}/video/{post_id}" if post_id and username else None
        )
        # TikTok answers no publish time: counted from when postd saw it done (not from the
        # init, which an earlier try may have made long before).
        return base.Published(post_id or state.publish_id, link, self._now())

    # --- reconciliation -----------------------------------------------------------------------

    async def find_published(
        self,
        post: base.PostPayload,
        since: datetime,
        exclude_remote_ids: AbstractSet[str] = frozenset(),
    ) -> base.Published | None:
        """The stored publish's status when there is one (anything but PUBLISH_COMPLETE is "not
        out": the next try resumes that publish, never inits again); else the account's public
        videos (``POST /v2/video/list/``) since ``since``, matched on the caption."""
        state = _Publish.load(await self._progress.get(post.post_id, _key(post)))
        if state is not None:
            if _http.parse_time(state.at, self._now()) < since:
                return None
            data = await self._status(post, state.publish_id)
            if data.get("status") != DONE:
                return None
            found = self._published(post.page_id, state, data)
            return None if found.remote_id in exclude_remote_ids else found
        return await self._listed(post, since, exclude_remote_ids)

    async def _listed(
        self, post: base.PostPayload, since: datetime, exclude: AbstractSet[str]
    ) -> base.Published | None:
        wanted = _comparable(post.message)
        body: dict[str, Any] = {"max_count": LIST_PAGE}
        for _ in range(LIST_MAX_PAGES):
            data = await self._api(
                post.page_id,
                "/v2/video/list/",
                final=False,
                what="video list",
                body=body,
                params={"fields": LIST_FIELDS},
            )
            older = False
            for video in data.get("videos") or []:
                created = datetime.fromtimestamp(float(video.get("create_time") or 0), UTC)
                if created < since:
                    older = True
                    continue
                text = video.get("title") or video.get("video_description")
                if str(video.get("id")) not in exclude and _comparable(text) == wanted:
                    link = video.get("share_url")
                    return base.Published(str(video["id"]), str(link) if link else None, created)
            if older or not data.get("has_more") or data.get("cursor") is None:
                return None
            body["cursor"] = data["cursor"]
        raise base.UnsupportedAction(f"tiktok: more than {LIST_PAGE * LIST_MAX_PAGES} videos")

    # --- comments: TikTok has no API for them --------------------------------------------------

    def _no_comments(self) -> base.UnsupportedAction:
        return base.UnsupportedAction(
            "tiktok: the official APIs cannot post or read comments", code="NOT_SUPPORTED"
        )

    async def post_comment(
        self, post: base.PostPayload, remote_id: str, message: str
    ) -> base.Comment:
        raise self._no_comments()

    async def list_comments(
        self, post: base.PostPayload, remote_id: str, since: datetime | None = None
    ) -> list[base.Comment]:
        raise self._no_comments()

    async def reply_to_comment(
        self, post: base.PostPayload, comment_id: str, message: str
    ) -> base.Comment:
        raise self._no_comments()

    # --- the rest of the contract -------------------------------------------------------------

    async def refresh_credentials(self, credentials: Mapping[str, str]) -> Mapping[str, str]:
        """A new access token and the rotated refresh token, from ``refresh_token``."""
        refresh = credentials.get("refresh_token")
        if not refresh:
            raise base.AuthError("tiktok: no refresh token stored", code="NOT_CONNECTED")
        form = {"grant_type": "refresh_token", "refresh_token": refresh}
        data = await tiktok_api.token_request(
            self.client, self._api_base, self._app, form, self._now()
        )
        return {**credentials, **tiktok_api.token_credentials(data, self._now())}

    def limits(self) -> base.PlatformLimits:
        """TikTok reports no counts; once it answered ``spam_risk_too_many_posts``, its daily
        cap (about 15 posts per creator, [C3]) is reported."""
        return base.PlatformLimits(per_24h=DAILY_POSTS if self._capped else None)

    def validate(self, post: base.PostPayload) -> list[str]:
        problems = []
        text = post.message or ""
        videos = [m for m in post.media if m.kind == "video"]
        photos = [m for m in post.media if m.kind != "video"]
        if not post.media:
            problems.append("a TikTok post needs a photo or a video (there are no text-only posts)")
        if videos and (photos or len(videos) > 1):
            problems.append("a TikTok post is one video, or photos only")
        if photos and not videos:
            if len(photos) > MAX_PHOTOS:
                problems.append(f"{len(photos)} photos; TikTok allows {MAX_PHOTOS}")
            for item in photos:
                problem = _graph.media_url_problem(item.url, public_only=self._public_only)
                if problem:
                    problems.append(problem.replace("Graph", "TikTok"))
                if (item.mime_type or "") == "image/png" or item.url.lower().endswith(".png"):
                    problems.append("TikTok takes JPEG or WebP photos, not PNG")
            if len(text) > MAX_PHOTO_DESCRIPTION:
                problems.append(f"description is {len(text)} characters; TikTok allows 4000")
        length = tiktok_api.utf16_length(text)
        if videos and length > MAX_CAPTION_UTF16:
            problems.append(f"caption is {length} UTF-16 units; TikTok allows {MAX_CAPTION_UTF16}")
        if tiktok_api.privacy_level(post) is None:
            problems.append(
                "tiktok_settings privacy must be one of " + ", ".join(tiktok_api.PRIVACY_LEVELS)
            )
        if post.first_comment:
            problems.append("TikTok has no API for comments: a first comment cannot be posted")
        return problems

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _key(post: base.PostPayload) -> str:
    """The progress key of a post's content (an edited post starts a new publish)."""
    return f"tt_publish:{post.fingerprint()[:16]}"


def _is_video(post: base.PostPayload) -> bool:
    return any(item.kind == "video" for item in post.media)


def _privacy_allowed(post: base.PostPayload, creator: Mapping[str, Any]) -> str:
    privacy = tiktok_api.privacy_level(post) or tiktok_api.DEFAULT_PRIVACY
    options = creator.get("privacy_level_options")
    if isinstance(options, list) and privacy not in options:
        raise base.PermanentError(
            f"tiktok: this creator may post {', '.join(map(str, options))}, not {privacy}",
            code="privacy_level_option_mismatch",
        )
    return privacy


def _comparable(text: Any) -> str:
    return " ".join(str(text or "").split())
