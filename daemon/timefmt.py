"""Wire format of instants: ISO 8601 UTC with milliseconds and ``Z``, as the API document shows."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from daemon.errors import InputError


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.isoformat(timespec="milliseconds")[:-6] + "Z"  # "+00:00" -> "Z"


def parse_instant(text: str, field: str = "scheduled_at") -> datetime:
    """Parse an ISO 8601 instant that names its zone; raise InputError(INVALID_DATE) otherwise."""
    try:
        value = datetime.fromisoformat(text.strip().replace("z", "Z"))
    except (ValueError, AttributeError):
        raise InputError(
            "INVALID_DATE", f"{field} is not an ISO 8601 timestamp: {text!r}", field=field
        ) from None
    if value.tzinfo is None:
        raise InputError(
            "INVALID_DATE",
            f"{field} has no time zone: add Z or an offset, e.g. 2026-05-12T14:30:00Z",
            field=field,
        )
    return value.astimezone(UTC)


def aware(value: Any) -> datetime | None:
    """A value read back from the store as aware UTC (SQLite aggregates of a datetime column,
    such as MIN(), come back as naive text)."""
    if value is None:
        return None
    when: datetime = datetime.fromisoformat(value) if isinstance(value, str) else value
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
