"""`GET /v1/stream`: Server-Sent Events of state changes, task changes and rejections.

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
from fastapi.responses import StreamingResponse

from kapflow.entrypoints.http.auth import require_for_stream
from kapflow.entrypoints.http.context import services
from kapflow.entrypoints.http.errors import ApiError, errors_for
from kapflow.entrypoints.http.stream import parse_last_event_id, sse_events
from kapflow.service.access import ApiKey, Permission
from kapflow.service.outbox import TOPICS

router = APIRouter(tags=["operations"])


@router.get(
    "/v1/stream",
    summary="Live stream (Server-Sent Events) of state changes, task changes, rejections",
    description="Each event's `id:` is `<outbox position>.<index in row>`, `event:` its "
    "topic (`state-changes`, `tasks`, `rejected`), `data:` the message of SPEC §5 plus its "
    "stable `id` and `key`. A comment line is sent as keep-alive. EventSource cannot send "
    "headers: this endpoint alone also takes the key as `?access_token=`.",
    response_model=None,
    responses={
        200: {
            "description": "text/event-stream, until the client disconnects",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **errors_for(400, 401, 403, 422),
    },
)
async def stream(
    request: Request,
    key: Annotated[ApiKey, Depends(require_for_stream(Permission.STREAM))],
    last_event_id: Annotated[str | None, Header(max_length=40)] = None,
    after: Annotated[int | None, Query(ge=0, le=2**62)] = None,
    backlog: Annotated[int | None, Query(ge=0, le=100000)] = None,
    topics: Annotated[
        str | None, Query(description="comma-separated topics (default: all)", max_length=100)
    ] = None,
) -> StreamingResponse:
    ctx = services(request)
    wanted = frozenset(TOPICS)
    if topics:
        wanted = frozenset(t.strip() for t in topics.split(",") if t.strip())
        unknown = sorted(wanted - set(TOPICS))
        if unknown or not wanted:
            raise ApiError(
                422,
                "invalid_parameter",
                f"`topics` must be among {', '.join(TOPICS)}",
                field="topics",
            )
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
        ),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
