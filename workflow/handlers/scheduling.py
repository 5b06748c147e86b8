"""What scheduling events do: bookings close "schedule …" tasks and open the reminders."""

from __future__ import annotations

from workflow.handlers.effects import Effects
from workflow.tasks import Owner, TaskCode, iso

OUT_OF_CARE = frozenset({"ineligible", "withdrawn", "completed"})

BOOKING_CLOSES: dict[str, str] = {
    "assessment": TaskCode.SCHEDULE_ASSESSMENT,
    "preparation": TaskCode.SCHEDULE_PREPARATION,
    "dosing": TaskCode.SCHEDULE_DOSING,
    "integration": TaskCode.SCHEDULE_INTEGRATION,
}
# Money is still owed after a course ends or a client leaves: billing keeps its tasks.
KEEP_ON_EXIT = frozenset({Owner.BILLING})


def inquiry_received(fx: Effects) -> None:
    booked = any(
        appointment["kind"] == "assessment" and appointment["status"] == "booked"
        for appointment in fx.after.appointments.values()
    )
    if fx.before.state == "new" and not booked:
        fx.open_task(
            TaskCode.SCHEDULE_ASSESSMENT,
            Owner.SCHEDULER,
            fx.due_in(fx.policy.assessment_booking_within),
        )


def appointment_booked(fx: Effects) -> None:
    data = fx.data
    if fx.release.chaperone_per_dosing:
        confirmed = data.appointment_id in fx.after.chaperones_confirmed
        _set_appointment(
            fx,
            data.appointment_id,
            kind=data.kind,
            starts_at=iso(data.starts_at),
            booked_at=fx.at,
            status="booked",
            chaperone_at=fx.at if confirmed else None,
        )
    if fx.release.derives_from_facts and fx.before.state in OUT_OF_CARE:
        # A booking for a client who has left care is a fact: someone should see why.
        fx.open_task(
            TaskCode.CLINICAL_REVIEW,
            Owner.CLINICIAN,
            fx.due_in(fx.policy.clinical_review_within),
            about=data.appointment_id,
            note=f"{data.kind} booked for a client who is {fx.before.state}",
        )
        return
    fx.close_tasks(BOOKING_CLOSES[data.kind])
    fx.close_tasks(TaskCode.RESCHEDULE_APPOINTMENT, about=data.kind)
    if data.kind != "dosing":
        return
    # Seed: a trusted person drives the client home; 24 h abstinence before dosing.
    before_session = iso(data.starts_at - fx.policy.chaperone_confirmation_before_dosing)
    if data.appointment_id not in fx.after.chaperones_confirmed:
        fx.open_task(
            TaskCode.CONFIRM_CHAPERONE, Owner.SCHEDULER, before_session, about=data.appointment_id
        )
    fx.open_task(
        TaskCode.ABSTINENCE_REMINDER_BEFORE,
        Owner.CLIENT,
        iso(data.starts_at - fx.policy.abstinence_window),
        about=data.appointment_id,
    )


def _set_appointment(fx: Effects, appointment_id: str, **changes: object) -> None:
    appointments = dict(fx.after.appointments)
    appointments[appointment_id] = {**appointments.get(appointment_id, {}), **changes}
    fx.after.appointments = appointments


def _reschedule(fx: Effects, status: str) -> None:
    data = fx.data
    if fx.release.chaperone_per_dosing and data.appointment_id in fx.after.appointments:
        _set_appointment(fx, data.appointment_id, status=status)
    fx.close_tasks(
        TaskCode.CONFIRM_CHAPERONE,
        TaskCode.ABSTINENCE_REMINDER_BEFORE,
        about=data.appointment_id,
        status="cancelled",
    )
    fx.open_task(
        TaskCode.RESCHEDULE_APPOINTMENT,
        Owner.SCHEDULER,
        fx.due_in(fx.policy.reschedule_within),
        about=data.kind,
    )


def appointment_cancelled(fx: Effects) -> None:
    _reschedule(fx, "cancelled")


def appointment_no_show(fx: Effects) -> None:
    _reschedule(fx, "no_show")
    fx.after.no_shows += 1
    if fx.after.no_shows == fx.policy.no_show_review_threshold:
        fx.open_task(
            TaskCode.CLINICAL_REVIEW,
            Owner.CLINICIAN,
            fx.due_in(fx.policy.clinical_review_within),
            about="repeated-no-shows",
            note="repeated no-shows",
        )


def chaperone_confirmed(fx: Effects) -> None:
    appointment = fx.data.appointment_id
    if appointment not in fx.after.chaperones_confirmed:
        fx.after.chaperones_confirmed.append(appointment)
    booked = fx.after.appointments.get(appointment) if fx.release.chaperone_per_dosing else None
    if booked is not None and booked.get("chaperone_at") is None:
        _set_appointment(fx, appointment, chaperone_at=fx.at)
    fx.close_tasks(TaskCode.CONFIRM_CHAPERONE, about=appointment)


def client_withdrew(fx: Effects) -> None:
    fx.cancel_tasks_that_can_no_longer_happen(keep_owners=KEEP_ON_EXIT)


HANDLERS = {
    "scheduling.inquiry_received": inquiry_received,
    "scheduling.appointment_booked": appointment_booked,
    "scheduling.appointment_cancelled": appointment_cancelled,
    "scheduling.appointment_no_show": appointment_no_show,
    "scheduling.chaperone_confirmed": chaperone_confirmed,
    "scheduling.client_withdrew": client_withdrew,
}
