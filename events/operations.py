"""Events from the operations team's tools: the work queue's actions on tasks.

Some tasks are fulfilled outside the pathway (an invoice sent, a prescriber notified, a
reminder delivered); `task_completed` records that, so the task closes and its deadline
stops. Staff also claim a task (someone is on it), cancel one that no longer applies (with
a reason code, never prose) and hand one to another role. Each is a fact recorded in the
client's history like any other, so replay rebuilds the queue exactly.
"""

from __future__ import annotations

from typing import Literal

from events.envelope import CloudEvent, Code, EventData, ReasonCode

# The roles that own tasks: the one list (FHIR `Task.owner`; `workflow.tasks.Owner` names
# each, the published task model and the work queue's bodies use it).
TaskOwner = Literal["scheduler", "clinician", "billing", "prescriber_liaison", "client"]


class TaskCompletedData(EventData):
    task_id: Code
    resolution: Literal["completed", "cancelled"] = "completed"
    by_role: TaskOwner


class TaskCompleted(CloudEvent):
    type: Literal["operations.task_completed"]
    data: TaskCompletedData


class TaskClaimedData(EventData):
    task_id: Code
    by_role: TaskOwner


class TaskClaimed(CloudEvent):
    """Someone in `by_role` has started on the task (FHIR status `in-progress`)."""

    type: Literal["operations.task_claimed"]
    data: TaskClaimedData


class TaskCancelledData(EventData):
    task_id: Code
    reason: ReasonCode  # e.g. `not_applicable`, `duplicate_request`, `client_declined`
    by_role: TaskOwner


class TaskCancelled(CloudEvent):
    """The task no longer applies; the reason code is kept in the task's note."""

    type: Literal["operations.task_cancelled"]
    data: TaskCancelledData


class TaskReassignedData(EventData):
    task_id: Code
    to_role: TaskOwner
    by_role: TaskOwner


class TaskReassigned(CloudEvent):
    """The task now belongs to another role's queue (its due time is unchanged)."""

    type: Literal["operations.task_reassigned"]
    data: TaskReassignedData


OPERATIONS_EVENTS: tuple[type[CloudEvent], ...] = (
    TaskCompleted,
    TaskClaimed,
    TaskCancelled,
    TaskReassigned,
)
