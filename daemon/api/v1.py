"""The ``/api/v1`` sub-application: the public REST API of the document, wire-compatible with the
official SDK and the document's curl / Make / Zapier / n8n recipes.

The composition root mounts it behind the request gate (authentication, limits, idempotency,
audit): ``App.http.mount("/api/v1", ApiGate(build_api(app), app))``. Routes find the postd App on
``request.app.state.postd`` and their caller on ``request.state.principal``.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

from daemon import __version__
from daemon.api import errors
from daemon.api.routers import account, brands, me, pages, posts, publish, root, webhooks
from daemon.api.routers import errors as errors_router

if TYPE_CHECKING:
    from daemon.app import App

DESCRIPTION = """\
postd's implementation of the OutReply public API v1. Authenticate with
`Authorization: Bearer <token>` (or `X-API-Key`). Every error is
`{"error", "code", "message", ...}`; the catalog is at `GET /errors`.

Beyond the document: `PATCH /posts/scheduled/{id}`, `POST /posts/schedule/bulk`, cursor
pagination (`cursor` → `next_cursor`, `has_more`) on every list, and the webhook subscriptions
the official SDK manages (`/webhooks`, with `read:webhooks` / `write:webhooks`): secret rotation,
the delivery log, redelivery and a test ping.
"""


# The routers in the document's order, which the OpenAPI document keeps.
ROUTERS = (root, errors_router, me, account, brands, pages, posts, publish, webhooks)
# The order requests are matched in: FastAPI tries each router's routes in turn (~4 µs a
# router), and nearly every request is a post's.
MATCH_ORDER = (posts, publish, *(r for r in ROUTERS if r not in (posts, publish)))


def _openapi(api: FastAPI) -> dict[str, Any]:
    """FastAPI's document without the 422 it never sends (validation failures are 400), its
    paths in the document's order."""
    if api.openapi_schema is not None:
        return api.openapi_schema
    schema = FastAPI.openapi(api)
    order = {r.path: i for i, r in enumerate(r for m in ROUTERS for r in m.router.routes)}
    paths = schema.get("paths", {})
    schema["paths"] = dict(sorted(paths.items(), key=lambda kv: order.get(kv[0], len(order))))
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            operation.get("responses", {}).pop("422", None)
    components = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    api.openapi_schema = schema
    return schema


def fastapi_app(**kwargs: Any) -> FastAPI:
    """A FastAPI app without FastAPI's native OpenTelemetry (FastAPI 0.16x; postd reports through
    Prometheus and its logs): with it on, every request looked up three OpenTelemetry providers
    and their environment variables (~3 % of a schedule's CPU on the event loop)."""
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters:
        kwargs["telemetry"] = {"tracing": False, "metrics": False, "logs": False}
    return FastAPI(**kwargs)


def build_api(postd_app: App) -> FastAPI:
    """The sub-application serving ``/api/v1`` for ``postd_app``."""
    api = fastapi_app(
        title="postd API",
        version=__version__,
        description=DESCRIPTION,
        openapi_url="/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    api.state.postd = postd_app
    errors.install(api)
    for module in MATCH_ORDER:
        api.include_router(module.router)
    api.openapi = lambda: _openapi(api)  # type: ignore[method-assign]
    return api
