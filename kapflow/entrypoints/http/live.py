"""`GET /v1/stream`: Server-Sent Events of state changes, task changes, rejections and
protocol deviations.

Where to start, in order of precedence:
- `Last-Event-ID: P.I` (sent by EventSource when it reconnects): resume right after it;
- `?after=P`: every row after outbox position P (`after=0`: from the beginning);
- `?backlog=N`: about the last N outbox rows, then live (dashboards filling their lists);
- otherwise: live from now.

Dashboard keys get rejections without the `original` message (codes and ids only); keys
that may read rejections get the full dead letter.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from kapflow.entrypoints.http.auth import require, require_for_stream
from kapflow.entrypoints.http.context import services
from kapflow.entrypoints.http.errors import ApiError, errors_for
from kapflow.entrypoints.http.stream import (
    event_payload,
    parse_last_event_id,
    recent_messages,
    sse_events,
)
from kapflow.entrypoints.http.stream_schema import stream_event_schema
from kapflow.service.access import ApiKey, Permission
from kapflow.service.outbox import TOPICS

router = APIRouter(tags=["operations"])


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
    "comment line is sent as keep-alive. EventSource cannot send "
    "headers: this endpoint alone also takes the key as `?access_token=`.",
    response_model=None,
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "Server-Sent Events until the client disconnects; each event is "
            "described by `itemSchema` (OpenAPI 3.2's keyword for one item of a stream)",
            "content": {"text/event-stream": {"itemSchema": stream_event_schema()}},
        },
        **errors_for(400, 401, 403, 422),
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
    wanted = _topics(topics)
    start: tuple[int, int | None]
    if last_event_id:
        try:
            start = parse_last_event_id(last_event_id)
        except ValueError as error:
            raise ApiError(400, "bad_last_event_id", str(error)) from None
    elif after is not None:
        start = (after, None)
    elif backlog:
        start = (max(ctx.feed.head - backlog, 0), None)
    else:
        start = (ctx.feed.head, None)
    ctx.metrics.stream_clients.inc()
    return StreamingResponse(
        sse_events(
            ctx.feed,
            after=start,
            topics=wanted,
            redact_originals=not key.may(Permission.READ_REJECTIONS),
            keepalive=ctx.settings.keepalive,
            max_seconds=ctx.settings.stream_max_seconds,
        ),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
