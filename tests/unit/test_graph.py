"""The Graph helpers shared by Facebook and Instagram: the pinned version, the usage headers and
the error classification table (platforms.md §1-§2)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx
import pytest

from adapters import _graph, base
from daemon import config

NOW = datetime(2026, 11, 23, 4, 0, tzinfo=UTC)


def test_config_defaults_use_the_pinned_graph_version() -> None:
    """[platforms.facebook|instagram] api_base default to the one pinned Graph version."""
    platforms = config.PlatformsSettings()
    assert platforms.facebook.api_base == _graph.GRAPH_API_BASE
    assert platforms.instagram.api_base == _graph.GRAPH_API_BASE


def _response(status: int, body: object, **headers: str) -> httpx.Response:
    return httpx.Response(status, content=json.dumps(body).encode(), headers=headers)


def _err(code: int, subcode: int | None = None, **extra: object) -> dict[str, object]:
    error: dict[str, object] = {"message": "m", "code": code, **extra}
    if subcode is not None:
        error["error_subcode"] = subcode
    return {"error": error}


BUC = json.dumps({"1001": [{"type": "pages", "estimated_time_to_regain_access": 12}]})

CASES = [
    # status, body, headers, final -> class, code, retry_after
    (400, _err(1), {}, False, base.RetryableError, "GRAPH_1", None),
    (400, _err(2), {}, True, base.RetryableError, "GRAPH_2", None),
    (500, _err(2), {}, True, base.AmbiguousError, "GRAPH_2", None),
    (500, _err(2), {}, False, base.RetryableError, "GRAPH_2", None),
    (400, _err(4), {"X-App-Usage": '{"call_count": 100}'}, True, base.RetryableError, "GRAPH_4",
     300.0),
    (400, _err(4), {}, False, base.RetryableError, "GRAPH_4", 300.0),
    (400, _err(17), {"X-Business-Use-Case-Usage": BUC}, True, base.RetryableError, "GRAPH_17",
     720.0),
    (400, _err(32), {}, True, base.RetryableError, "GRAPH_32", 300.0),
    (400, _err(341), {}, True, base.RetryableError, "GRAPH_341", 300.0),
    (400, _err(613), {}, True, base.RetryableError, "GRAPH_613", 300.0),
    (400, _err(190, 463), {}, True, base.AuthError, "GRAPH_190_463", None),
    (400, _err(10), {}, True, base.AuthError, "GRAPH_10", None),
    (403, _err(200), {}, True, base.AuthError, "GRAPH_200", None),
    (400, _err(368), {}, True, base.PermanentError, "GRAPH_368", None),
    (400, _err(506), {}, True, base.PermanentError, "GRAPH_506", None),
    (400, _err(100), {}, True, base.PermanentError, "GRAPH_100", None),
    (400, _err(4, 2207051), {}, True, base.PermanentError, "SPAM_RESTRICTED", None),
    (400, _err(9, 2207042), {}, True, base.RetryableError, "GRAPH_9_2207042", 3600.0),
    (400, _err(24, 2207008), {}, True, base.RetryableError, "CONTAINER_GONE", None),
    (400, _err(9007, 2207027), {}, True, base.RetryableError, "MEDIA_NOT_READY", None),
    (400, _err(-1, 2207001, is_transient=True), {}, True, base.RetryableError, "GRAPH_-1_2207001",
     None),
    (502, "<html>bad gateway</html>", {}, True, base.AmbiguousError, "HTTP_502", None),
    (429, {"oops": 1}, {"Retry-After": "30"}, True, base.RetryableError, "RATE_LIMITED", 30.0),
]  # fmt: skip


@pytest.mark.parametrize(
    ("status", "body", "headers", "final", "error", "code", "wait"),
    CASES,
    ids=[f"{c[0]}-{c[5]}-{'final' if c[3] else 'prep'}" for c in CASES],
)
def test_classification(
    status: int,
    body: object,
    headers: dict[str, str],
    final: bool,
    error: type[base.AdapterError],
    code: str,
    wait: float | None,
) -> None:
    """Code (subcode first) decides; a 5xx on the final call is ambiguous whatever it says;
    throttles wait as the usage headers say, five minutes when they do not."""
    got = _graph.classify(_response(status, body, **headers), final=final, now=NOW, what="t")

    assert (type(got), got.code) == (error, code)
    assert getattr(got, "retry_after", None) == wait


def test_usage_wait_reads_the_largest_buc_estimate() -> None:
    """estimated_time_to_regain_access is minutes; the largest entry wins; unusable headers
    give None."""
    buc = {"a": [{"estimated_time_to_regain_access": 3}, {"estimated_time_to_regain_access": 9}]}
    headers = httpx.Headers({"X-Business-Use-Case-Usage": json.dumps(buc)})
    assert _graph.usage_wait(headers) == 540.0
    assert _graph.usage_wait(httpx.Headers({"X-App-Usage": "not json"})) is None
    assert _graph.usage_wait(httpx.Headers({"X-App-Usage": '{"call_count": 40}'})) is None
