"""What the prescriber integrations' events do: clearance, renewals, revocations (R5, R9)."""

from __future__ import annotations

from events.prescriber import PATHWAY_OF_PRESCRIBER
from workflow.handlers.effects import Effects
from workflow.tasks import Owner, TaskCode


def _authorise(fx: Effects, doses_authorized: int | None) -> None:
    client = fx.after
    client.clearance_valid_until = fx.data.valid_until.isoformat()
    client.clearance_revoked = False
    if client.pathway == "high_dose":
        # Seed: the $355 package includes medication for two dosing sessions.
        client.doses_authorized = doses_authorized or fx.policy.high_dose_default_doses
        client.doses_used = 0
    else:
        # Seed: $129/month through Joyous; a renewal pays for the next month.
        client.subscription_active = True
        paid_until = fx.event.time.date() + fx.policy.subscription_period
        client.subscription_paid_until = paid_until.isoformat()


def evaluation_completed(fx: Effects) -> None:
    data = fx.data
    fx.close_tasks(TaskCode.REFER_MEDICAL_EVALUATION)
    if fx.target == "ineligible":
        fx.after.ineligible_reasons = ["R5"]
        fx.cancel_open_tasks()
        return
    fx.after.prescriber = data.prescriber
    fx.after.pathway = PATHWAY_OF_PRESCRIBER[data.prescriber]
    _authorise(fx, data.doses_authorized)
    fx.open_task(
        TaskCode.SCHEDULE_PREPARATION,
        Owner.SCHEDULER,
        fx.due_in(fx.policy.preparation_booking_within),
    )


def prescription_renewed(fx: Effects) -> None:
    _authorise(fx, fx.data.doses_authorized)
    fx.close_tasks(TaskCode.RENEW_HIGH_DOSE_PACKAGE, TaskCode.RENEW_LOW_DOSE_SUBSCRIPTION)


def clearance_revoked(fx: Effects) -> None:
    fx.after.clearance_revoked = True
    _hold_for(fx, "R5")
    fx.open_task(
        TaskCode.REVIEW_HOLD,
        Owner.CLINICIAN,
        fx.due_in(fx.policy.hold_review_within),
        priority="urgent",
        note="medical clearance revoked",
    )


def subscription_lapsed(fx: Effects) -> None:
    fx.after.subscription_active = False
    _hold_for(fx, "R9")
    fx.open_task(
        TaskCode.RENEW_LOW_DOSE_SUBSCRIPTION,
        Owner.CLIENT,
        fx.due_in(fx.policy.renewal_within),
    )


def _hold_for(fx: Effects, reason: str) -> None:
    if reason not in fx.after.hold_reasons:
        fx.after.hold_reasons.append(reason)


HANDLERS = {
    "prescriber.evaluation_completed": evaluation_completed,
    "prescriber.prescription_renewed": prescription_renewed,
    "prescriber.clearance_revoked": clearance_revoked,
    "prescriber.subscription_lapsed": subscription_lapsed,
}
