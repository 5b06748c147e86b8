"""`GET /v1/stream`: Server-Sent Events of state changes, task changes, rejections and
protocol deviations.

Where to start, in order of precedence:
- `Last-Event-ID: P.I` (sent by EventSource when it reconnects): resume right after it;
- `?after=P`: every row after outbox position P (`after=0`: from the beginning);
- `?backlog=N`: about the last N outbox rows, then live (dashboards filling their lists);
- otherwise: live from now.

Dashboard keys get rejections without the `original` message (codes and ids only); keys
that may read rejections get the full dead letter.

Who may stream, and for how long (stream_access.py): a browser opens the stream with a
single-use ticket (`POST /v1/stream/ticket`, key in the header) instead of the key in the
URL; each key holds at most `KAPFLOW_STREAM_MAX_PER_KEY` streams (429 beyond); a stream ends
within about a second of its key being revoked, expiring or removed.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from kapflow.entrypoints.http.auth import require, require_for_stream
from kapflow.entrypoints.http.context import services
from kapflow.entrypoints.http.errors import ApiError, ErrorBody, errors_for
from kapflow.entrypoints.http.stream import (
    event_payload,
    parse_last_event_id,
    recent_messages,
    sse_events,
)
from kapflow.entrypoints.http.stream_access import (
    EventStreamResponse,
    StreamAccess,
    TooManyStreams,
)
from kapflow.entrypoints.http.stream_schema import stream_event_schema
from kapflow.service.access import ApiKey, Permission
from kapflow.service.outbox import TOPICS

router = APIRouter(tags=["operations"])

# RFC 9745: `?access_token=` on /v1/stream is deprecated since 2026-12-08 (issue 18).
_QUERY_KEY_DEPRECATED = {"Deprecation": "@1796688000"}
_TOO_MANY: dict[int | str, dict[str, Any]] = {
    429: {
        "model": ErrorBody,
        "description": "The key already holds its most open streams; retry after `Retry-After`",
    }
}


class StreamTicketOut(BaseModel):
    ticket: str = Field(description="open `/v1/stream?ticket=<ticket>` with it, once")
    expires_in: float = Field(description="seconds it stays valid if unused")


_ONE_TOPIC = "(" + "|".join(TOPICS) + ")"
_TOPICS_PATTERN = f"^{_ONE_TOPIC}(,{_ONE_TOPIC})*$"
# What `_topics` accepts: empty (all topics), or a list naming at least one topic, with
# blanks around names and empty items allowed.
_STREAM_TOPICS_PATTERN = rf"^$|^(\s*,)*\s*{_ONE_TOPIC}\s*(,\s*({_ONE_TOPIC}\s*)?)*$"


def _topics(text: str | None) -> frozenset[str]:
    if not text:
        return frozenset(TOPICS)
    wanted = frozenset(t.strip() for t in text.split(",") if t.strip())
    unknown = sorted(wanted - set(TOPICS))
    if unknown or not wanted:
        raise ApiError(
            422,
            "invalid_parameter",
            f"`topics` must be among {', '.join(TOPICS)}",
            field="topics",
        )
    return wanted


@router.get(
    "/v1/stream/recent",
    summary="The latest messages of each topic, to fill a screen before it follows the stream",
    description="Up to `limit` messages per topic, oldest first, each with its stream "
    "`position` (`<outbox position>.<index>`, as in the SSE `id:`), and `position`: open "
    "`/v1/stream?after=<position>` next to continue with no gap and no duplicate.",
    response_model=None,
    responses={
        200: {"description": "`{position, messages: [{id, event, data}]}`"},
        **errors_for(401, 403, 422),
    },
)
async def recent(
    request: Request,
    key: Annotated[ApiKey, Depends(require(Permission.STREAM))],
    topics: Annotated[
        str | None,
        Query(
            description="comma-separated topics (default: all)",
            max_length=100,
            pattern=_TOPICS_PATTERN,
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 40,
) -> JSONResponse:
    ctx = services(request)
    head, found = await recent_messages(ctx.feed, _topics(topics), limit)
    redact = not key.may(Permission.READ_REJECTIONS)
    return JSONResponse(
        {
            "position": head,
            "messages": [
                {
                    "id": f"{position}.{index}",
                    "event": message.topic,
                    "data": event_payload(message, redact),
                }
                for position, index, message in found
            ],
        }
    )


@router.get(
    "/v1/stream",
    summary="Live stream (Server-Sent Events) of state changes, tasks, rejections, deviations",
    description="Each event's `id:` is `<outbox position>.<index in row>`, `event:` its "
    "topic (`state-changes`, `tasks`, `rejected`, `deviations`), `data:` the message of "
    "SPEC §5 plus its stable `id` and `key`; a state change recorded as a protocol "
    "deviation carries `deviations` (the rules), also when the state stayed the same. A "
    "comment line is sent as keep-alive. EventSource cannot send headers: this endpoint "
    "alone also takes a single-use `?ticket=` from `POST /v1/stream/ticket` and, deprecated "
    "(answered with a `Deprecation` header), the key itself as `?access_token=`. Each key "
    "holds a few streams at most (429 beyond); a stream ends, after a comment saying why, "
    "within about a second of its key being revoked or expiring.",
    response_model=None,
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "Server-Sent Events until the client disconnects; each event is "
            "described by `itemSchema` (OpenAPI 3.2's keyword for one item of a stream)",
            "content": {"text/event-stream": {"itemSchema": stream_event_schema()}},
        },
        **errors_for(400, 401, 403, 422),
        **_TOO_MANY,
    },
)
async def stream(
    request: Request,
    key: Annotated[ApiKey, Depends(require_for_stream(Permission.STREAM))],
    last_event_id: Annotated[
        str,
        Header(
            max_length=40,
            # Documented, checked below (400 `bad_last_event_id`): what EventSource resends;
            # empty is the same as absent (a header is never null, so not `str | None`).
            json_schema_extra={"pattern": r"^(\s*[0-9]{1,18}\.[0-9]{1,6}\s*)?$"},
            description="the `id` of the last event received: resume right after it",
        ),
    ] = "",
    after: Annotated[int | None, Query(ge=0, le=2**62)] = None,
    backlog: Annotated[int | None, Query(ge=0, le=100000)] = None,
    topics: Annotated[
        str | None,
        Query(
            description="comma-separated topics (default: all)",
            max_length=100,
            # Documented, checked by `_topics` (422 `invalid_parameter`): empty is all.
            json_schema_extra={"pattern": _STREAM_TOPICS_PATTERN},
        ),
    ] = None,
) -> StreamingResponse:
    ctx = services(request)
    streams: StreamAccess = request.app.state.streams
    wanted = _topics(topics)
    start = _start_of(ctx.feed.head, last_event_id, after, backlog)
    try:
        slot = streams.gate.admit(key, ctx.feed.nudge)
    except TooManyStreams as error:
        # By then a stream whose client silently went away has failed its keep-alive and
        # given its place back.
        retry = str(max(1, math.ceil(ctx.settings.keepalive)))
        raise ApiError(
            429, "too_many_streams", str(error), {"Retry-After": retry}, limit=error.limit
        ) from None
    ctx.metrics.stream_clients.inc()
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    if _key_in_query(request):
        headers.update(_QUERY_KEY_DEPRECATED)
    events = sse_events(
        ctx.feed,
        after=start,
        topics=wanted,
        redact_originals=not key.may(Permission.READ_REJECTIONS),
        keepalive=ctx.settings.keepalive,
        max_seconds=ctx.settings.stream_max_seconds,
        page=streams.settings.page_rows,
        ended=slot.why_ended,
    )
    return EventStreamResponse(events, streams.gate, slot, headers)


def _start_of(
    head: int, last_event_id: str, after: int | None, backlog: int | None
) -> tuple[int, int | None]:
    """Where a stream starts: (outbox position, index in that row or None)."""
    if last_event_id:
        try:
            return parse_last_event_id(last_event_id)
        except ValueError as error:
            raise ApiError(400, "bad_last_event_id", str(error)) from None
    if after is not None:
        return (after, None)
    if backlog:
        return (max(head - backlog, 0), None)
    return (head, None)


def _key_in_query(request: Request) -> bool:
    """Whether the key itself came in the URL (deprecated), not a header or a ticket."""
    query = request.query_params
    return bool(query.get("access_token")) and not (
        request.headers.get("authorization") or query.get("ticket")
    )


@router.post(
    "/v1/stream/ticket",
    summary="A single-use ticket to open the live stream without the key in its URL",
    description="For browsers (EventSource cannot send headers): open "
    "`/v1/stream?ticket=<ticket>` within `expires_in` seconds. A ticket opens one stream, "
    "once, for the key that asked for it; it is checked like that key (revoking the key "
    "ends the stream) and counts against its streams.",
    response_model=StreamTicketOut,
    responses=errors_for(401, 403),
)
async def stream_ticket(
    request: Request, key: Annotated[ApiKey, Depends(require(Permission.STREAM))]
) -> JSONResponse:
    streams: StreamAccess = request.app.state.streams
    return JSONResponse(
        {"ticket": streams.tickets.issue(key), "expires_in": streams.settings.ticket_seconds},
        headers={"Cache-Control": "no-store"},
    )
