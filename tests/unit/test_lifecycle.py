"""The lifecycle table and the event payloads (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from daemon import lifecycle as lc

ALLOWED = {
    ("scheduled", "publishing"),
    ("scheduled", "scheduled"),
    ("scheduled", "failed"),
    ("scheduled", "cancelled"),
    ("publishing", "published"),
    ("publishing", "scheduled"),
    ("publishing", "failed"),
    ("publishing", "publishing"),
}


@pytest.mark.parametrize("pair", [(a, b) for a in lc.STATES for b in lc.STATES])
def test_only_the_spec_transitions_are_legal(pair: tuple[str, str]) -> None:
    """SPEC §3's table, and nothing else: terminal states never move."""
    if pair in ALLOWED:
        lc.check(*pair)
    else:
        with pytest.raises(lc.IllegalTransition):
            lc.check(*pair)


def _view(state: str, **extra: object) -> lc.PostView:
    at = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)
    return lc.PostView(
        id="68a1",
        page_id="6711",
        brand_id="65f0",
        platform="sandbox",
        state=state,
        message="Launching 🚀",
        media=[{"src": "https://cdn.example.com/a.jpg", "type": "photo"}],
        first_comment=None,
        scheduled_at=at,
        created_at=at,
        **extra,  # type: ignore[arg-type]
    )


def test_published_payload_has_the_seed_shape() -> None:
    """post.published is {event, created_at, data: {userId, brandId, post}}, times in ms + Z."""
    when = datetime(2026, 5, 1, 9, 0, 15, 123456, tzinfo=UTC)
    view = _view("published", remote_id="r1", permalink="https://x/r1", published_at=when)
    body = lc.event_payload("post.published", view, "6501", when)
    assert body == {
        "event": "post.published",
        "created_at": "2026-05-01T09:00:15.123Z",
        "data": {
            "userId": "6501",
            "brandId": "65f0",
            "post": {
                "id": "68a1",
                "page_id": "6711",
                "platform": "sandbox",
                "scheduled_at": "2026-05-01T09:00:00.000Z",
                "status": "published",
                "message": "Launching 🚀",
                "media": [{"src": "https://cdn.example.com/a.jpg", "type": "photo"}],
                "first_comment": None,
                "created_at": "2026-05-01T09:00:00.000Z",
                "remote_id": "r1",
                "permalink": "https://x/r1",
                "published_at": "2026-05-01T09:00:15.123Z",
            },
        },
    }


def test_failed_payload_carries_the_error() -> None:
    """post.failed carries the failure code and message."""
    view = _view("failed", error_code="MISSED", error_message="overdue")
    body = lc.event_payload("post.failed", view, None, view.created_at)
    assert body["data"]["post"]["error"] == {"code": "MISSED", "message": "overdue"}
    assert body["data"]["post"]["status"] == "failed"
