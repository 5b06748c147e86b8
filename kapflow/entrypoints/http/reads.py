"""Operational reads: clients, tasks, stats, the pathway; rejections and parked events.

Bodies are the objects the CLI prints with `--json`. Handlers are plain `def`: FastAPI runs
them on its thread pool, where each thread keeps its own SQLite connection.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from kapflow.entrypoints.http.auth import require
from kapflow.entrypoints.http.context import record_access, server_now, services
from kapflow.entrypoints.http.errors import ApiError, errors_for
from kapflow.entrypoints.http.metrics import OWNERS
from kapflow.entrypoints.http.params import later, parse_time, time_query
from kapflow.entrypoints.http.readmodels import compute_stats
from kapflow.entrypoints.http.schemas import (
    ClientOut,
    DeviationOut,
    ParkedOut,
    PathwayOut,
    ReadinessOut,
    RejectionOut,
    StatsOut,
    TaskOut,
)
from kapflow.service.access import Permission
from kapflow.service.clock import deadlines
from kapflow.service.deviations import recorded_deviations
from kapflow.service.views import deadline_view, parked_view
from workflow.readiness import dosing_readiness
from workflow.states.diagram import mermaid
from workflow.states.pathway import CLIENT_STATES, MAIN_LINE, PATHWAY_VERSION, CarePathway
from workflow.tasks import iso

router = APIRouter()

CLIENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,63}$"
ClientIdPath = Annotated[
    str, Path(pattern=CLIENT_ID_PATTERN, max_length=64, description="the client id (subject)")
]


def json_response(value: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(value, ensure_ascii=False, separators=(",", ":")),
        media_type="application/json",
        headers=headers,
    )


@router.get(
    "/v1/clients/{client_id}",
    tags=["clients"],
    summary="A client's state, pathway and open tasks (`kapflow client ID --json`)",
    response_model=None,
    responses={200: {"model": ClientOut}, **errors_for(401, 403, 404, 422)},
)
def get_client(
    request: Request,
    client_id: ClientIdPath,
    _: Annotated[object, Depends(require(Permission.READ_CLIENTS))],
) -> Response:
    record_access(request, "client", client_id)
    client = services(request).store.get_client(client_id)
    if client is None or (client.state == "new" and client.parked == 0):
        raise ApiError(404, "not_found", "no such client", client_id=client_id)
    return json_response(client.view())


@router.get(
    "/v1/clients/{client_id}/readiness",
    tags=["clients"],
    summary="Readiness: would a dosing at `at` be within the protocol? (`kapflow check`)",
    description="Each of R5–R9, the hold and being in care, passed or failed with why, "
    "judged by the same rule functions the engine applies to a recorded dosing. `at` "
    "defaults to the server clock (a read-side question: the engine never reads the "
    "clock). A client that is not ready is an answer (200), not an error.",
    response_model=None,
    responses={200: {"model": ReadinessOut}, **errors_for(401, 403, 404, 422)},
)
def readiness(
    request: Request,
    client_id: ClientIdPath,
    _: Annotated[object, Depends(require(Permission.READ_CLIENTS))],
    action: Annotated[
        Literal["dose"], Query(description="the action to check (a dosing session)")
    ] = "dose",
    at: Annotated[str | None, time_query("when the action would happen")] = None,
) -> Response:
    ctx = services(request)
    moment = parse_time(at, "at") or server_now()
    record_access(request, "readiness", client_id, f"at={iso(moment)}")
    client = ctx.store.get_client(client_id)
    if client is None or (client.state == "new" and client.parked == 0):
        raise ApiError(404, "not_found", "no such client", client_id=client_id)
    return json_response(dosing_readiness(client, moment, ctx.runtime.policy))


@router.get(
    "/v1/deviations",
    tags=["clients"],
    summary="Every protocol deviation recorded, with its review (`kapflow deviations`)",
    description="Facts of care recorded although they broke a rule (SPEC §3), whose event "
    "happened between `from` and `to`; `open=true`: only those whose review is still "
    "open; `client`: only that client's. A report, not a hot path: without `client` it "
    "reads the whole history.",
    response_model=None,
    responses={200: {"model": list[DeviationOut]}, **errors_for(401, 403, 422)},
)
def deviations(
    request: Request,
    _: Annotated[object, Depends(require(Permission.READ_CLIENTS))],
    from_: Annotated[
        str | None, time_query("deviations that happened at or after this time", alias="from")
    ] = None,
    to: Annotated[str | None, time_query("deviations that happened at or before this time")] = None,
    open_only: Annotated[bool, Query(alias="open", description="only open reviews")] = False,
    client: Annotated[
        str | None,
        Query(pattern=CLIENT_ID_PATTERN, max_length=64, description="only this client's"),
    ] = None,
) -> Response:
    since = parse_time(from_, "from")
    until = parse_time(to, "to")
    record_access(request, "deviations", client)
    rows = recorded_deviations(
        services(request).store,
        since=iso(since) if since else None,
        until=iso(until) if until else None,
        open_only=open_only,
        client_id=client,
    )
    return json_response([row.as_dict() for row in rows])


@router.get(
    "/v1/clients",
    tags=["clients"],
    summary="Clients, optionally in one state",
    response_model=None,
    responses={200: {"model": list[ClientOut]}, **errors_for(401, 403, 422)},
)
def list_clients(
    request: Request,
    _: Annotated[object, Depends(require(Permission.READ_CLIENTS))],
    state: Annotated[
        str | None,
        Query(
            description="one of the pathway states",
            json_schema_extra={"enum": list(CLIENT_STATES)},
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> Response:
    if state is not None and state not in CLIENT_STATES:
        raise ApiError(422, "invalid_parameter", "`state` is not a pathway state", field="state")
    record_access(request, "clients", detail=f"state={state}" if state else None)
    clients = services(request).store.clients(state, limit=limit)
    return json_response([c.view() for c in clients if c.state != "new"])


@router.get(
    "/v1/tasks",
    tags=["tasks"],
    summary="Follow-up tasks (`kapflow tasks --json`)",
    description="`overdue=true` means open and due before `now`; `now` defaults to the "
    "server clock (a read-side question: the engine itself never reads the clock).",
    response_model=None,
    responses={
        200: {
            "model": list[TaskOut],
            "headers": {
                "X-Kapflow-Now": {
                    "description": "the reference time used for `overdue`",
                    "schema": {"type": "string"},
                }
            },
        },
        **errors_for(401, 403, 422),
    },
)
def list_tasks(
    request: Request,
    _: Annotated[object, Depends(require(Permission.READ_TASKS))],
    open_only: Annotated[bool, Query(alias="open", description="only open tasks")] = False,
    overdue: Annotated[bool, Query(description="only open tasks due before `now`")] = False,
    now: Annotated[str | None, time_query("reference time for `overdue`")] = None,
    owner: Annotated[str | None, Query(json_schema_extra={"enum": list(OWNERS)})] = None,
    client: Annotated[str | None, Query(pattern=CLIENT_ID_PATTERN, max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=100000)] = 10000,
) -> Response:
    if owner is not None and owner not in OWNERS:
        raise ApiError(422, "invalid_parameter", "`owner` is not a task owner role", field="owner")
    moment = parse_time(now, "now") or server_now()
    record_access(request, "tasks", client, f"owner={owner}" if owner else None)
    tasks = services(request).store.tasks(
        open_only=open_only or overdue,
        owner=owner,
        due_before=iso(moment) if overdue else None,
        client_id=client,
        limit=limit,
    )
    return json_response([task.as_dict() for task in tasks], {"X-Kapflow-Now": iso(moment)})


@router.get(
    "/v1/stats",
    tags=["operations"],
    summary="Clients per state, the pathway funnel, open and overdue tasks by owner",
    description="`funnel[].reached` counts clients who ever reached the stage (from each "
    "client's accepted history: a history pass at startup, then the live outbox); "
    "`current` counts those in it now. Overdue uses `now` (default: server clock).",
    response_model=None,
    responses={200: {"model": StatsOut}, **errors_for(401, 403, 422)},
)
def stats(
    request: Request,
    _: Annotated[object, Depends(require(Permission.READ_STATS))],
    now: Annotated[str | None, time_query("reference time for overdue tasks")] = None,
) -> Response:
    ctx = services(request)
    moment = parse_time(now, "now") or server_now()
    return json_response(compute_stats(ctx.store, ctx.funnel, moment))


@router.get(
    "/v1/pathway",
    tags=["operations"],
    summary="The pathway machine: states, main line, transitions, Mermaid text",
    response_model=None,
    responses={200: {"model": PathwayOut}, **errors_for(401, 403)},
)
def pathway(_: Annotated[object, Depends(require(Permission.READ_STATS))]) -> Response:
    return json_response(pathway_document())


def pathway_document() -> dict[str, Any]:
    transitions: dict[tuple[str, str, str], None] = {}
    for state in CarePathway.states:
        for transition in state.transitions:
            if transition.source.id == transition.target.id:
                continue
            for event in transition.events:
                transitions[(str(event), transition.source.id, transition.target.id)] = None
    return {
        "version": PATHWAY_VERSION,
        "main_line": [state for state in MAIN_LINE if state != "new"],
        "states": list(CLIENT_STATES),
        "transitions": [
            {"event": event, "source": source, "target": target}
            for event, source, target in transitions
        ],
        "mermaid": mermaid(),
    }


def _reasons(text: str) -> list[Any]:
    reasons: list[Any] = json.loads(text)
    return reasons


@router.get(
    "/v1/rejections",
    tags=["audit"],
    summary="Dead letters: rejected inputs with their reasons and the original message",
    description="Paged by `position`: pass the last position seen as `after`. Recorded in "
    "the access log (it holds original messages).",
    response_model=None,
    responses={200: {"model": list[RejectionOut]}, **errors_for(401, 403, 422, 503)},
)
def rejections(
    request: Request,
    _: Annotated[object, Depends(require(Permission.READ_REJECTIONS))],
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    client: Annotated[
        str | None,
        Query(pattern=CLIENT_ID_PATTERN, max_length=64, description="only this client's"),
    ] = None,
) -> Response:
    record_access(request, "rejections", client_id=client, detail=f"after={after}")
    rows = services(request).store.rejections(limit=limit, after=after, client_id=client)
    return json_response(
        [
            {
                "position": position,
                "source": record.source,
                "id": record.event_id,
                "subject": record.client_id,
                "type": record.type,
                "recorded_at": record.recorded_at,
                "reasons": _reasons(record.reasons),
                "original": record.original,
            }
            for position, record in rows
        ]
    )


@router.get(
    "/v1/parked",
    tags=["audit"],
    summary="Events held as premature, waiting for the event they depend on",
    response_model=None,
    responses={200: {"model": list[ParkedOut]}, **errors_for(401, 403, 422, 503)},
)
def parked(
    request: Request,
    _: Annotated[object, Depends(require(Permission.READ_PARKED))],
    client: Annotated[str | None, Query(pattern=CLIENT_ID_PATTERN, max_length=64)] = None,
) -> Response:
    record_access(request, "parked", client_id=client)
    events = services(request).store.parked_events(client)
    return json_response([parked_view(p) for p in events])


class DeadlineOut(BaseModel):
    client_id: str
    task_id: str = Field(description="an open task's id, or a timer id")
    kind: Literal["task", "timer"]
    code: str = Field(description="the task code, or the timer kind")
    due: str
    owner: str | None
    priority: str | None
    overdue: bool


@router.get(
    "/v1/deadlines",
    tags=["tasks"],
    summary="Overdue and upcoming deadlines: open tasks' due times and timers",
    description="What kapflow's clock will record as `system.deadline_reached` events: "
    "deadlines due before `now` (overdue) and within `within_hours` after it. `now` "
    "defaults to the server clock (a read-side question).",
    response_model=None,
    responses={200: {"model": list[DeadlineOut]}, **errors_for(401, 403, 422)},
)
def list_deadlines(
    request: Request,
    _: Annotated[object, Depends(require(Permission.READ_TASKS))],
    now: Annotated[str | None, time_query("reference time")] = None,
    within_hours: Annotated[float, Query(ge=0, le=24 * 366)] = 24 * 7,
) -> Response:
    moment = parse_time(now, "now") or server_now()
    ctx = services(request)
    found = deadlines(ctx.store, ctx.runtime.policy, later(moment, timedelta(hours=within_hours)))
    limit = iso(moment)
    return json_response([deadline_view(d, limit) for d in found], {"X-Kapflow-Now": limit})
