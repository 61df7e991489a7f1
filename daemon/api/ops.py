"""Operations endpoints (no auth; postd binds to loopback by default): health, readiness, metrics.

``/readyz`` pings each dependency and says which one fails, the svcs way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import func, select, text

from daemon.store.models import Post

if TYPE_CHECKING:
    from daemon.app import App

router = APIRouter()


def _app(request: Request) -> App:
    app: App = request.app.state.postd
    return app


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    app = _app(request)
    checks: dict[str, Any] = {}
    try:
        async with app.sessions() as session:
            await session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"failing: {type(exc).__name__}"
    checks["scheduler"] = "ok" if app.scheduler_running else "not running"
    age = app.tick_age()
    limit = 2 * app.settings.scheduling.sweep_seconds
    if age is None:
        checks["dispatcher"] = "no tick yet"
    elif age > limit:
        checks["dispatcher"] = f"last tick {age:.0f} s ago (limit {limit:.0f} s)"
    else:
        checks["dispatcher"] = "ok"
    ok = all(value == "ok" for value in checks.values())
    return JSONResponse(
        {"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503
    )


@router.post("/wake", status_code=202)
async def wake(request: Request) -> dict[str, str]:
    """Ask for a sweep and a webhook pass now (the CLI calls this after writing a post, a test
    ping or a redelivery on SQLite, where there is no LISTEN/NOTIFY). It only reads, or sends
    what is due anyway, so it needs no authentication."""
    app = _app(request)
    app.request_sweep()
    app.deliverer.wake()
    return {"status": "accepted"}


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    app = _app(request)
    async with app.sessions() as session:
        counts = dict(
            (await session.execute(select(Post.state, func.count()).group_by(Post.state))).all()
        )
    for state in ("scheduled", "publishing", "published", "failed", "cancelled"):
        app.metrics.posts.labels(state).set(counts.get(state, 0))
    return Response(app.metrics.render(), media_type=CONTENT_TYPE_LATEST)
