"""Response shapes, for the OpenAPI document only.

Why models that are not used to build responses: the bodies are the very objects the CLI
prints with `--json` (`IngestResult.as_dict`, `ClientSnapshot.view`, `Task.as_dict`, …), built
once in the service and domain layers. Re-validating them through a second set of models on
every response would cost time and invite drift; instead these models document them, and
the schemathesis test checks every response against the document.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from events.outputs import FhirShapedTask as TaskOut
from events.outputs import Reason as ReasonOut

# Tasks and reasons are documented by the same models that describe them on Kafka
# (events/outputs.py): one definition of each shape for every consumer.

Outcome = Literal["accepted", "deviation", "duplicate", "rejected", "parked"]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class OutcomeOut(_Open):
    """One per published event, in order: `IngestResult.as_dict()` (SPEC §7 ingest line)."""

    id: str | None
    subject: str | None
    type: str | None
    outcome: Outcome
    reasons: list[ReasonOut]
    state: str | None = Field(description="the client's state after the event")


class OpenDeviationOut(_Open):
    """A recorded dosing whose protocol deviation is not resolved yet."""

    session_id: str
    occurred_at: str
    rules: list[str]


class ClientOut(_Open):
    """`kapflow client ID --json` (SPEC §7)."""

    client_id: str
    state: str
    seq: int
    pathway: str | None
    prescriber: str | None
    clearance_valid_until: str | None
    doses_remaining: int | None
    dosing_sessions: int
    subscription_active: bool | None
    preparation_sessions: int
    awaiting_integration: bool
    held_from: str | None
    reasons: list[str]
    parked_events: int
    last_event_time: str | None
    open_deviations: list[OpenDeviationOut] = Field(
        default_factory=list, description="dosings recorded as deviations, not yet resolved"
    )
    open_tasks: list[TaskOut]


class ReplayOut(_Open):
    """`kapflow replay ID --json`: the client as it stood at `as_of` / `known_at`."""

    client_id: str
    state: str | None
    seq: int
    pathway: str | None
    doses_remaining: int | None
    preparation_sessions: int
    reasons: list[str]
    open_tasks: list[TaskOut]
    as_of: str | None
    known_at: str | None
    events_applied: int


class HistoryEntryOut(_Open):
    client_id: str
    seq: int
    source: str
    event_id: str
    type: str
    occurred_at: str
    recorded_at: str
    pathway_version: str
    from_state: str
    to_state: str
    event: dict[str, Any]
    outcome: dict[str, Any]
    prev_hash: str
    hash: str


class FunnelStage(_Open):
    stage: str
    reached: int = Field(description="clients who ever reached this stage")
    current: int = Field(description="clients in this stage now")


class StatsOut(_Open):
    now: str
    pathway_version: str
    clients_total: int
    clients_by_state: dict[str, int]
    clients_awaiting_first_event: int = Field(
        description="clients kapflow knows only through parked events"
    )
    funnel: list[FunnelStage]
    open_tasks: int
    overdue_tasks: int
    open_tasks_by_owner: dict[str, int]
    overdue_tasks_by_owner: dict[str, int]
    totals: dict[str, int]


class RejectionOut(_Open):
    position: int
    source: str | None
    id: str | None
    subject: str | None
    type: str | None
    recorded_at: str
    reasons: list[ReasonOut]
    original: str = Field(description="the message as received (dead letter)")


class ReadinessCheckOut(_Open):
    rule: str = Field(description="R5–R9, HOLD or IN_CARE")
    passed: bool
    checks: str = Field(description="what the item asks, in a clinician's words")
    why: str = Field(description="`ok`, or why the check failed")


class ReadinessOut(_Open):
    """`kapflow check ID --dose --json`: would a dosing at `at` be within the protocol?"""

    client_id: str
    action: Literal["dose"]
    at: str = Field(description="RFC 3339: the time the dosing is judged at")
    state: str | None
    ready: bool = Field(description="every check passed")
    checks: list[ReadinessCheckOut]


class DeviationOut(_Open):
    """`kapflow deviations`: one protocol deviation recorded, with its review."""

    client_id: str
    seq: int = Field(description="the history entry that recorded the deviating event")
    event_id: str
    event_type: str
    occurred_at: str
    recorded_at: str
    pathway_version: str
    rules: list[str] = Field(description="the rules it broke (R-ids or codes such as ON_HOLD)")
    reasons: list[ReasonOut]
    review_task_id: str | None = Field(description="its `review-protocol-deviation` task")
    status: Literal["open", "resolved", "reviewed"] = Field(
        description="`resolved`: a late fact showed no rule broken at the event's time; "
        "`reviewed`: its review task was closed; `open` otherwise"
    )
    resolved_by_event_id: str | None
    revealed_by_event_id: str | None = Field(
        description="a dosing recorded within the protocol that a late fact showed broke a rule"
    )


class ParkedOut(_Open):
    source: str
    id: str
    subject: str
    type: str
    occurred_at: str
    recorded_at: str
    reasons: list[ReasonOut]
    event: dict[str, Any]


class DivergenceOut(_Open):
    client_id: str
    seq: int | None
    kind: str
    detail: str


class AccessLogCheckOut(_Open):
    ok: bool
    rows: int
    head_position: int | None = Field(description="keep it: a later verify must extend it")
    head_hash: str


class VerifyOut(_Open):
    ok: bool
    clients: int
    entries: int
    pathway_version: str
    divergences: list[DivergenceOut]
    access_log: AccessLogCheckOut | None = Field(
        None, description="the access log's hash chain (its divergences are listed above)"
    )


class AccessRecordOut(_Open):
    position: int | None
    at: str
    who: str
    role: str
    action: str
    client_id: str | None
    detail: str | None
    prev_hash: str | None = Field(None, description="hash of the row before (chain link)")
    hash: str | None = Field(None, description="SHA-256 over prev_hash, position and fields")


class TransitionOut(_Open):
    event: str
    source: str
    target: str


class PathwayOut(_Open):
    version: str
    main_line: list[str]
    states: list[str]
    transitions: list[TransitionOut]
    mermaid: str


class HealthOut(_Open):
    status: str
    insecure_dev: bool = False


class ReadyOut(_Open):
    status: str
    database: str
    access_log: str = Field("ok", description="the access log can be written (audited reads)")
    writer: str
