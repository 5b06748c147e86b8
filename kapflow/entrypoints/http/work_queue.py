"""`POST /v1/tasks/{id}/complete|claim|cancel|reassign`: the work queue's actions over HTTP.

Each action is recorded as an `operations.*` event through the single writer (see
`kapflow.service.work_queue`), so it is in the client's history, the outbox and the live
stream like any other fact. Status codes: 200 with the outcome (`accepted`, or `duplicate`
for a retry carrying the same `Idempotency-Key`) and the task as it now stands; 404 no such
task; 409 the task is already closed (or the client's state refuses the event); 422 a body
that breaks the event contract; 503 nothing was recorded, safe to retry.
"""

from __future__ import annotations

import logging
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Path, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from events.operations import TaskOwner
from kapflow.entrypoints.http.auth import require
from kapflow.entrypoints.http.context import principal, server_now, services
from kapflow.entrypoints.http.errors import ApiError, errors_for, recording_refusals
from kapflow.entrypoints.http.reads import json_response
from kapflow.entrypoints.http.schemas import TaskOut
from kapflow.service.access import Permission
from kapflow.service.ingest import IngestResult, RawInput
from kapflow.service.work_queue import (
    InvalidTaskAction,
    TaskAction,
    TaskAlreadyClosed,
    TaskNotFound,
    act_on_task,
)

log = logging.getLogger("kapflow.http.tasks")
router = APIRouter(tags=["tasks"])

TaskIdPath = Annotated[
    str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,63}$", description="the task id")
]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=128,
        pattern=r"^[\x21-\x7e]+$",
        description="send the same key when retrying: the retry is answered `duplicate`",
    ),
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    by_role: TaskOwner | None = Field(
        None, description="the owner role the person acts in (default: the task's owner)"
    )


class CompleteIn(_Body):
    pass


class ClaimIn(_Body):
    pass


class CancelIn(_Body):
    reason: str = Field(
        pattern=r"^[a-z][a-z0-9_]{0,47}$",
        description="a reason code, never prose (e.g. `not_applicable`, `client_declined`)",
        examples=["not_applicable"],
    )


class ReassignIn(_Body):
    to_role: TaskOwner


class TaskEventOut(BaseModel):
    id: str
    source: str
    type: str


class TaskActionOut(BaseModel):
    outcome: Literal["accepted", "duplicate"]
    event: TaskEventOut
    reasons: list[dict[str, str]]
    task: TaskOut | None


_RESPONSES = {200: {"model": TaskActionOut}, **errors_for(400, 401, 403, 404, 409, 422, 503)}


def _act(request: Request, action: TaskAction, idempotency_key: str | None) -> Response:
    ctx = services(request)

    def record(items: list[RawInput]) -> list[IngestResult]:
        return ctx.writer.submit(items).result()

    try:
        with recording_refusals(log, "task action"):
            result = act_on_task(
                ctx.store,
                record,
                action,
                actor=principal(request).name,
                at=server_now(),
                idempotency_key=idempotency_key,
            )
    except TaskNotFound:
        raise ApiError(404, "not_found", "no such task", task_id=action.task_id) from None
    except TaskAlreadyClosed as closed:
        raise ApiError(
            409,
            "task_closed",
            f"the task is already {closed.task.status}",
            task=closed.task.as_dict(),
        ) from None
    except InvalidTaskAction as invalid:
        raise ApiError(
            422,
            "invalid_parameter",
            "the action breaks the event contract",
            reasons=[reason.as_dict() for reason in invalid.reasons],
        ) from None
    log.info(
        "task %s action=%s outcome=%s event=%s",
        action.task_id,
        action.action,
        result.outcome,
        result.event_id,
    )
    if result.outcome not in ("accepted", "duplicate"):
        raise ApiError(
            409,
            "refused",
            f"the action was {result.outcome}",
            outcome=result.outcome,
            reasons=[reason.as_dict() for reason in result.reasons],
        )
    return json_response(result.as_dict())


ActOnTasks = Annotated[object, Depends(require(Permission.ACT_ON_TASKS))]


@router.post(
    "/v1/tasks/{task_id}/complete",
    summary="Complete a task (recorded as `operations.task_completed`)",
    response_model=None,
    responses=_RESPONSES,
)
def complete_task(
    request: Request,
    task_id: TaskIdPath,
    _: ActOnTasks,
    idempotency_key: IdempotencyKey = None,
    body: CompleteIn | None = None,
) -> Response:
    by_role = body.by_role if body else None
    return _act(request, TaskAction("complete", task_id, by_role=by_role), idempotency_key)


@router.post(
    "/v1/tasks/{task_id}/claim",
    summary="Claim a task: someone is on it (status `in-progress`; `operations.task_claimed`)",
    response_model=None,
    responses=_RESPONSES,
)
def claim_task(
    request: Request,
    task_id: TaskIdPath,
    _: ActOnTasks,
    idempotency_key: IdempotencyKey = None,
    body: ClaimIn | None = None,
) -> Response:
    by_role = body.by_role if body else None
    return _act(request, TaskAction("claim", task_id, by_role=by_role), idempotency_key)


@router.post(
    "/v1/tasks/{task_id}/cancel",
    summary="Cancel a task that no longer applies, with a reason code "
    "(`operations.task_cancelled`)",
    response_model=None,
    responses=_RESPONSES,
)
def cancel_task(
    request: Request,
    task_id: TaskIdPath,
    body: CancelIn,
    _: ActOnTasks,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    action = TaskAction("cancel", task_id, by_role=body.by_role, reason=body.reason)
    return _act(request, action, idempotency_key)


@router.post(
    "/v1/tasks/{task_id}/reassign",
    summary="Hand a task to another role's queue (`operations.task_reassigned`)",
    response_model=None,
    responses=_RESPONSES,
)
def reassign_task(
    request: Request,
    task_id: TaskIdPath,
    body: ReassignIn,
    _: ActOnTasks,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    action = TaskAction("reassign", task_id, by_role=body.by_role, to_role=body.to_role)
    return _act(request, action, idempotency_key)


class KeyOut(BaseModel):
    name: str
    role: str
    may_act_on_tasks: bool
    may_read_history: bool
    may_read_rejections: bool


@router.get(
    "/v1/me",
    tags=["operations"],
    summary="What the presented key may do (so a screen offers only the actions it allows)",
    response_model=KeyOut,
    responses=errors_for(401, 403),
)
def me(request: Request, _: Annotated[object, Depends(require(Permission.READ_TASKS))]) -> KeyOut:
    key = principal(request)
    return KeyOut(
        name=key.name,
        role=key.role,
        may_act_on_tasks=key.may(Permission.ACT_ON_TASKS),
        may_read_history=key.may(Permission.READ_HISTORY),
        may_read_rejections=key.may(Permission.READ_REJECTIONS),
    )
