"""What the clinicians' events do: assessment, preparation, dosing, integration, safety."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from workflow.handlers.effects import LEFT_CARE, Effects
from workflow.handlers.prescriber import _hold_for
from workflow.handlers.scheduling import KEEP_ON_EXIT
from workflow.states.rules import RuleContext, eligibility_failures
from workflow.tasks import Owner, TaskCode

FINANCING_NOTE = "financing: Advance Care (15 months interest-free) or CareCredit"


def assessment_completed(fx: Effects) -> None:
    fx.close_tasks(TaskCode.SCHEDULE_ASSESSMENT)
    if fx.target == "ineligible":
        ctx = RuleContext(fx.before, fx.event, fx.policy)
        fx.after.ineligible_reasons = [reason.code for reason in eligibility_failures(ctx)]
        fx.cancel_tasks_that_can_no_longer_happen(keep_owners=frozenset())
        return
    fx.after.insurance_used = bool(fx.data.insurance_used)
    fx.open_task(
        TaskCode.REFER_MEDICAL_EVALUATION,
        Owner.PRESCRIBER_LIAISON,
        fx.due_in(fx.policy.medical_referral_within),
    )
    if fx.after.insurance_used:
        # Seed: insurance may be used for assessment, preparation and integration.
        fx.open_task(
            TaskCode.VERIFY_INSURANCE_BENEFITS,
            Owner.BILLING,
            fx.due_in(fx.policy.insurance_verification_within),
        )


def preparation_completed(fx: Effects) -> None:
    client = fx.after
    client.preparation_sessions += 1
    if client.timeline:
        client.preparations = [*client.preparations, [fx.at, bool(fx.data.ready_for_dosing)]]
    fx.close_tasks(TaskCode.SCHEDULE_PREPARATION)
    if client.preparation_sessions > fx.policy.max_preparation_sessions:
        # R6: a session beyond the third is accepted but reviewed.
        fx.open_task(
            TaskCode.CLINICAL_REVIEW,
            Owner.CLINICIAN,
            fx.due_in(fx.policy.clinical_review_within),
            note="R6: more than three preparatory sessions",
        )
    if fx.data.ready_for_dosing:
        client.ready_for_dosing = True
        if fx.before.state == "on_hold" and client.held_from == "cleared":
            client.held_from = "prepared"  # prepared during the hold: released, prepared
        if fx.before.state == "cleared":
            fx.open_task(
                TaskCode.SCHEDULE_DOSING,
                Owner.SCHEDULER,
                fx.due_in(fx.policy.dosing_booking_within),
            )
    elif fx.before.state == "cleared":
        fx.open_task(
            TaskCode.SCHEDULE_PREPARATION,
            Owner.SCHEDULER,
            fx.due_in(fx.policy.preparation_booking_within),
        )


def dosing_started(fx: Effects) -> None:
    client = fx.after
    _record_dosing(fx, fx.data.session_id, pathway=fx.data.pathway)
    if fx.before.state == "on_hold":
        client.held_from = "dosed"  # dosed during the hold: releasing it returns to dosed
    if fx.release.chaperone_per_dosing:
        fx.close_tasks(TaskCode.SCHEDULE_DOSING)
        _use_dosing_appointment(fx)  # and the reminders of that appointment only
    else:
        fx.close_tasks(
            TaskCode.SCHEDULE_DOSING,
            TaskCode.CONFIRM_CHAPERONE,
            TaskCode.ABSTINENCE_REMINDER_BEFORE,
        )
    fx.open_task(
        TaskCode.ABSTINENCE_REMINDER_AFTER,
        Owner.CLIENT,
        fx.due_in(fx.policy.abstinence_window),
        about=fx.data.session_id,
    )


def _use_dosing_appointment(fx: Effects) -> None:
    """R7 per dosing: the booked dosing appointment this dosing took up is used, so the next
    dosing needs its own booking and its own confirmed chaperone."""
    named = getattr(fx.data, "appointment_id", None)
    appointments = fx.after.appointments
    if named is not None and named in appointments:
        appointment_id = named
    else:
        taken = fx.after.dosing_appointment(fx.at)
        if taken is None:
            return
        appointment_id = taken[0]
    fx.after.appointments = {
        **appointments,
        appointment_id: {**appointments[appointment_id], "status": "used"},
    }
    fx.close_tasks(
        TaskCode.CONFIRM_CHAPERONE, TaskCode.ABSTINENCE_REMINDER_BEFORE, about=appointment_id
    )


def _record_dosing(fx: Effects, session: str, pathway: str | None) -> None:
    client = fx.after
    client.current_dosing_session = session
    client.dosing_completed = False
    client.awaiting_integration = True
    client.dosing_sessions += 1
    if client.pathway == "high_dose":
        client.doses_used += 1
    if client.timeline:
        client.dosings = [
            *client.dosings,
            {
                "session": session,
                "at": fx.at,
                "source": fx.event.source,
                "event_id": fx.event.id,
                "pathway": pathway,
                "completed": False,
                "integrated_at": None,
                "rules": [],
                "review": None,
            },
        ]


def dosing_completed(fx: Effects) -> None:
    data = fx.data
    client = fx.after
    owes_integration = fx.before.state == "dosed"
    if client.timeline:
        dosing = client.dosing(data.session_id)
        if dosing is None:
            # Its start never arrived (recorded after the parking window): it happened.
            _record_dosing(fx, data.session_id, pathway=client.pathway)
            dosing = client.dosing(data.session_id)
        assert dosing is not None
        client.dosings = [
            {**d, "completed": True} if d["session"] == data.session_id else d
            for d in client.dosings
        ]
        owes_integration = dosing["integrated_at"] is None
    if data.session_id == client.current_dosing_session:
        client.dosing_completed = True
    if owes_integration:
        fx.open_task(
            TaskCode.SCHEDULE_INTEGRATION,
            Owner.SCHEDULER,
            fx.due_in(fx.policy.integration_booking_within),
            about=data.session_id,
        )
    if not data.released_to_chaperone:
        # R11: released only to the chaperone; anything else is an urgent safety matter.
        fx.open_task(
            TaskCode.SAFETY_FOLLOW_UP,
            Owner.CLINICIAN,
            fx.due_in(fx.policy.safety_follow_up_within),
            priority="urgent",
            about=data.session_id,
        )
    private_minutes = data.duration_minutes - fx.policy.insurance_covered_minutes
    if client.pathway == "high_dose" and private_minutes > 0:
        # R12: the first hour may go to insurance; the rest is private, pro-rated per minute.
        amount = (fx.policy.private_rate_usd_per_hour * private_minutes / Decimal(60)).quantize(
            Decimal("0.01"), rounding=ROUND_HALF_UP
        )
        fx.open_task(
            TaskCode.BILL_PRIVATE_TIME,
            Owner.BILLING,
            fx.due_in(fx.policy.billing_within),
            about=data.session_id,
            amount_usd=amount,
            note=f"{private_minutes} private minutes; {FINANCING_NOTE}",
        )
    if client.pathway == "high_dose" and client.doses_remaining == 0:
        # R9: the package covered its doses; a further dosing needs a renewed prescription.
        fx.open_task(
            TaskCode.RENEW_HIGH_DOSE_PACKAGE,
            Owner.PRESCRIBER_LIAISON,
            fx.due_in(fx.policy.renewal_within),
        )


def integration_completed(fx: Effects) -> None:
    client = fx.after
    session = fx.data.session_id
    if client.timeline:
        client.dosings = [
            {**d, "integrated_at": fx.at} if d["session"] == session else d for d in client.dosings
        ]
    if session == client.current_dosing_session:
        client.awaiting_integration = False
        if fx.before.state == "on_hold" and client.held_from == "dosed":
            client.held_from = "integrating"
    fx.close_tasks(TaskCode.SCHEDULE_INTEGRATION, about=session if client.timeline else None)


def adverse_event_reported(fx: Effects) -> None:
    # R10: report to therapist and prescriber immediately; a severe reaction holds the client.
    fx.open_task(
        TaskCode.NOTIFY_PRESCRIBER_ADVERSE_EVENT,
        Owner.PRESCRIBER_LIAISON,
        fx.due_in(fx.policy.adverse_event_notification_within),
        priority="urgent",
        note=f"severity: {fx.data.severity}",
    )
    if fx.data.severity == "severe" and fx.target == "on_hold":
        _hold_for(fx, "R10")
        fx.open_task(
            TaskCode.REVIEW_HOLD,
            Owner.CLINICIAN,
            fx.due_in(fx.policy.hold_review_within),
            priority="urgent",
            note="R10: severe adverse reaction",
        )


def hold_placed(fx: Effects) -> None:
    if fx.after.state in LEFT_CARE:
        return  # recorded; a client out of care is not held
    _hold_for(fx, "CLINICIAN_HOLD")
    fx.open_task(
        TaskCode.REVIEW_HOLD,
        Owner.CLINICIAN,
        fx.due_in(fx.policy.hold_review_within),
        note=f"hold: {fx.data.reason}",
    )


def hold_released(fx: Effects) -> None:
    fx.after.hold_reasons = []
    fx.after.hold_since = None
    fx.close_tasks(TaskCode.REVIEW_HOLD)


def course_completed(fx: Effects) -> None:
    fx.cancel_tasks_that_can_no_longer_happen(keep_owners=KEEP_ON_EXIT)


def reassessment_requested(fx: Effects) -> None:
    fx.after.ineligible_reasons = []
    fx.open_task(
        TaskCode.SCHEDULE_ASSESSMENT,
        Owner.SCHEDULER,
        fx.due_in(fx.policy.assessment_booking_within),
    )


HANDLERS = {
    "clinician.assessment_completed": assessment_completed,
    "clinician.preparation_completed": preparation_completed,
    "clinician.dosing_started": dosing_started,
    "clinician.dosing_completed": dosing_completed,
    "clinician.integration_completed": integration_completed,
    "clinician.adverse_event_reported": adverse_event_reported,
    "clinician.hold_placed": hold_placed,
    "clinician.hold_released": hold_released,
    "clinician.course_completed": course_completed,
    "clinician.reassessment_requested": reassessment_requested,
}
