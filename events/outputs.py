"""Contracts of what kapflow publishes (SPEC §5), for consumers and the AsyncAPI document.

Every outgoing message is a structured-mode CloudEvent whose `data` is one of these.
tests/test_asyncapi.py checks that the messages kapflow renders validate against them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from events.operations import TaskOwner
from events.registry import Reason

# The public client states (SPEC §1): part of the published contract. The pathway machine
# declares the same states; tests/test_pathway_agreement.py holds the two together.
ClientState = Literal[
    "inquiry",
    "assessed",
    "cleared",
    "prepared",
    "dosed",
    "integrating",
    "ineligible",
    "on_hold",
    "completed",
    "withdrawn",
]


class _Output(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StateChange(_Output):
    """A client moved from one state to another."""

    client_id: str
    seq: int = Field(ge=1, description="the history entry that made the change")
    from_state: ClientState | None = Field(description="null when the client first appears")
    to_state: ClientState
    event_id: str
    event_type: str
    occurred_at: str = Field(description="RFC 3339: when the triggering event happened")
    recorded_at: str = Field(description="RFC 3339: when kapflow recorded it")
    pathway_version: str
    deviations: list[str] | None = Field(
        None,
        description="present when the event was recorded as a protocol deviation: the rules "
        "it broke (the message is then sent even if the state did not change)",
    )


class FhirShapedTask(_Output):
    """A follow-up task, shaped like the HL7 FHIR `Task` resource."""

    id: str
    status: Literal["requested", "in-progress", "completed", "cancelled"]
    intent: Literal["order"]
    priority: Literal["routine", "urgent", "asap", "stat"]
    code: str
    description: str
    for_: str = Field(alias="for")
    owner: TaskOwner
    focus: str
    authored_on: str
    due: str
    last_modified: str
    amount_usd: str | None = None
    note: str | None = None
    about: str | None = None
    claimed_by: str | None = Field(None, description="who claimed it (an operations actor)")
    completed_by: str | None = Field(None, description="who completed it in the work queue")
    cancelled_by: str | None = Field(None, description="who cancelled it in the work queue")


class TaskChange(_Output):
    """A task was opened, updated (e.g. escalated) or closed."""

    change: Literal["opened", "updated", "closed"]
    client_id: str
    seq: int = Field(ge=1)
    event_id: str
    recorded_at: str
    task: FhirShapedTask


class DeadLetter(_Output):
    """An input kapflow rejected: the original message and machine-readable reasons."""

    id: str | None
    source: str | None
    subject: str | None
    type: str | None
    recorded_at: str
    reasons: list[Reason]
    original: str = Field(description="the original message text")


class ProtocolDeviation(_Output):
    """A fact of care broke a protocol rule, or a late fact resolved or revealed such a break."""

    status: Literal["recorded", "resolved", "revealed", "revised"] = Field(
        description="`recorded`: the event itself was a deviation; for a late fact that "
        "re-judged an earlier dosing at the dosing's own time: `resolved` (no rule broken any "
        "more), `revealed` (a dosing recorded within the protocol broke a rule after all), "
        "`revised` (still a deviation, other rules)"
    )
    client_id: str
    seq: int = Field(ge=1, description="the history entry that records this")
    event_id: str = Field(description="the event that deviated (for a re-judgement: the dosing)")
    session_id: str | None = Field(description="the dosing session, when the event is one")
    rules: list[str] = Field(description="the rules broken now (empty when resolved)")
    previous_rules: list[str] = Field(description="before this re-judgement (empty if recorded)")
    reasons: list[Reason] = Field(description="why, for a recorded deviation")
    review_task_id: str | None = Field(description="the `review-protocol-deviation` task")
    cause_event_id: str = Field(description="the event of the history entry `seq`")
    cause_event_type: str
    occurred_at: str = Field(description="RFC 3339: when the entry's event happened")
    recorded_at: str
    pathway_version: str


class OutgoingCloudEvent(_Output):
    specversion: Literal["1.0"]
    id: str = Field(description="stable per message: de-duplicate on it")
    source: Literal["urn:kapflow"]
    type: str
    subject: str | None
    time: str | None
    datacontenttype: Literal["application/json"]
    data: dict[str, Any]


OUTPUT_MODELS: dict[str, type[_Output]] = {
    "state-changes": StateChange,
    "tasks": TaskChange,
    "rejected": DeadLetter,
    "deviations": ProtocolDeviation,
}
