"""The HTTP side of a delivery: one POST through the SSRF policy, turned into an ``Attempted``.

Every attempt checks the URL (:func:`daemon.netguard.check_url`) and sends to an address
:func:`daemon.netguard.resolve` accepted, over :mod:`daemon.events.http11` (kept-alive, pinned to
that address, never following a redirect: a 3xx is a failed attempt). An origin is resolved again
after ``resolve_ttl`` seconds, so a DNS change is followed, and checked, within that time. The
whole attempt, connect to last byte, is bounded by ``timeout`` seconds. At most ``MAX_BODY``
bytes of a response are read; a short excerpt of a non-2xx body goes into the attempt's error.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog

from daemon import netguard
from daemon.events import http11, policy

log = structlog.get_logger("postd.webhooks")
MAX_BODY = 64 * 1024
EXCERPT = 200
MAX_ORIGINS = 1024


@dataclass(frozen=True, slots=True)
class Sent:
    attempted: policy.Attempted
    duration_ms: int


@dataclass(slots=True)
class _Resolved:
    pinned: netguard.Pinned
    checked_at: float


class Sender:
    """POSTs webhook bodies; owns its connections (call :meth:`aclose`)."""

    def __init__(
        self,
        policy_: netguard.Policy,
        *,
        timeout: float,
        user_agent: str,
        resolver: netguard.Resolver | None = None,
        resolve_ttl: float = 60.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._policy = policy_
        self._timeout = timeout
        self._user_agent = user_agent
        self._resolver = resolver
        self._ttl = resolve_ttl
        self._monotonic = monotonic
        self._targets: OrderedDict[str, netguard.Target] = OrderedDict()
        self._resolved: OrderedDict[tuple[str, str, int], _Resolved] = OrderedDict()
        self._locks: dict[tuple[str, str, int], asyncio.Lock] = {}
        self._pool = http11.Pool(monotonic=monotonic)

    async def post(self, url: str, headers: Mapping[str, str], body: bytes) -> Sent:
        started = time.perf_counter()
        attempted = await self._attempt(url, headers, body)
        return Sent(attempted, max(int((time.perf_counter() - started) * 1000), 0))

    async def _attempt(self, url: str, headers: Mapping[str, str], body: bytes) -> policy.Attempted:
        try:
            async with asyncio.timeout(self._timeout):
                pinned = await self._pinned(self._target(url))
                response = await self._pool.post(pinned, headers, body, max_body=MAX_BODY)
        except netguard.UnsafeURL as exc:
            return policy.Attempted(None, f"UNSAFE_URL: {exc.reason}")
        except netguard.UnresolvableHost as exc:
            return policy.Attempted(None, f"UNRESOLVABLE_HOST: {exc.problem}")
        except TimeoutError:
            return policy.Attempted(None, f"TIMEOUT: no complete answer within {self._timeout:g} s")
        except http11.HttpError as exc:
            return policy.Attempted(None, f"{exc.kind}: {exc}"[:500])
        return _attempted(response)

    def _target(self, url: str) -> netguard.Target:
        """The checked form of a URL (the check is a pure function of the URL and the policy,
        so its answer is remembered)."""
        target = self._targets.get(url)
        if target is None:
            target = netguard.check_url(url, self._policy)
            self._targets[url] = target
            while len(self._targets) > MAX_ORIGINS:
                self._targets.popitem(last=False)
        return target

    async def _pinned(self, target: netguard.Target) -> netguard.Pinned:
        key = (target.scheme, target.host, target.port)
        known = self._resolved.get(key)
        if known is None or self._monotonic() - known.checked_at >= self._ttl:
            async with self._locks.setdefault(key, asyncio.Lock()):
                known = self._resolved.get(key)
                if known is None or self._monotonic() - known.checked_at >= self._ttl:
                    pinned = await netguard.resolve(target, self._policy, self._resolver)
                    known = _Resolved(pinned, self._monotonic())
                    self._resolved[key] = known
                    while len(self._resolved) > MAX_ORIGINS:
                        self._resolved.popitem(last=False)
        self._resolved.move_to_end(key)
        if known.pinned.target == target:
            return known.pinned
        return netguard.Pinned(target, known.pinned.ip)  # same origin, another path

    async def aclose(self) -> None:
        self._pool.close()


def _attempted(response: http11.Response) -> policy.Attempted:
    code = response.status
    if 200 <= code < 300:
        return policy.Attempted(code)
    if 300 <= code < 400:
        where = response.headers.get("location", "")[:EXCERPT]
        return policy.Attempted(code, f"HTTP {code}: redirect not followed (Location: {where})")
    excerpt = response.body[:EXCERPT].decode("utf-8", "replace").strip()
    return policy.Attempted(code, f"HTTP {code}" + (f": {excerpt}" if excerpt else ""))
