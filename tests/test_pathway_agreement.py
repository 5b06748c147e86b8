"""The engine's compiled table agrees with the python-statemachine pathway everywhere.

For every state × event × a spread of client facts and event variants, the fast path
must choose exactly what the machine chooses: the same target, the same refusal.
"""

from __future__ import annotations

import itertools
import warnings
from typing import Any

import pytest
from builders import Journey
from statemachine.exceptions import TransitionNotAllowed

from events import CloudEvent, parse_event_object
from workflow.client import ClientSnapshot
from workflow.deviations import to_timeline
from workflow.engine import apply, select_transition
from workflow.policy import DEFAULT_POLICY
from workflow.states.pathway import TRIGGERS, CarePathway
from workflow.states.rules import NotYetKnown, RuleContext, RuleViolation
from workflow.timers import SUBSCRIPTION_END, timer_id

PAID_UNTIL = "2026-12-01"


def _event(raw: dict[str, Any]) -> CloudEvent:
    event = parse_event_object(raw)
    assert isinstance(event, CloudEvent), event
    return event


def event_variants() -> list[CloudEvent]:
    j = Journey("c-1")
    raw = [
        j.inquiry(),
        j.booking("dosing", "d-1"),
        j.cancellation("dosing", "d-1"),
        j.no_show("assessment", "a-1"),
        j.chaperone("d-1"),
        j.withdrawal(),
        j.assessment(),
        j.assessment(age=17),
        j.assessment(mania=True, maoi=True),
        j.evaluation("journey_clinical"),
        j.evaluation("joyous"),
        j.evaluation("joyous", pathway="high_dose"),
        j.evaluation(outcome="not_cleared"),
        j.renewal("journey_clinical"),
        j.renewal("joyous"),
        j.revocation("journey_clinical"),
        j.revocation("joyous"),
        j.lapse(),
        j.preparation(1, ready=True),
        j.preparation(2, ready=False),
        j.dosing_started("s-1"),
        j.dosing_started("s-1", chaperone=False),
        j.dosing_started("s-1", pathway="low_dose", abstinence=False),
        j.dosing_completed("s-1"),
        j.dosing_completed("s-2", released=False),
        j.integration("s-1"),
        j.integration("s-9"),
        j.adverse_event("mild"),
        j.adverse_event("severe"),
        j.hold(),
        j.release(),
        j.course_completed(),
        j.reassessment(),
        j.deadline("t-1"),
        j.deadline(timer_id("c-1", SUBSCRIPTION_END, PAID_UNTIL)),
        j.event(
            "operations.task_completed", {"task_id": "t-1", "by_role": "billing", "actor": "bo"}
        ),
        j.event("operations.task_claimed", {"task_id": "t-1", "by_role": "billing", "actor": "bo"}),
        j.event(
            "operations.task_cancelled",
            {"task_id": "t-1", "reason": "not_applicable", "by_role": "billing", "actor": "bo"},
        ),
        j.event(
            "operations.task_reassigned",
            {"task_id": "t-1", "to_role": "clinician", "by_role": "billing", "actor": "bo"},
        ),
        j.event(
            "operations.break_glass_invoked",
            {"actor": "bo", "reason": "emergency_care", "minutes": 30},
        ),
    ]
    return [_event(item) for item in raw]


def client_variants(state: str) -> list[ClientSnapshot]:
    """Facts that flip each guard and validator: prescriber, readiness, integration owed,
    doses used, subscription, the state a hold came from."""
    variants = []
    holds = ("prepared", "dosed", "assessed") if state == "on_hold" else (None,)
    for prescriber, ready, awaiting, held_from in itertools.product(
        (None, "journey_clinical", "joyous"), (False, True), (False, True), holds
    ):
        pathway = {"journey_clinical": "high_dose", "joyous": "low_dose"}.get(prescriber or "")
        spent = awaiting and ready  # vary doses and subscription along with the others
        variants.append(
            ClientSnapshot(
                "c-1",
                state=state,
                prescriber=prescriber,
                pathway=pathway,
                clearance_valid_until="2026-12-31" if prescriber else None,
                doses_authorized=2 if pathway == "high_dose" else 0,
                doses_used=2 if spent else 0,
                subscription_active=pathway == "low_dose" and not spent,
                subscription_paid_until=PAID_UNTIL if pathway == "low_dose" else None,
                preparation_sessions=1 if ready else 0,
                ready_for_dosing=ready,
                awaiting_integration=awaiting,
                current_dosing_session="s-1" if awaiting or ready else None,
                dosing_completed=ready and not awaiting,
                held_from=held_from,
                hold_reasons=["R10"] if state == "on_hold" else [],
            )
        )
    return variants


def machine_decision(client: ClientSnapshot, event: CloudEvent) -> tuple[str, Any]:
    ctx = RuleContext(client, event, DEFAULT_POLICY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        machine = CarePathway(start_value=client.state)
        try:
            machine.send(TRIGGERS[event.type], ctx=ctx)
        except NotYetKnown as unknown:
            return ("not_yet_known", tuple(r.code for r in unknown.reasons))
        except RuleViolation as violation:
            kind = "refused" if violation.contradiction else "broke"
            return (kind, tuple(r.code for r in violation.reasons))
        except TransitionNotAllowed:
            return ("not_allowed", None)
        return ("moved", machine.current_state_value)


def fast_decision(client: ClientSnapshot, event: CloudEvent) -> tuple[str, Any]:
    ctx = RuleContext(client, event, DEFAULT_POLICY)
    try:
        chosen, broken = select_transition(ctx, TRIGGERS[event.type])
    except NotYetKnown as unknown:
        return ("not_yet_known", tuple(r.code for r in unknown.reasons))
    except RuleViolation as violation:
        return ("refused", tuple(r.code for r in violation.reasons))
    if chosen is None:
        return ("not_allowed", None)
    if broken:
        return ("broke", tuple(r.code for r in broken))
    return ("moved", chosen.target)


def machine_targets(state: str, event: CloudEvent) -> set[str]:
    trigger = TRIGGERS[event.type]
    return {
        transition.target.id
        for source in CarePathway.states
        if source.id == state
        for transition in source.transitions
        if trigger in str(transition.event).split()
    }


STATES = [state.id for state in CarePathway.states]


@pytest.mark.parametrize("state", STATES)
def test_fast_path_agrees_with_the_machine_in_every_state(state: str) -> None:
    events = event_variants()
    checked = 0
    for variant in client_variants(state):
        # Facts kept with their event times, as the engine keeps them (release 2026.11.4).
        client = to_timeline(variant)
        for event in events:
            machine = machine_decision(client, event)
            fast = fast_decision(client, event)
            if machine[0] == "not_allowed":
                # No transition from here: the engine may still name a contradiction
                # (SPEC §3: what cannot be a fact about the client is rejected at once).
                assert fast[0] in ("not_allowed", "refused"), (state, event.type, fast)
            else:
                # A protocol rule broken ("broke"): the machine refuses the transition, the
                # engine records it as a deviation — with the same rules named.
                assert fast == machine, (state, event.type, client)
            engine = apply(client, event)
            if machine[0] == "moved":
                assert engine.recorded and engine.to_state == machine[1], (state, event.type)
            if machine[0] == "broke":
                assert engine.outcome == "deviation", (state, event.type, engine.reasons)
                assert engine.to_state in machine_targets(state, event)
            if machine[0] == "refused":
                assert engine.outcome == "rejected", (state, event.type)
            checked += 1
    assert checked == len(client_variants(state)) * len(events)


def test_every_event_type_triggers_an_event_of_the_machine() -> None:
    from events import EVENT_TYPES

    assert set(TRIGGERS) == set(EVENT_TYPES)
    machine_events = {event.id for event in CarePathway.events}
    assert set(TRIGGERS.values()) == machine_events


def test_the_published_states_are_the_states_of_the_pathway() -> None:
    from typing import get_args

    from events.outputs import ClientState
    from workflow.states.pathway import CLIENT_STATES

    assert set(get_args(ClientState)) == set(CLIENT_STATES)
