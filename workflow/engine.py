"""The engine: `apply(client, event) → Outcome`, pure and deterministic.

The outcome depends only on the client snapshot, the event and the policy: no clock,
no randomness, no process state. The same function applies an event the first time,
on a retry of a parked event, on replay and in `kapflow verify`.
"""

from __future__ import annotations

from dataclasses import dataclass

from events.envelope import CloudEvent
from events.registry import Reason
from workflow.client import ClientSnapshot
from workflow.handlers import HANDLERS, Effects, TaskChange
from workflow.policy import DEFAULT_POLICY, CarePolicy
from workflow.states.compiled import (
    ANY_STATE_VALIDATORS,
    TRANSITIONS,
    CompiledTransition,
    is_premature,
)
from workflow.states.pathway import PATHWAY_VERSION, TRIGGERS
from workflow.states.rules import RuleContext, RuleViolation

ACCEPTED = "accepted"
DUPLICATE = "duplicate"
REJECTED = "rejected"
PARKED = "parked"


@dataclass(slots=True)  # a value: never mutated after construction
class Outcome:
    outcome: str
    reasons: tuple[Reason, ...]
    client: ClientSnapshot  # the client after the event (unchanged unless accepted)
    from_state: str
    to_state: str
    task_changes: tuple[TaskChange, ...] = ()
    pathway_version: str = PATHWAY_VERSION

    @property
    def accepted(self) -> bool:
        return self.outcome == ACCEPTED

    def record(self) -> dict[str, object]:
        """The part of an accepted outcome that history keeps and `verify` recomputes."""
        return {
            "from_state": self.from_state,
            "to_state": self.to_state,
            "tasks": [change.as_dict() for change in self.task_changes],
            "reasons": self.client.reasons,
        }


def _refused(client: ClientSnapshot, outcome: str, reasons: tuple[Reason, ...]) -> Outcome:
    return Outcome(outcome, reasons, client, client.state, client.state)


def select_transition(ctx: RuleContext, trigger: str) -> CompiledTransition | None:
    """The transition the pathway takes, as python-statemachine would choose it.

    Raises RuleViolation when a validator refuses the event.
    """
    options = TRANSITIONS.get((ctx.client.state, trigger))
    if options is None:
        for validate in ANY_STATE_VALIDATORS.get(trigger, ()):
            validate(ctx)
        return None
    for option in options:
        for validate in option.validators:
            validate(ctx)
        if option.selected(ctx):
            return option
    return None


def apply(
    client: ClientSnapshot, event: CloudEvent, policy: CarePolicy = DEFAULT_POLICY
) -> Outcome:
    trigger = TRIGGERS[event.type]
    ctx = RuleContext(client, event, policy)
    try:
        chosen = select_transition(ctx, trigger)
    except RuleViolation as violation:
        return _refused(client, REJECTED, violation.reasons)
    if chosen is None:
        if is_premature(client.state, client.held_from, trigger):
            reason = Reason("PREMATURE", f"not yet possible in state {client.state}")
            return _refused(client, PARKED, (reason,))
        reason = Reason(
            "ILLEGAL_TRANSITION", f"{event.type} is not allowed in state {client.state}"
        )
        return _refused(client, REJECTED, (reason,))

    after = client.copy()
    after.state = chosen.target
    if chosen.target == "on_hold" and client.state != "on_hold":
        after.held_from = client.state
    elif client.state == "on_hold" and chosen.target != "on_hold":
        after.held_from = None
    effects = Effects(event=event, before=client, after=after, policy=policy, target=chosen.target)
    HANDLERS[event.type](effects)
    after.seq = client.seq + 1
    after.last_event_time = effects.at
    if not event.type.startswith("system."):
        after.last_activity_time = effects.at
    return Outcome(ACCEPTED, (), after, client.state, chosen.target, tuple(effects.task_changes))
