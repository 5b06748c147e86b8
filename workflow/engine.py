"""The engine: `apply(client, event) → Outcome`, pure and deterministic.

The outcome depends only on the client snapshot, the event, the policy and the pathway
release: no clock, no randomness, no process state. The same function applies an event the
first time, on a retry of a parked event, on replay and in `kapflow verify`.

Events are facts (SPEC §3). A fact of care that breaks a rule is still recorded — the
state follows what happened and the usual tasks open — as a *deviation* naming the rules,
with a review task for a person. Only what cannot be a fact about this client (a
contradiction of settled facts) is rejected; what refers to a fact not heard of yet is
parked.
"""

from __future__ import annotations

from dataclasses import dataclass

from events.envelope import CloudEvent
from events.registry import Reason
from workflow.client import ClientSnapshot
from workflow.deviations import LATE_FACTS, open_deviation_review, rejudge_dosings, to_timeline
from workflow.handlers import HANDLERS, Effects, TaskEffect
from workflow.handlers.holds import queue_the_hold
from workflow.policy import DEFAULT_POLICY, CarePolicy
from workflow.releases import CURRENT_RELEASE, PathwayRelease
from workflow.states.compiled import (
    ANY_STATE_VALIDATORS,
    TRANSITIONS,
    CompiledTransition,
    forced_target,
    is_premature,
)
from workflow.states.pathway import TRIGGERS
from workflow.states.rules import NOT_IN_CARE, NotYetKnown, RuleContext, RuleViolation
from workflow.tasks import iso

ACCEPTED = "accepted"
DEVIATION = "deviation"
DUPLICATE = "duplicate"
REJECTED = "rejected"
PARKED = "parked"
RECORDED = frozenset({ACCEPTED, DEVIATION})  # outcomes that append to the history


@dataclass(slots=True)  # a value: never mutated after construction
class Outcome:
    outcome: str
    reasons: tuple[Reason, ...]  # why rejected or parked, or the rules a deviation broke
    client: ClientSnapshot  # the client after the event (unchanged unless recorded)
    from_state: str
    to_state: str
    task_changes: tuple[TaskEffect, ...] = ()
    pathway_version: str = CURRENT_RELEASE.version
    # Earlier deviations this fact resolved or revealed (a late fact re-judges them).
    rejudged: tuple[dict[str, object], ...] = ()
    # A late fact: how many later facts were applied again after it (workflow/derivation),
    # and the ids of those whose effect is now pending (no longer possible at their time).
    rederived: int = 0
    pending: tuple[str, ...] = ()

    @property
    def recorded(self) -> bool:
        return self.outcome in RECORDED

    def record(self) -> dict[str, object]:
        """What history keeps of a recorded outcome and `verify` recomputes."""
        record: dict[str, object] = {
            "from_state": self.from_state,
            "to_state": self.to_state,
            "tasks": [change.as_dict() for change in self.task_changes],
            "reasons": self.client.reasons,
        }
        if self.outcome == DEVIATION:
            record["outcome"] = DEVIATION
            record["deviations"] = [reason.as_dict() for reason in self.reasons]
        if self.rejudged:
            record["rejudged"] = list(self.rejudged)
        if self.rederived:
            record["rederived"] = self.rederived
        if self.pending:
            record["pending"] = list(self.pending)
        return record


EXPIRED = "PREMATURE_EXPIRED"


def recorded_after_expiry(record: dict[str, object]) -> bool:
    """A history entry of a fact recorded when its parking window ended: replay and verify
    apply it the same way (`apply(..., expired=True)`)."""
    deviations = record.get("deviations")
    if not isinstance(deviations, list):
        return False
    return any(reason.get("code") == EXPIRED for reason in deviations)


def _refused(client: ClientSnapshot, outcome: str, reasons: tuple[Reason, ...]) -> Outcome:
    return Outcome(outcome, reasons, client, client.state, client.state)


def select_transition(
    ctx: RuleContext, trigger: str
) -> tuple[CompiledTransition | None, tuple[Reason, ...]]:
    """The transition the pathway takes, as python-statemachine would choose it, and the
    protocol rules the event broke on the way (a deviation, when the release records them).

    Raises RuleViolation when the event cannot be recorded (a contradiction, or any broken
    rule under a release that rejected rule breaks); NotYetKnown when it refers to a fact
    not heard of yet.
    """
    records_deviations = ctx.release.records_deviations
    options = TRANSITIONS.get((ctx.client.state, trigger))
    if options is None:
        for validate in ANY_STATE_VALIDATORS.get(trigger, ()):
            try:
                validate(ctx)
            except RuleViolation as violation:
                if violation.contradiction or not records_deviations:
                    raise
        return None, ()
    for option in options:
        broken: tuple[Reason, ...] = ()
        try:
            for validate in option.validators:
                validate(ctx)
        except RuleViolation as violation:
            if violation.contradiction or not records_deviations:
                raise
            broken = violation.reasons
        if option.selected(ctx):
            return option, broken
    return None, ()


# Facts of the main line that move where a hold returns to, judged as from that state.
_ADVANCES_A_HOLD = frozenset({"complete_evaluation", "complete_preparation"})


def _held_through(
    client: ClientSnapshot, trigger: str, release: PathwayRelease
) -> ClientSnapshot | None:
    """On hold, a fact the hold has no transition for (an assessment, a clearance) is judged
    from the state the hold will return to (2026.12.1 on: facts fold in event-time order,
    so a hold must not turn a fact of care into one that waits forever)."""
    if client.state != "on_hold" or not release.derives_from_facts or client.held_from is None:
        return None
    if (client.held_from, trigger) not in TRANSITIONS:
        return None
    if ("on_hold", trigger) in TRANSITIONS and trigger not in _ADVANCES_A_HOLD:
        return None
    as_held = client.copy()
    as_held.state = client.held_from
    return as_held


def apply(
    client: ClientSnapshot,
    event: CloudEvent,
    policy: CarePolicy = DEFAULT_POLICY,
    release: PathwayRelease = CURRENT_RELEASE,
    *,
    expired: bool = False,
) -> Outcome:
    """Apply one event. `expired`: a parked fact still premature after the parking window,
    which is now recorded as it happened (a deviation), never dropped."""
    if release.judges_at_event_time and not client.timeline:
        client = to_timeline(client)
    trigger = TRIGGERS[event.type]
    at = iso(event.time)
    held = _held_through(client, trigger, release)
    ctx = RuleContext(held or client, event, policy, release, at)
    forced = False  # recorded although still premature: its parking window ended
    try:
        chosen, broken = select_transition(ctx, trigger)
    except NotYetKnown as unknown:
        if not expired:
            return _refused(client, PARKED, unknown.reasons)
        chosen, broken, forced = None, unknown.reasons, True
    except RuleViolation as violation:
        return _refused(client, REJECTED, violation.reasons)
    target = chosen.target if chosen is not None else None
    if target is None:
        premature = is_premature(client.state, client.held_from, trigger)
        if premature and not expired:
            reason = Reason("PREMATURE", f"not yet possible in state {client.state}")
            return _refused(client, PARKED, (reason,))
        if not (expired and release.records_deviations):
            reason = Reason(
                "ILLEGAL_TRANSITION", f"{event.type} is not allowed in state {client.state}"
            )
            return _refused(client, REJECTED, (reason,))
        target, forced = forced_target(ctx, trigger), True
    # Folding facts in event-time order, a fact once recorded on expiry is premature no more
    # when what it waited for arrives later: only a fact still premature is flagged.
    if expired and (forced or not release.derives_from_facts):
        hours = int(policy.parking_window.total_seconds() // 3600)
        broken = (
            Reason(EXPIRED, f"still premature {hours} h after it happened"),
            *broken,
        )

    if client.timeline and client.state in NOT_IN_CARE and (client.exited_at or "") > at:
        target = client.state  # it happened before the client left care: they stay out
    after = client.copy()
    after.state = target
    if after.timeline:
        if target == "on_hold" and client.state != "on_hold":
            after.hold_since = at
        if target in NOT_IN_CARE and client.state not in NOT_IN_CARE:
            after.exited_at = at
    if target == "on_hold" and client.state != "on_hold":
        after.held_from = client.state
    elif client.state == "on_hold" and target != "on_hold":
        after.held_from = None
    if held is not None:
        # A fact of the pathway during a hold: the hold stays, and its release returns the
        # client to where that fact took them (the handlers see that target).
        after.state, after.held_from = "on_hold", target
    effects = Effects(
        event=event,
        before=held or client,
        after=after,
        policy=policy,
        target=target,
        release=release,
        at=at,
    )
    HANDLERS[event.type](effects)
    if broken:
        open_deviation_review(effects, broken)
    if release.queues_every_hold:
        queue_the_hold(effects)
    # A fact older than the client's facts under a release before 2026.12.1 (which folds
    # facts in event-time order instead, workflow/derivation.py) re-judges later dosings.
    rejudged = rejudge_dosings(effects) if event.type in LATE_FACTS and after.timeline else ()
    after.seq = client.seq + 1
    after.last_event_time = effects.at
    if not event.type.startswith("system."):
        after.last_activity_time = effects.at
    return Outcome(
        DEVIATION if broken else ACCEPTED,
        broken,
        after,
        client.state,
        after.state,
        tuple(effects.task_changes),
        release.version,
        rejudged,
    )
