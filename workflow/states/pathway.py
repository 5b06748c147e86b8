"""The KAP care pathway: the one definition of states and transitions.

Read this class to check the protocol: states, then the transitions each event may make,
with guards (`cond`/`unless`) and validators named after the rule they check (rules.py).
The engine runs a table compiled from this class (compiled.py), and a test proves the
two agree on every state and event.
"""

from __future__ import annotations

from typing import Any

from statemachine import State, StateMachine

# Bump (a new release in workflow/releases.py) whenever a transition, rule, task or
# policy default changes an outcome.
from workflow.releases import PATHWAY_VERSION  # noqa: E402,F401 - re-exported
from workflow.states.rules import (
    care_given_in_care,
    cleared_by_prescriber,
    completes_current_dosing,
    dosing_is_safe,
    evaluation_names_matching_pathway,
    integrates_current_dosing,
    integrates_latest_dosing,
    integration_not_owed,
    is_severe,
    lapse_is_of_low_dose_subscription,
    marked_ready,
    meets_eligibility,
    names_clients_prescriber,
    prepared_while_awaiting_clearance,
    renewal_cures_hold,
    returns_to,
    subscription_period_ended,
)


def _stay(*states: State, **options: Any) -> Any:
    """A self-transition in each state: the event is recorded, the state stays."""
    transitions = [state.to.itself(internal=True, **options) for state in states]
    combined = transitions[0]
    for transition in transitions[1:]:
        combined = combined | transition
    return combined


def _each(*states: State, to: State, **options: Any) -> Any:
    transitions = [state.to(to, **options) for state in states]
    combined = transitions[0]
    for transition in transitions[1:]:
        combined = combined | transition
    return combined


def _release(hold: State, *, cond: Any, validators: Any, **targets: State) -> Any:
    """Leave the hold for the state it was placed from (`returns_to`), when `cond` holds.
    Targets are named: inside the class body a State does not know its id yet."""
    transitions = [
        hold.to(state, cond=[cond, returns_to(name)], validators=validators)
        for name, state in targets.items()
    ]
    combined = transitions[0]
    for transition in transitions[1:]:
        combined = combined | transition
    return combined


class CarePathway(StateMachine):
    """Inquiry → assessed → cleared → prepared → dosed → integrating (→ dosed again)."""

    # States -------------------------------------------------------------------------
    new = State("new", initial=True)  # not yet known to kapflow
    inquiry = State()
    assessed = State()
    cleared = State()
    prepared = State()
    dosed = State()
    integrating = State()
    ineligible = State()
    on_hold = State()
    # Terminal for care; not `final`, because billing tasks may still be closed there.
    completed = State()
    withdrawn = State()

    # Groups the transitions below name (plain tuples: not states of their own).
    IN_CARE = (inquiry, assessed, cleared, prepared, dosed, integrating)
    CLEARED_FOR_TREATMENT = (cleared, prepared, dosed, integrating)
    OPEN = (*IN_CARE, on_hold)  # where scheduling facts are recorded
    OUT_OF_CARE = (ineligible, completed, withdrawn)
    KNOWN = (*OPEN, *OUT_OF_CARE)  # every state but `new`
    NOT_READY_FOR_DOSING = (new, inquiry, assessed, cleared, dosed, *OUT_OF_CARE)

    # Intake ---------------------------------------------------------------------------
    receive_inquiry = new.to(inquiry) | inquiry.to.itself(internal=True)
    complete_assessment = inquiry.to(assessed, cond=meets_eligibility) | inquiry.to(
        ineligible, unless=meets_eligibility
    )
    request_reassessment = ineligible.to(inquiry)

    # Independent medical evaluation (R5) ----------------------------------------------
    complete_evaluation = (
        assessed.to(
            prepared,
            cond=[cleared_by_prescriber, prepared_while_awaiting_clearance],
            validators=evaluation_names_matching_pathway,
        )
        | assessed.to(
            cleared, cond=cleared_by_prescriber, validators=evaluation_names_matching_pathway
        )
        | assessed.to(
            ineligible, unless=cleared_by_prescriber, validators=evaluation_names_matching_pathway
        )
    )
    # The prescriber's message overtaken by a dosing: recorded where the client now stands.
    complete_evaluation |= _stay(
        dosed, integrating, on_hold, *OUT_OF_CARE, validators=evaluation_names_matching_pathway
    )
    # A renewal cures a hold placed only because the subscription lapsed (R9): the client
    # returns where they were, as a clinician's release would return them.
    renew_prescription = (
        _stay(*CLEARED_FOR_TREATMENT, validators=names_clients_prescriber)
        | _release(
            on_hold,
            cond=renewal_cures_hold,
            validators=names_clients_prescriber,
            cleared=cleared,
            prepared=prepared,
            dosed=dosed,
            integrating=integrating,
        )
        | _stay(on_hold, *OUT_OF_CARE, validators=names_clients_prescriber)
    )
    revoke_clearance = _each(
        *CLEARED_FOR_TREATMENT, to=on_hold, validators=names_clients_prescriber
    ) | _stay(on_hold, *OUT_OF_CARE, validators=names_clients_prescriber)
    lapse_subscription = _each(
        *CLEARED_FOR_TREATMENT, to=on_hold, validators=lapse_is_of_low_dose_subscription
    ) | _stay(on_hold, *OUT_OF_CARE, validators=lapse_is_of_low_dose_subscription)

    # Preparation (R6) -------------------------------------------------------------------
    complete_preparation = (
        cleared.to(prepared, cond=marked_ready)
        | cleared.to.itself(internal=True, unless=marked_ready)
        | _stay(prepared, dosed, integrating)
        # Preparation while the prescriber's clearance is still awaited, or during a hold:
        # a fact, recorded. After the client left care: recorded, a deviation to review.
        | _stay(inquiry, assessed, on_hold)
        | _stay(*OUT_OF_CARE, validators=care_given_in_care)
    )

    # Dosing and integration (R5–R9, R11, R12) -------------------------------------------
    # A dosing is a fact of care: wherever the client stood, they were dosed. Outside
    # `prepared`/`integrating` (or breaking R5–R9) it is recorded as a protocol deviation.
    start_dosing = (
        _each(prepared, integrating, to=dosed, validators=dosing_is_safe)
        | _each(*NOT_READY_FOR_DOSING, to=dosed, validators=dosing_is_safe)
        | _stay(on_hold, validators=dosing_is_safe)  # the hold stays; release returns to dosed
    )
    complete_dosing = _stay(dosed, integrating, validators=completes_current_dosing) | _stay(
        on_hold, *OUT_OF_CARE, validators=completes_current_dosing
    )
    complete_integration = (
        dosed.to(integrating, cond=integrates_current_dosing, validators=integrates_latest_dosing)
        | _stay(integrating, validators=integrates_latest_dosing)
        | _stay(dosed, unless=integrates_current_dosing, validators=integrates_latest_dosing)
        | _stay(on_hold, *OUT_OF_CARE, validators=integrates_latest_dosing)
    )

    # Safety (R10) and holds ---------------------------------------------------------------
    # R10: a concerning reaction is recorded whatever the state, also after the course.
    report_adverse_event = (
        _each(*IN_CARE, to=on_hold, cond=is_severe)
        | _stay(*IN_CARE, unless=is_severe)
        | _stay(on_hold, new, *OUT_OF_CARE)
    )
    place_hold = _each(*IN_CARE, to=on_hold) | _stay(on_hold, *OUT_OF_CARE)
    release_hold = (
        on_hold.to(inquiry, cond=returns_to("inquiry"))
        | on_hold.to(assessed, cond=returns_to("assessed"))
        | on_hold.to(cleared, cond=returns_to("cleared"))
        | on_hold.to(prepared, cond=returns_to("prepared"))
        | on_hold.to(dosed, cond=returns_to("dosed"))
        | on_hold.to(integrating, cond=returns_to("integrating"))
        # Screened out during the hold (a prescriber did not clear, R5; an assessment, R1–R4).
        | on_hold.to(ineligible, cond=returns_to("ineligible"))
        # Released already (a renewal cured it), or out of care: recorded, nothing changes.
        | _stay(*IN_CARE, *OUT_OF_CARE)
    )

    # Scheduling facts: recorded in every known state (after leaving care too: facts) -------
    # Before the inquiry too: the scheduling system may book before the enquiry is logged.
    book_appointment = _stay(new, *KNOWN)
    cancel_appointment = _stay(new, *KNOWN)
    record_no_show = _stay(new, *KNOWN)
    confirm_chaperone = _stay(new, *KNOWN)

    # Time (kapflow's clock) and tasks closed outside the pathway --------------------------
    reach_deadline = (
        _each(*CLEARED_FOR_TREATMENT, to=on_hold, cond=subscription_period_ended)
        | _stay(*IN_CARE, unless=subscription_period_ended)
        | _stay(on_hold, ineligible, completed, withdrawn)
    )
    complete_task = _stay(*KNOWN)
    claim_task = _stay(*KNOWN)
    cancel_task = _stay(*KNOWN)
    reassign_task = _stay(*KNOWN)
    # Break-glass reads the record in an emergency; it never moves the client (issue 18).
    break_glass = _stay(*KNOWN)

    # Endings ------------------------------------------------------------------------------
    complete_course = _each(
        assessed,
        cleared,
        prepared,
        dosed,
        integrating,
        on_hold,
        to=completed,
        validators=integration_not_owed,
    ) | _stay(completed, withdrawn)
    withdraw = _each(*OPEN, ineligible, to=withdrawn) | _stay(withdrawn, completed)


# Which machine event each CloudEvents type triggers.
TRIGGERS: dict[str, str] = {
    "scheduling.inquiry_received": "receive_inquiry",
    "scheduling.appointment_booked": "book_appointment",
    "scheduling.appointment_cancelled": "cancel_appointment",
    "scheduling.appointment_no_show": "record_no_show",
    "scheduling.chaperone_confirmed": "confirm_chaperone",
    "scheduling.client_withdrew": "withdraw",
    "prescriber.evaluation_completed": "complete_evaluation",
    "prescriber.prescription_renewed": "renew_prescription",
    "prescriber.clearance_revoked": "revoke_clearance",
    "prescriber.subscription_lapsed": "lapse_subscription",
    "clinician.assessment_completed": "complete_assessment",
    "clinician.preparation_completed": "complete_preparation",
    "clinician.dosing_started": "start_dosing",
    "clinician.dosing_completed": "complete_dosing",
    "clinician.integration_completed": "complete_integration",
    "clinician.adverse_event_reported": "report_adverse_event",
    "clinician.hold_placed": "place_hold",
    "clinician.hold_released": "release_hold",
    "clinician.course_completed": "complete_course",
    "clinician.reassessment_requested": "request_reassessment",
    "system.deadline_reached": "reach_deadline",
    "operations.task_completed": "complete_task",
    "operations.task_claimed": "claim_task",
    "operations.task_cancelled": "cancel_task",
    "operations.task_reassigned": "reassign_task",
    "operations.break_glass_invoked": "break_glass",
}

# The main line, in order; an event legal further along it is premature, not illegal.
MAIN_LINE: tuple[str, ...] = (
    "new",
    "inquiry",
    "assessed",
    "cleared",
    "prepared",
    "dosed",
    "integrating",
)

# Public client states (the pseudo-state `new` is never shown).
CLIENT_STATES: tuple[str, ...] = tuple(
    state.id for state in CarePathway.states if state.id != "new"
)


def mermaid_diagram() -> str:
    return f"{CarePathway():mermaid}"
