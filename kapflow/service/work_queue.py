"""The work queue's actions: staff complete, claim, cancel and reassign follow-up tasks.

Why it lives here: the HTTP service (`POST /v1/tasks/{id}/complete`), the command line
(`kapflow tasks complete ID`) and the dashboard's buttons do the same thing, so it is written
once, below them. An action is not a side door into the task table: it becomes an
`operations.*` CloudEvent recorded through the normal write path (the single writer under
`serve`), so it sits in the client's history, the outbox and the live stream, and a replay
rebuilds the queue exactly.

Idempotency: every event is idempotent on (`source`, `id`). A caller that may retry sends an
idempotency key; the event id is then derived from the caller, the action, the task and that
key, so the retry is answered `duplicate` and changes nothing. Without a key each request is
a new event (an id drawn at random here, in the service layer: the engine never sees
randomness, only the recorded id).

Accountability (SPEC §6): the event names who acted, `actor` (the person's OpenID Connect
subject, the API key's name, or the CLI's operating-system user), so the history entry that
records the act names them; `by_role` is the role they acted in.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from events import CloudEvent, Reason, parse_event_object
from kapflow.service.ingest import IngestResult, RawInput
from kapflow.store.base import EventStore
from workflow.tasks import Task, iso

OPERATIONS_SOURCE = "urn:kapflow:operations"

# Action (as in the URL and the CLI) → the operations event that records it.
ACTIONS: dict[str, str] = {
    "complete": "operations.task_completed",
    "claim": "operations.task_claimed",
    "cancel": "operations.task_cancelled",
    "reassign": "operations.task_reassigned",
}

Record = Callable[[list[RawInput]], list[IngestResult]]


class TaskNotFound(LookupError):
    """No task has this id."""


class TaskAlreadyClosed(RuntimeError):
    """The task is completed or cancelled: there is nothing left to act on."""

    def __init__(self, task: Task) -> None:
        super().__init__(f"task {task.id} is already {task.status}")
        self.task = task


class InvalidTaskAction(ValueError):
    """The action's parameters break the event contract (e.g. a reason that is not a code)."""

    def __init__(self, reasons: tuple[Reason, ...]) -> None:
        super().__init__("; ".join(reason.message for reason in reasons))
        self.reasons = reasons


@dataclass(frozen=True, slots=True)
class TaskAction:
    """What a member of staff asks for. `by_role` is the owner role they act in (default:
    the task's owner); `reason` is a cancellation code; `to_role` the new owner."""

    action: str
    task_id: str
    by_role: str | None = None
    reason: str | None = None
    to_role: str | None = None

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown task action {self.action!r}")

    @property
    def event_type(self) -> str:
        return ACTIONS[self.action]

    def data(self, task: Task, actor: str) -> dict[str, Any]:
        data: dict[str, Any] = {
            "task_id": task.id,
            "by_role": self.by_role or task.owner,
            "actor": actor,
        }
        if self.action == "cancel":
            data["reason"] = self.reason
        if self.action == "reassign":
            data["to_role"] = self.to_role
        return data

    def event(self, task: Task, event_id: str, at: datetime, actor: str) -> dict[str, Any]:
        return {
            "specversion": "1.0",
            "id": event_id,
            "source": OPERATIONS_SOURCE,
            "type": self.event_type,
            "subject": task.for_,
            "time": iso(at),
            "datacontenttype": "application/json",
            "data": self.data(task, actor),
        }


def action_event_id(action: TaskAction, actor: str, idempotency_key: str | None) -> str:
    if idempotency_key is None:
        return f"ops-{uuid.uuid4().hex}"
    name = f"{actor}\x1f{action.action}\x1f{action.task_id}\x1f{idempotency_key}"
    return "ops-" + hashlib.sha256(name.encode()).hexdigest()[:32]


@dataclass(slots=True)
class TaskActionResult:
    outcome: str  # accepted | duplicate (rejected/parked only if the client's state forbids)
    event_id: str
    event_type: str
    task: Task | None  # the task as it stands after the action
    reasons: tuple[Reason, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "event": {"id": self.event_id, "source": OPERATIONS_SOURCE, "type": self.event_type},
            "reasons": [reason.as_dict() for reason in self.reasons],
            "task": self.task.as_dict() if self.task is not None else None,
        }


def _already_recorded(store: EventStore, client_id: str, event_id: str) -> bool:
    return any(
        entry.source == OPERATIONS_SOURCE and entry.event_id == event_id
        for entry in store.history(client_id)
    )


def act_on_task(
    store: EventStore,
    record: Record,
    action: TaskAction,
    *,
    actor: str,
    at: datetime,
    idempotency_key: str | None = None,
) -> TaskActionResult:
    """Record `action`, done by `actor` (who: a person's subject or a key's name, recorded in
    the event), as an operations event at time `at` (the caller's clock: the moment staff
    acted) through `record`, and return the outcome with the task as it now stands."""
    task = store.task(action.task_id)
    if task is None:
        raise TaskNotFound(action.task_id)
    event_id = action_event_id(action, actor, idempotency_key)
    # A retry with the same Idempotency-Key is the same act: a duplicate, whether or not the
    # task is still open (its event, rebuilt at the retry's time, would be ID_REUSED).
    if idempotency_key is not None and _already_recorded(store, task.for_, event_id):
        return TaskActionResult("duplicate", event_id, action.event_type, task)
    if not task.is_open:
        raise TaskAlreadyClosed(task)
    event = action.event(task, event_id, at, actor)
    parsed = parse_event_object(event)
    if not isinstance(parsed, CloudEvent):
        raise InvalidTaskAction(parsed.reasons)
    [result] = record([parsed])
    return TaskActionResult(
        result.outcome, event_id, action.event_type, store.task(task.id), result.reasons
    )
