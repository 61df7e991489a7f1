"""The publish pipeline: one claimed post -> one platform call (plus inline retries) -> Outcome.

Only :class:`adapters.base.RetryableError` (the request provably did not take effect) is ever
retried, by tenacity, and only while the pure retry policy says the wait is short. An ambiguous
outcome of the final publish call is never retried: it becomes ``in_doubt`` and
:meth:`Pipeline.reconcile` asks the platform (``find_published``) what really happened.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping
from collections.abc import Set as AbstractSet
from datetime import datetime, timedelta

import tenacity

from adapters import base
from daemon import clock as clock_mod
from daemon import lifecycle
from daemon.dispatch import retry
from daemon.dispatch.outcomes import ClaimedPost, Outcome, TryRecord

Sleep = Callable[[float], Awaitable[None]]
# The platform's clock and ours differ a little: look this far before the attempt started.
FIND_SKEW = timedelta(minutes=5)
RECONCILE_BACKOFF = timedelta(seconds=60)
FIRST_COMMENT_TRIES = 3
FIRST_COMMENT_POSTED, FIRST_COMMENT_FAILED, FIRST_COMMENT_UNKNOWN = "posted", "failed", "in_doubt"


class Pipeline:
    def __init__(
        self,
        adapters: Mapping[str, base.Adapter],
        policy: retry.RetryPolicy,
        clock: clock_mod.Clock,
        sleep: Sleep,
        *,
        in_doubt: str = "fail",
        rng: random.Random | None = None,
        timeout: float | None = None,
    ) -> None:
        self._timeout = timeout
        self._adapters = adapters
        self._policy = policy
        self._clock = clock
        self._sleep = sleep
        self._in_doubt = in_doubt
        self._rng = rng or random.Random()

    def _adapter(self, platform: str) -> base.Adapter:
        adapter = self._adapters.get(platform)
        if adapter is None:
            raise base.PermanentError(
                f"no adapter configured for platform {platform!r}", code="PLATFORM_UNAVAILABLE"
            )
        return adapter

    async def publish(self, claimed: ClaimedPost) -> Outcome:
        """Publish once (plus inline retries of provably-failed tries); never raises."""
        tries = _Tries(self, claimed)
        try:
            async with asyncio.timeout(self._timeout):
                published = await tries.run()
        except TimeoutError:
            out = Outcome("in_doubt", claimed, self._clock.now(), "in_doubt", keep_counted=True)
            out.error_class, out.code = "ambiguous", "PUBLISH_TIMEOUT"
            out.message = f"no answer within {self._timeout} s: reconciling with the platform"
        except Exception as exc:  # every error is classified below; none escapes a worker
            out = self._failure(claimed, exc, tries.decisions[-1] if tries.decisions else None)
        else:
            out = Outcome("published", claimed, self._clock.now(), "published", published)
            await self._first_comment(out, published, look_first=False)
        out.extra_tries = tries.failed
        out.started_at = tries.started[-1]
        return out

    async def _first_comment(
        self, out: Outcome, published: base.Published, *, look_first: bool
    ) -> None:
        """Post the post's first comment on it right after it went out (SPEC §3). A failure
        does not unpublish the post: it is recorded on it (``first_comment_status`` and the
        error fields) and reported in ``post.published``. Transient errors are retried inline
        like a publish (short waits only); an ambiguous answer is not repeated. ``look_first``
        (a publish found by reconciliation, perhaps commented before a crash): a comment with
        the same text already there counts as posted."""
        claimed = out.claimed
        text = claimed.payload.first_comment
        if not text:
            return
        adapter = self._adapter(claimed.platform)
        failures = 0
        while True:
            try:
                async with asyncio.timeout(self._timeout):
                    if look_first and await _commented(adapter, claimed, published, text):
                        out.first_comment_status = FIRST_COMMENT_POSTED
                        return
                    await adapter.post_comment(claimed.payload, published.remote_id, text)
            except Exception as exc:  # recorded on the post; the publish stands
                failures += 1
                if isinstance(exc, base.RetryableError) and failures < FIRST_COMMENT_TRIES:
                    wait = exc.retry_after
                    if wait is None:
                        wait = retry.backoff(self._policy, failures, self._rng.random())
                    if wait <= self._policy.inline_max_wait:
                        await self._sleep(wait)
                        continue
                code = getattr(exc, "code", None) or type(exc).__name__
                if isinstance(exc, TimeoutError):
                    code = "COMMENT_TIMEOUT"
                unknown = isinstance(exc, (base.AmbiguousError, TimeoutError))
                status = FIRST_COMMENT_UNKNOWN if unknown else FIRST_COMMENT_FAILED
                out.first_comment_status = status
                out.code, out.message = code, f"first comment not posted: {code}: {exc}"[:1000]
                return
            out.first_comment_status = FIRST_COMMENT_POSTED
            return

    def _failure(
        self, claimed: ClaimedPost, exc: Exception, last: retry.RetryDecision | None
    ) -> Outcome:
        now = self._clock.now()
        out = Outcome("failed", claimed, now, "failed", error_class=base.error_class(exc))
        out.message = str(exc) or type(exc).__name__
        if isinstance(exc, base.AdapterError):
            out.code, out.http_status, out.excerpt = exc.code, exc.http_status, exc.excerpt
        else:
            out.code = lifecycle.ADAPTER_ERROR
            out.message = f"unexpected {type(exc).__name__}: {exc}"
        if isinstance(exc, base.AmbiguousError):
            out.kind, out.attempt_outcome, out.keep_counted = "in_doubt", "in_doubt", True
        elif isinstance(exc, base.RetryableError):
            if isinstance(last, retry.Reschedule):
                out.kind, out.attempt_outcome, out.not_before = (
                    "reschedule",
                    "retry",
                    last.not_before,
                )
                out.message = f"{exc.code}: retrying at {last.not_before.isoformat()}"
            elif isinstance(last, retry.GiveUp):
                out.message = f"{last.reason}; last error {exc.code}: {out.message}"
                out.code = last.code
        elif isinstance(exc, base.AuthError):
            out.page_needs_reauth = True
            out.code = lifecycle.AUTH_EXPIRED
        return out

    async def reconcile(self, claimed: ClaimedPost, exclude: AbstractSet[str]) -> Outcome:
        """Resolve an in-doubt publish through ``find_published``; never raises."""
        now = self._clock.now()
        since = claimed.attempt_started_at - FIND_SKEW
        try:
            found = await self._adapter(claimed.platform).find_published(
                claimed.payload, since, exclude
            )
        except base.UnsupportedAction:
            return self._cannot_tell(claimed, now)
        except Exception as exc:  # cannot ask now: stay in doubt, ask again later
            out = Outcome("in_doubt", claimed, now, "in_doubt", error_class=base.error_class(exc))
            out.not_before = now + RECONCILE_BACKOFF
            out.code = getattr(exc, "code", lifecycle.PUBLISH_IN_DOUBT)
            out.message = f"could not ask the platform yet: {exc}"
            return out
        if found is not None:
            out = Outcome("published", claimed, now, "reconciled_published", found)
            await self._first_comment(out, found, look_first=True)
            return out
        out = Outcome("reschedule", claimed, now, "reconciled_absent", not_before=now)
        out.message = "an interrupted attempt did not reach the platform: publishing again"
        return out

    def _cannot_tell(self, claimed: ClaimedPost, now: datetime) -> Outcome:
        if self._in_doubt == "retry":
            out = Outcome("reschedule", claimed, now, "in_doubt_retry", not_before=now)
            out.message = "the platform cannot tell whether it was published: retrying (policy)"
            return out
        out = Outcome("failed", claimed, now, "in_doubt_failed", keep_counted=True)
        out.code = lifecycle.PUBLISH_IN_DOUBT
        out.message = "the platform cannot tell whether it was published; not retried (policy)"
        return out


class _Tries:
    """The platform calls of one publish: the first is made directly (most succeed, and
    tenacity's bookkeeping costs more than a fast platform call); tenacity makes the retries
    the pure retry policy allows inline."""

    def __init__(self, pipeline: Pipeline, claimed: ClaimedPost) -> None:
        self._pipeline = pipeline
        self._claimed = claimed
        self.failed: list[TryRecord] = []  # the tries that were retried
        self.decisions: list[retry.RetryDecision] = []
        self.started = [pipeline._clock.now()]

    async def run(self) -> base.Published:
        try:
            return await self._call()
        except base.RetryableError as exc:
            if not self._retryable(exc, 1):
                raise
        await self._pipeline._sleep(self._wait(None))
        retrying = tenacity.AsyncRetrying(
            retry=self._should_retry, wait=self._wait, sleep=self._pipeline._sleep, reraise=True
        )
        published: base.Published = await retrying(self._call)
        return published

    async def _call(self) -> base.Published:
        self.started.append(self._pipeline._clock.now())
        claimed = self._claimed
        return await self._pipeline._adapter(claimed.platform).publish(claimed.payload)

    def _retryable(self, exc: BaseException | None, attempt: int) -> bool:
        if not isinstance(exc, base.RetryableError):
            return False
        pipeline, now = self._pipeline, self._pipeline._clock.now()
        self.decisions.append(
            retry.decide(
                pipeline._policy,
                failures=self._claimed.attempts + attempt - 1,
                retry_after=exc.retry_after,
                first_attempt_at=self._claimed.first_attempt_at,
                now=now,
                jitter=pipeline._rng.random(),
            )
        )
        if not isinstance(self.decisions[-1], retry.RetryInline):
            return False
        self.failed.append(_try(self.started[-1], now, exc))
        return True

    def _should_retry(self, state: tenacity.RetryCallState) -> bool:
        exc = state.outcome.exception() if state.outcome is not None else None
        return self._retryable(exc, state.attempt_number + 1)  # try 1 ran before tenacity

    def _wait(self, _state: tenacity.RetryCallState | None) -> float:
        last = self.decisions[-1]
        return last.wait if isinstance(last, retry.RetryInline) else 0.0


async def _commented(
    adapter: base.Adapter, claimed: ClaimedPost, published: base.Published, text: str
) -> bool:
    try:
        comments = await adapter.list_comments(claimed.payload, published.remote_id)
    except base.UnsupportedAction:
        return False
    return any(comment.message.strip() == text.strip() for comment in comments)


def _try(started: datetime, finished: datetime, exc: Exception) -> TryRecord:
    return TryRecord(
        started_at=started,
        finished_at=finished,
        error_class=base.error_class(exc),
        error_code=getattr(exc, "code", None),
        http_status=getattr(exc, "http_status", None),
        excerpt=getattr(exc, "excerpt", None),
    )
