"""Query parameters every router reads the same way: times.

Why one parser: a time with a zone offset may name an instant Python cannot hold once it
is moved to UTC (`9999-12-31T23:59:59-14:00` is in the year 10000,
`0001-01-01T00:00:00+14:00` in the year 0), and a handler that did that arithmetic itself
answered 500. Every time parameter goes through `parse_time`: anything that is not an
RFC 3339 time with a zone, or lies outside the years 1–9999 in UTC, is a 422 naming the
parameter, with a stable `problem` code, and never echoes the value.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import Query

from kapflow.entrypoints.http.errors import ApiError

# A day short of the last time Python holds: a horizon computed from a parameter stops
# here, which leaves room for a reader's own small steps past it (a second past a due time).
LATEST_HORIZON = datetime(9999, 12, 31, tzinfo=UTC)
# Longer than any RFC 3339 time (35 characters with nanoseconds and an offset).
MAX_TIME_LENGTH = 64


def _invalid(name: str, problem: str, detail: str) -> ApiError:
    return ApiError(422, "invalid_parameter", detail, field=name, problem=problem)


def parse_time(text: str | None, name: str) -> datetime | None:
    """An RFC 3339 time with a zone, as UTC; 422 naming the parameter otherwise.

    `problem` in the body: `not_a_time`, `no_timezone` or `out_of_range`.
    """
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise _invalid(name, "not_a_time", f"`{name}` is not an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise _invalid(name, "no_timezone", f"`{name}` needs a timezone")
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise _invalid(
            name, "out_of_range", f"`{name}` lies outside the years 1 to 9999 in UTC"
        ) from None


def later(moment: datetime, delta: timedelta) -> datetime:
    """`moment + delta`, but never past LATEST_HORIZON (so never an overflow)."""
    return moment + delta if delta <= LATEST_HORIZON - moment else LATEST_HORIZON


def time_query(description: str, alias: str | None = None) -> Any:
    return Query(
        alias=alias,
        description=description,
        max_length=MAX_TIME_LENGTH,
        examples=["2026-03-01T09:00:00Z"],
        json_schema_extra={"format": "date-time"},
    )
