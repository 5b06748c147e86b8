"""Events from the operations team's tools: the work queue's actions on tasks.

Some tasks are fulfilled outside the pathway (an invoice sent, a prescriber notified, a
reminder delivered); `task_completed` records that, so the task closes and its deadline
stops. Staff also claim a task (someone is on it), cancel one that no longer applies (with
a reason code, never prose) and hand one to another role. Each is a fact recorded in the
client's history like any other, so replay rebuilds the queue exactly. Break-glass (an
emergency, time-limited read of one client) is recorded the same way, so the grant is a fact
of the client's history that every process reads alike.

Every one names who acted (`actor`, SPEC §6 accountability): the person's OpenID Connect
subject or the API key's name, a short token like any other id (never a name with spaces).
It is required of every new event; an event recorded before release 2026.12.1 named no one
and is read back with `actor` None (events/upcasting.py).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, ValidationInfo
from pydantic_core import PydanticCustomError

from events.envelope import CloudEvent, Code, EventData, ReasonCode

# The roles that own tasks: the one list (FHIR `Task.owner`; `workflow.tasks.Owner` names
# each, the published task model and the work queue's bodies use it).
TaskOwner = Literal["scheduler", "clinician", "billing", "prescriber_liaison", "client"]


def _named(actor: str | None, info: ValidationInfo) -> str | None:
    # None only in an event recorded before actors were named (read back through the
    # upcaster, in the RECORDED context): a new act always names its person or service.
    if actor is None and not (info.context or {}).get("recorded"):
        raise PydanticCustomError("actor_required", "names who acted: a person or service id")
    return actor


# Who acted: the person's OIDC `sub` or the API key's name. The default lets a store that
# release 2026.12.1 wrote before actors were named read back; a new event without one is
# refused all the same (the validator runs on the default).
Actor = Annotated[Code | None, AfterValidator(_named)]
_ACTOR = (
    "who acted: the person's OpenID Connect subject or the API key's name (a short token); "
    "required of new events, null only in events recorded before release 2026.12.1"
)


class TaskCompletedData(EventData):
    task_id: Code
    resolution: Literal["completed", "cancelled"] = "completed"
    by_role: TaskOwner
    actor: Actor = Field(None, validate_default=True, description=_ACTOR)


class TaskCompleted(CloudEvent):
    type: Literal["operations.task_completed"]
    data: TaskCompletedData


class TaskClaimedData(EventData):
    task_id: Code
    by_role: TaskOwner
    actor: Actor = Field(None, validate_default=True, description=_ACTOR)


class TaskClaimed(CloudEvent):
    """Someone in `by_role` has started on the task (FHIR status `in-progress`)."""

    type: Literal["operations.task_claimed"]
    data: TaskClaimedData


class TaskCancelledData(EventData):
    task_id: Code
    reason: ReasonCode  # e.g. `not_applicable`, `duplicate_request`, `client_declined`
    by_role: TaskOwner
    actor: Actor = Field(None, validate_default=True, description=_ACTOR)


class TaskCancelled(CloudEvent):
    """The task no longer applies; the reason code is kept in the task's note."""

    type: Literal["operations.task_cancelled"]
    data: TaskCancelledData


class TaskReassignedData(EventData):
    task_id: Code
    to_role: TaskOwner
    by_role: TaskOwner
    actor: Actor = Field(None, validate_default=True, description=_ACTOR)


class TaskReassigned(CloudEvent):
    """The task now belongs to another role's queue (its due time is unchanged)."""

    type: Literal["operations.task_reassigned"]
    data: TaskReassignedData


class BreakGlassInvokedData(EventData):
    actor: Code  # who broke the glass: always named, this type never existed without it
    reason: ReasonCode  # e.g. `emergency_care`, `safety_concern`: a code, never prose
    minutes: int = Field(ge=1, le=24 * 60)  # how long the emergency read grant lasts


class BreakGlassInvoked(CloudEvent):
    """Someone read this client's record in an emergency, beyond what their role allows
    (issue 18): `actor` may read the client until the event's time plus `minutes`, and a
    clinician reviews the access afterwards."""

    type: Literal["operations.break_glass_invoked"]
    data: BreakGlassInvokedData


OPERATIONS_EVENTS: tuple[type[CloudEvent], ...] = (
    TaskCompleted,
    TaskClaimed,
    TaskCancelled,
    TaskReassigned,
    BreakGlassInvoked,
)
