"""The programme's rules R1–R12 as small named checks, guards and validators.

Each check reads one rule of the seed (quoted in its docstring) and returns a `Reason`
naming the rule id when the rule is broken. Guards choose between transitions; validators
refuse an event outright by raising `RuleViolation` with every rule it broke.

Everything here is pure: it reads the client snapshot, the event and the policy in a
`RuleContext`, never a clock or any other state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from events.envelope import CloudEvent
from events.prescriber import PATHWAY_OF_PRESCRIBER
from events.registry import Reason
from workflow.client import ClientSnapshot
from workflow.policy import CarePolicy
from workflow.releases import CURRENT_RELEASE, PathwayRelease
from workflow.tasks import iso
from workflow.timers import SUBSCRIPTION_END, timer_named

NOT_IN_CARE = ("ineligible", "withdrawn", "completed")


@dataclass(slots=True)  # a value: never mutated after construction
class RuleContext:
    client: ClientSnapshot
    event: CloudEvent
    policy: CarePolicy
    release: PathwayRelease = CURRENT_RELEASE
    event_at: str = ""  # the event's time in kapflow's one format; computed once

    @property
    def data(self) -> Any:
        return self.event.data

    @property
    def event_date(self) -> str:
        return self.event.time.date().isoformat()

    @property
    def at(self) -> str:
        """The event's own time: rules are judged on the facts as they stood then."""
        if not self.event_at:
            self.event_at = iso(self.event.time)
        return self.event_at

    @property
    def judged_at_event_time(self) -> bool:
        return self.release.judges_at_event_time and self.client.timeline


class RuleViolation(Exception):  # noqa: N818 - a domain term, not an error category
    """An event that breaks one or more rules; carries every reason, never the payload.

    `contradiction`: the event contradicts settled facts about the client (a prescriber who
    did not clear them, a session that was never started), so it cannot be recorded as a
    fact and is rejected. Otherwise it is a fact of care that broke the protocol: recorded
    as a deviation (SPEC §3).
    """

    def __init__(self, reasons: tuple[Reason, ...], contradiction: bool = True) -> None:
        super().__init__(", ".join(reason.code for reason in reasons))
        self.reasons = reasons
        self.contradiction = contradiction


class NotYetKnown(RuleViolation):
    """The event refers to a fact kapflow has not heard of yet (the completion of a dosing
    whose start has not arrived): parked, retried after each later change (SPEC §3)."""


Check = Callable[[RuleContext], Reason | None]


def protocol_rule(check: Check) -> Check:
    """Mark a check whose breach is a protocol deviation, not a contradiction."""
    check.protocol = True  # type: ignore[attr-defined]
    return check


def is_protocol_rule(check: Check) -> bool:
    return bool(getattr(check, "protocol", False))


def _broken(checks: tuple[Check, ...], ctx: RuleContext) -> None:
    broken = [(check, reason) for check in checks if (reason := check(ctx)) is not None]
    if broken:
        raise RuleViolation(
            tuple(reason for _, reason in broken),
            contradiction=not all(is_protocol_rule(check) for check, _ in broken),
        )


def validator(
    *checks: Check, any_state: bool | tuple[Check, ...] = False
) -> Callable[[RuleContext], None]:
    """Combine checks into one validator that reports every broken rule at once.

    `any_state` names the checks that refuse the event even from a state with no
    transition for it (True: all of them): facts already settled, whatever arrives later,
    so the event is rejected at once rather than parked (SPEC §3). The others are judged
    only where the transition exists; before that, the event may merely be early.
    """

    def validate(ctx: RuleContext) -> None:
        _broken(checks, ctx)

    validate.__name__ = "_and_".join(check.__name__ for check in checks)
    settled = checks if any_state is True else (any_state or ())
    if settled:

        def validate_settled(ctx: RuleContext) -> None:
            _broken(settled, ctx)

        validate_settled.__name__ = "_and_".join(check.__name__ for check in settled)
        validate.any_state = validate_settled  # type: ignore[attr-defined]
    else:
        validate.any_state = None  # type: ignore[attr-defined]
    return validate


# --- Eligibility at assessment (R1–R4) -------------------------------------------------


def r1_adult(ctx: RuleContext) -> Reason | None:
    """Seed: "Clients must be 18 years or older." """
    if ctx.data.age_years < 18:
        return Reason("R1", "client must be 18 or older at assessment")
    return None


def r2_in_ongoing_therapy(ctx: RuleContext) -> Reason | None:
    """Seed: available to current QMTS clients or those in therapy with a licensed provider."""
    if ctx.data.therapy_status == "none":
        return Reason("R2", "client must be a QMTS client or in ongoing therapy")
    return None


def r3_no_psychosis_mania_schizophrenia(ctx: RuleContext) -> Reason | None:
    """Seed: not appropriate with a history of psychosis, mania, or schizophrenia."""
    history = ctx.data.history
    if history.psychosis or history.mania or history.schizophrenia:
        return Reason("R3", "history of psychosis, mania or schizophrenia")
    return None


def r4_no_contraindicated_medication(ctx: RuleContext) -> Reason | None:
    """Seed: not appropriate while taking MAOIs, stimulants or high-dose benzodiazepines."""
    meds = ctx.data.current_medications
    if meds.maoi or meds.stimulant or meds.high_dose_benzodiazepine:
        return Reason("R4", "currently taking MAOIs, stimulants or high-dose benzodiazepines")
    return None


ELIGIBILITY_CHECKS: tuple[Check, ...] = (
    r1_adult,
    r2_in_ongoing_therapy,
    r3_no_psychosis_mania_schizophrenia,
    r4_no_contraindicated_medication,
)


def eligibility_failures(ctx: RuleContext) -> list[Reason]:
    return [reason for check in ELIGIBILITY_CHECKS if (reason := check(ctx)) is not None]


def meets_eligibility(ctx: RuleContext) -> bool:
    return not eligibility_failures(ctx)


# --- Medical clearance (R5) ------------------------------------------------------------


def cleared_by_prescriber(ctx: RuleContext) -> bool:
    return bool(ctx.data.outcome == "cleared")


def r5_prescriber_fixes_pathway(ctx: RuleContext) -> Reason | None:
    """Seed: Journey Clinical → higher-dose KAP; Joyous → psycholytic low-dose KAP."""
    stated = ctx.data.pathway
    if stated is not None and stated != PATHWAY_OF_PRESCRIBER[ctx.data.prescriber]:
        return Reason("R5", "prescriber and pathway do not match", "data.pathway")
    return None


def _clearance_not_heard_of_yet(ctx: RuleContext) -> None:
    """Facts fold in event-time order (2026.12.1 on): a renewal, revocation or lapse before
    any clearance is recorded refers to a clearance whose message has not arrived yet."""
    if ctx.client.prescriber is None and ctx.release.derives_from_facts:
        raise NotYetKnown(
            (Reason("CLEARANCE_NOT_RECORDED", "the prescriber's clearance has not arrived"),)
        )


def r5_names_clients_prescriber(ctx: RuleContext) -> Reason | None:
    """Only the prescriber who cleared the client can renew or revoke that clearance."""
    _clearance_not_heard_of_yet(ctx)
    if ctx.data.prescriber != ctx.client.prescriber:
        return Reason("R5", "prescriber is not the client's clearing prescriber", "data.prescriber")
    return None


def authorisation_at(client: ClientSnapshot, at: str) -> dict[str, Any] | None:
    """The latest clearance or renewal that had happened by `at`."""
    latest = None
    for authorisation in client.authorisations:
        if authorisation["at"] <= at and (latest is None or authorisation["at"] >= latest["at"]):
            latest = authorisation
    return latest


@protocol_rule
def r5_valid_clearance(ctx: RuleContext) -> Reason | None:
    """Seed: every client must be cleared by an independent prescribing provider."""
    client = ctx.client
    if ctx.judged_at_event_time:
        return _r5_clearance_in_force(ctx)
    if client.prescriber is None or client.clearance_valid_until is None:
        return Reason("R5", "no medical clearance from an independent prescriber")
    if client.clearance_revoked:
        return Reason("R5", "medical clearance was revoked")
    if client.clearance_valid_until < ctx.event_date:
        return Reason("R5", "medical clearance has expired")
    if ctx.data.pathway != client.pathway:
        return Reason("R5", "dosing pathway differs from the cleared pathway", "data.pathway")
    return None


def _r5_clearance_in_force(ctx: RuleContext) -> Reason | None:
    client, at = ctx.client, ctx.at
    authorisation = authorisation_at(client, at)
    if authorisation is None:
        return Reason("R5", "no medical clearance was in force at the time of dosing")
    if any(authorisation["at"] <= revoked <= at for revoked in client.revocations):
        return Reason("R5", "medical clearance was revoked")
    if authorisation["until"] < ctx.event_date:
        return Reason("R5", "medical clearance has expired")
    if client.pathway is not None and ctx.data.pathway != client.pathway:
        return Reason("R5", "dosing pathway differs from the cleared pathway", "data.pathway")
    return None


# --- Preparation (R6) ------------------------------------------------------------------


def prepared_while_awaiting_clearance(ctx: RuleContext) -> bool:
    """Preparation went ahead before the clearance arrived: cleared, the client is prepared."""
    return ctx.judged_at_event_time and ctx.client.ready_for_dosing


def marked_ready(ctx: RuleContext) -> bool:
    return bool(ctx.data.ready_for_dosing)


@protocol_rule
def r6_preparation_done(ctx: RuleContext) -> Reason | None:
    """Seed: one to three preparatory sessions before any dosing experience."""
    if ctx.judged_at_event_time:
        if not any(at <= ctx.at and ready for at, ready in ctx.client.preparations):
            return Reason("R6", "at least one preparatory session and readiness are required")
        return None
    if not ctx.client.ready_for_dosing or ctx.client.preparation_sessions < 1:
        return Reason("R6", "at least one preparatory session and readiness are required")
    return None


@protocol_rule
def r6_preparation_done_once_cleared(ctx: RuleContext) -> Reason | None:
    """Preparation and dosing both come from the clinicians' record, in order: once the
    client is cleared (preparation can no longer be waiting for anything), a dosing
    without it breaks R6. Before clearance, the dosing may just have overtaken the
    prescriber's message."""
    if ctx.client.state == "cleared":
        return r6_preparation_done(ctx)
    return None


# --- Dosing safety (R7, R8, R9) --------------------------------------------------------


@protocol_rule
def r7_chaperone_and_abstinence(ctx: RuleContext) -> Reason | None:
    """Seed: a trusted person drives the client home; no alcohol or substances for 24 h."""
    missing = []
    if not ctx.data.chaperone_confirmed:
        missing.append("chaperone")
    if not ctx.data.abstinence_attested:
        missing.append("24-hour abstinence attestation")
    if missing:
        return Reason("R7", "dosing requires " + " and ".join(missing))
    return None


@protocol_rule
def r8_integration_followed_last_dosing(ctx: RuleContext) -> Reason | None:
    """Seed: integration sessions follow each dosing experience."""
    if ctx.judged_at_event_time and ctx.event.type == "clinician.dosing_started":
        at, session = ctx.at, ctx.data.session_id
        for dosing in ctx.client.dosings:
            integrated = dosing["integrated_at"]
            if (
                dosing["session"] != session
                and dosing["at"] < at
                and not (integrated is not None and integrated <= at)
            ):
                return Reason("R8", "an integration session must follow the previous dosing")
        return None
    if ctx.client.awaiting_integration:
        return Reason("R8", "an integration session must follow the previous dosing")
    return None


@protocol_rule
def r9_medication_available(ctx: RuleContext) -> Reason | None:
    """Seed: $355 covers medication for two sessions; Joyous is a $129/month subscription."""
    client = ctx.client
    if ctx.judged_at_event_time:
        return _r9_medication_at(ctx)
    if client.pathway == "high_dose" and (client.doses_remaining or 0) <= 0:
        return Reason("R9", "high-dose package exhausted: a renewed prescription is needed")
    if client.pathway == "low_dose" and not client.subscription_active:
        return Reason("R9", "low-dose dosing needs an active Joyous subscription")
    paid_until = client.subscription_paid_until
    if client.pathway == "low_dose" and paid_until and paid_until < ctx.event_date:
        return Reason("R9", "the Joyous subscription month has run out")
    return None


def _r9_medication_at(ctx: RuleContext) -> Reason | None:
    client, at = ctx.client, ctx.at
    authorisation = authorisation_at(client, at)
    if authorisation is None or client.pathway is None:
        return None  # no clearance at all is R5's finding
    if client.pathway == "high_dose":
        authorised = authorisation["doses"] or ctx.policy.high_dose_default_doses
        used = sum(
            1
            for dosing in client.dosings
            if dosing["session"] != ctx.data.session_id and authorisation["at"] <= dosing["at"] < at
        )
        if used >= authorised:
            return Reason("R9", "high-dose package exhausted: a renewed prescription is needed")
        return None
    if any(authorisation["at"] <= lapsed <= at for lapsed in client.lapses):
        return Reason("R9", "low-dose dosing needs an active Joyous subscription")
    if authorisation["paid_until"] < ctx.event_date:
        return Reason("R9", "the Joyous subscription month has run out")
    return None


@protocol_rule
def in_care(ctx: RuleContext) -> Reason | None:
    """A client screened out, withdrawn or discharged is no longer in the KAP pathway."""
    client = ctx.client
    if client.state not in NOT_IN_CARE:
        return None
    if ctx.judged_at_event_time and client.exited_at is not None and client.exited_at > ctx.at:
        return None  # the dosing happened before the client left
    if client.state == "ineligible" and client.ineligible_reasons:
        rules = ",".join(client.ineligible_reasons)
        return Reason("NOT_IN_CARE", f"client is ineligible ({rules})")
    return Reason("NOT_IN_CARE", f"client is {client.state}")


@protocol_rule
def not_on_hold(ctx: RuleContext) -> Reason | None:
    """A client on a safety or administrative hold is not dosed until the hold is released."""
    held = ctx.client.state == "on_hold"
    if held and ctx.judged_at_event_time and (ctx.client.hold_since or "") > ctx.at:
        held = False  # the dosing happened before the hold began
    if held:
        rules = ",".join(ctx.client.hold_reasons) or "hold"
        return Reason("ON_HOLD", f"client is on hold ({rules})")
    return None


def r9_subscription_is_low_dose(ctx: RuleContext) -> Reason | None:
    _clearance_not_heard_of_yet(ctx)
    if ctx.client.pathway != "low_dose" or ctx.data.prescriber != "joyous":
        return Reason("R9", "only a Joyous low-dose client has a subscription", "data.prescriber")
    return None


def session_is_current_dosing(ctx: RuleContext) -> Reason | None:
    if ctx.judged_at_event_time:
        return _session_is_known(ctx)
    if ctx.data.session_id != ctx.client.current_dosing_session:
        return Reason("SESSION_MISMATCH", "session is not the latest dosing", "data.session_id")
    return None


def _session_is_known(ctx: RuleContext) -> Reason | None:
    client, session = ctx.client, ctx.data.session_id
    if client.dosing(session) is not None:
        return None
    in_progress = client.current_dosing_session is not None and not client.dosing_completed
    # Folding facts in event-time order, another session's completion may just not have
    # arrived yet: the start of this one is awaited too (parked), not contradicted.
    contradicted = in_progress and not ctx.release.derives_from_facts
    if ctx.event.type == "clinician.dosing_completed" and contradicted:
        # Another session is under way and this one never started: a contradiction.
        return Reason("SESSION_MISMATCH", "session is not the latest dosing", "data.session_id")
    raise NotYetKnown(
        (Reason("SESSION_NOT_STARTED", "the start of this dosing session has not arrived"),)
    )


def session_not_yet_started(ctx: RuleContext) -> Reason | None:
    """A session already recorded as started cannot start again: same id, another fact."""
    if ctx.judged_at_event_time and ctx.client.dosing(ctx.data.session_id) is not None:
        return Reason(
            "SESSION_ALREADY_STARTED", "this dosing session was already started", "data.session_id"
        )
    return None


def dosing_not_yet_completed(ctx: RuleContext) -> Reason | None:
    if ctx.judged_at_event_time:
        dosing = ctx.client.dosing(ctx.data.session_id)
        if dosing is not None and dosing["completed"]:
            return Reason("ALREADY_COMPLETED", "this dosing session was already completed")
        return None
    if ctx.client.dosing_completed:
        return Reason("ALREADY_COMPLETED", "this dosing session was already completed")
    return None


def integrates_current_dosing(ctx: RuleContext) -> bool:
    """An integration of an earlier dosing (after a second one overtook it, R8) leaves the
    client dosed: the latest dosing still awaits its own."""
    return bool(ctx.data.session_id == ctx.client.current_dosing_session)


def subscription_period_ended(ctx: RuleContext) -> bool:
    """The clock says the paid month ran out without a renewal (R9): treated as a lapse."""
    timer = timer_named(ctx.client, ctx.policy, ctx.data.task_id)
    return timer is not None and timer.kind == SUBSCRIPTION_END


def is_severe(ctx: RuleContext) -> bool:
    """Seed: a concerning reaction; a severe one stops the pathway until reviewed (R10)."""
    return bool(ctx.data.severity == "severe")


# --- Validators, as attached to the machine's transitions ------------------------------

evaluation_names_matching_pathway = validator(r5_prescriber_fixes_pathway, any_state=True)
# A dosing's protocol rules, in the order a clinician reads a pre-session checklist, with
# what each asks: the engine judges a recorded dosing by them (`dosing_is_safe`), readiness
# a prospective one (workflow/readiness.py). One definition.
DOSING_RULES: tuple[tuple[str, Check, str], ...] = (
    ("R5", r5_valid_clearance, "a medical clearance from an independent prescriber in force"),
    ("R6", r6_preparation_done, "at least one preparatory session, client marked ready"),
    ("R7", r7_chaperone_and_abstinence, "chaperone confirmed for the booked dosing"),
    ("R8", r8_integration_followed_last_dosing, "integration after the previous dosing"),
    ("R9", r9_medication_available, "medication available (package doses or subscription)"),
    ("HOLD", not_on_hold, "no safety or administrative hold"),
    ("IN_CARE", in_care, "the client is in care (not ineligible, withdrawn or completed)"),
)
dosing_is_safe = validator(
    session_not_yet_started,
    *(check for _, check, _ in DOSING_RULES),
    any_state=(
        session_not_yet_started,
        in_care,
        not_on_hold,
        r6_preparation_done_once_cleared,
        r7_chaperone_and_abstinence,
        r8_integration_followed_last_dosing,
    ),
)
names_clients_prescriber = validator(r5_names_clients_prescriber)
care_given_in_care = validator(in_care)
lapse_is_of_low_dose_subscription = validator(r9_subscription_is_low_dose)
completes_current_dosing = validator(session_is_current_dosing, dosing_not_yet_completed)
integrates_latest_dosing = validator(session_is_current_dosing)
integration_not_owed = validator(r8_integration_followed_last_dosing)


def renewal_cures_hold(ctx: RuleContext) -> bool:
    """The only reason for the hold was a lapsed subscription (R9), which a renewal cures."""
    return ctx.release.renewal_cures_subscription_hold and ctx.client.hold_reasons == ["R9"]


def returns_to(state: str) -> Callable[[RuleContext], bool]:
    """Guard of a hold release: true when the hold was placed from `state`."""

    def guard(ctx: RuleContext) -> bool:
        return ctx.client.held_from == state

    guard.__name__ = f"held_from_{state}"
    return guard
