"""Auditor reads (SPEC §6): history, replay, export, verify, and the access log itself.

Each is recorded in the access log (who, what, which client, when) before anything is
served; a read that cannot be recorded is refused with 503.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from concurrent.futures import Executor
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response, StreamingResponse

from kapflow.entrypoints.http.auth import require, require_or_break_glass
from kapflow.entrypoints.http.context import record_access, services
from kapflow.entrypoints.http.errors import ApiError, errors_for
from kapflow.entrypoints.http.params import parse_time, time_query
from kapflow.entrypoints.http.reads import CLIENT_ID_PATTERN, ClientIdPath, json_response
from kapflow.entrypoints.http.schemas import (
    AccessRecordOut,
    HistoryEntryOut,
    ReplayOut,
    VerifyOut,
)
from kapflow.service.access import Permission
from kapflow.service.audit import (
    decision_chunks,
    iter_rejections,
    replay_view,
    verify,
    verify_access_log,
)
from kapflow.store.base import HistoryEntry, RejectedRecord
from workflow.tasks import iso

router = APIRouter(tags=["audit"])


@router.get(
    "/v1/clients/{client_id}/history",
    summary="A client's recorded history (`kapflow history ID --json`)",
    response_model=None,
    responses={200: {"model": list[HistoryEntryOut]}, **errors_for(401, 403, 404, 422, 503)},
)
def history(
    request: Request,
    client_id: ClientIdPath,
    _: Annotated[object, Depends(require_or_break_glass(Permission.READ_HISTORY))],
) -> Response:
    record_access(request, "history", client_id)
    entries = services(request).store.history(client_id)
    if not entries:
        raise ApiError(404, "not_found", "no history for this client", client_id=client_id)
    return json_response([entry.as_dict() for entry in entries])


@router.get(
    "/v1/clients/{client_id}/replay",
    summary="Rebuild a client as of a time (`kapflow replay ID --json`)",
    description="`as_of`: the events that happened (CloudEvents `time`) up to T; "
    "`known_at`: what kapflow had recorded by T. Both may be given.",
    response_model=None,
    responses={200: {"model": ReplayOut}, **errors_for(401, 403, 404, 422, 503)},
)
def replay_client(
    request: Request,
    client_id: ClientIdPath,
    _: Annotated[object, Depends(require_or_break_glass(Permission.REPLAY))],
    as_of: Annotated[str | None, time_query("events that happened up to this time")] = None,
    known_at: Annotated[str | None, time_query("what kapflow had recorded by this time")] = None,
) -> Response:
    as_of_time = parse_time(as_of, "as_of")
    known_at_time = parse_time(known_at, "known_at")
    detail = ",".join(
        f"{name}={iso(value)}"
        for name, value in (("as_of", as_of_time), ("known_at", known_at_time))
        if value is not None
    )
    record_access(request, "replay", client_id, detail or None)
    entries = services(request).store.history(client_id)
    if not entries:
        raise ApiError(404, "not_found", "no history for this client", client_id=client_id)
    return json_response(replay_view(entries, client_id, as_of_time, known_at_time))


async def stream_from_thread(
    executor: Executor, produce: Callable[[], Iterator[str]], window: int = 8
) -> AsyncIterator[bytes]:
    """Run a blocking generator on one executor thread; yield its chunks to the response.

    One thread for the whole generator: a SQLite cursor must stay on the connection (thread)
    that opened it. `window` chunks in flight at most (back-pressure); a client that goes
    away stops the producer.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
    credits = threading.Semaphore(window)
    stopped = threading.Event()

    def run() -> None:
        try:
            for chunk in produce():
                while not credits.acquire(timeout=0.5):
                    if stopped.is_set():
                        return
                if stopped.is_set():
                    return
                loop.call_soon_threadsafe(queue.put_nowait, chunk.encode())
            loop.call_soon_threadsafe(queue.put_nowait, None)
        except BaseException as error:  # noqa: BLE001 - handed to the response task
            loop.call_soon_threadsafe(queue.put_nowait, error)

    producer = loop.run_in_executor(executor, run)
    try:
        while True:
            item = await queue.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            credits.release()
            yield item
    finally:
        stopped.set()
        await asyncio.shield(producer)


@router.get(
    "/v1/export",
    summary="Export histories for auditors, streamed (JSON lines or CSV)",
    response_model=None,
    responses={
        200: {
            "description": "JSON lines (one history entry per line; with "
            "`include_rejections`, then one record per rejection with `kind: rejection`) or "
            "CSV (one table; its `kind` column says history or rejection)",
            "content": {
                "application/x-ndjson": {"schema": {"type": "string"}},
                "text/csv": {"schema": {"type": "string"}},
            },
        },
        **errors_for(401, 403, 422, 503),
    },
)
async def export(
    request: Request,
    _: Annotated[object, Depends(require(Permission.EXPORT))],
    fmt: Annotated[Literal["jsonl", "csv"], Query(alias="format")] = "jsonl",
    client: Annotated[str | None, Query(pattern=CLIENT_ID_PATTERN, max_length=64)] = None,
    include_rejections: Annotated[
        bool, Query(description="append the rejected log: every decision kapflow made")
    ] = False,
) -> StreamingResponse:
    ctx = services(request)
    detail = f"format={fmt}" + (",include_rejections" if include_rejections else "")
    await asyncio.to_thread(record_access, request, "export", client, detail)
    store = ctx.store

    def entries() -> Iterable[HistoryEntry]:
        return store.history(client) if client else store.iter_history()

    def produce() -> Iterator[str]:
        rejections: Iterable[tuple[int, RejectedRecord]] | None = (
            iter_rejections(store, client) if include_rejections else None
        )
        return decision_chunks(entries(), rejections, fmt)

    media = "text/csv" if fmt == "csv" else "application/x-ndjson"
    name = f"kapflow-export{'-' + client if client else ''}.{fmt}"
    return StreamingResponse(
        stream_from_thread(ctx.background, produce),
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.get(
    "/v1/verify",
    summary="Replay every history; check every outcome and hash chain (`kapflow verify`)",
    description="200 with `ok: false` and the divergences when verification fails: the "
    "request succeeded, the data did not pass.",
    response_model=None,
    responses={200: {"model": VerifyOut}, **errors_for(401, 403, 503)},
)
def verify_all(
    request: Request, _: Annotated[object, Depends(require(Permission.VERIFY))]
) -> Response:
    record_access(request, "verify")
    ctx = services(request)
    report = verify(ctx.store)
    access = verify_access_log(ctx.access_log)
    report.divergences.extend(access.divergences)
    return json_response(report.as_dict() | {"access_log": access.as_dict()})


@router.get(
    "/v1/access-log",
    summary="Who read which client's history, replayed, exported or verified, and when",
    response_model=None,
    responses={200: {"model": list[AccessRecordOut]}, **errors_for(401, 403, 422, 503)},
)
def access_log(
    request: Request,
    _: Annotated[object, Depends(require(Permission.READ_ACCESS_LOG))],
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    client: Annotated[str | None, Query(pattern=CLIENT_ID_PATTERN, max_length=64)] = None,
    who: Annotated[str | None, Query(max_length=64)] = None,
    from_: Annotated[str | None, time_query("reads at or after this time", "from")] = None,
    to: Annotated[str | None, time_query("reads at or before this time")] = None,
) -> Response:
    since, until = parse_time(from_, "from"), parse_time(to, "to")
    record_access(request, "access-log", client)
    rows = services(request).access_log.entries(
        limit=limit,
        after=after,
        client_id=client,
        who=who,
        since=iso(since) if since else None,
        until=iso(until) if until else None,
    )
    return json_response([row.as_dict() for row in rows])
