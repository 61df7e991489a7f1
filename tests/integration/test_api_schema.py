"""Schemathesis against a real postd's /api/v1/openapi.json with a valid token: whatever it sends,
no 5xx, and every answer (status, content type, body) is one the document declares."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from tests.live_server import Live, needs_stack, serve

schemathesis = pytest.importorskip("schemathesis")

pytestmark = [needs_stack, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

EXAMPLES = 12
CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    yield from serve(tmp_path_factory.mktemp("schema"))


@pytest.fixture(scope="module")
def api_schema(live: Live) -> Any:
    return schemathesis.openapi.from_url(f"{live.base_url}/openapi.json")


def _operations() -> list[tuple[str, str, str]]:
    """(method, path, mode) for every operation; "negative" only where there is input to spoil."""
    from daemon.api import v1

    paths = v1.build_api(None).openapi()["paths"]  # type: ignore[arg-type]
    return [
        (method.upper(), path, mode)
        for path, item in paths.items()
        for method, op in item.items()
        for mode in ("positive", "negative")
        if mode == "positive" or op.get("parameters") or op.get("requestBody")
    ]


@pytest.mark.parametrize(("method", "path", "mode"), _operations())
def test_api_conforms_to_its_openapi_document(
    api_schema: Any, live: Live, method: str, path: str, mode: str
) -> None:
    """No generated request gets a 5xx or an answer the document does not declare."""
    operation = api_schema[path][method]
    strategy = operation.as_strategy(generation_mode=schemathesis.GenerationMode(mode))
    headers = {"Authorization": f"Bearer {live.token}"}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        case.call_and_validate(base_url=live.base_url, headers=headers, checks=CHECKS, timeout=30)

    try:
        run()
    except Unsatisfiable:
        if mode == "positive":
            raise
        pytest.skip("schemathesis cannot make an invalid request for this operation")
