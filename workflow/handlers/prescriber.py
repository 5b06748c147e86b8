"""What the prescriber integrations' events do: clearance, renewals, revocations (R5, R9)."""

from __future__ import annotations

from events.prescriber import PATHWAY_OF_PRESCRIBER
from workflow.client import ClientSnapshot
from workflow.handlers.effects import LEFT_CARE, Effects
from workflow.policy import CarePolicy
from workflow.releases import PathwayRelease
from workflow.tasks import Owner, TaskCode


def _authorise(fx: Effects, doses_authorized: int | None) -> None:
    client = fx.after
    if client.timeline:
        paid_until = fx.event.time.date() + fx.policy.subscription_period
        client.authorisations = [
            *client.authorisations,
            {
                "at": fx.at,
                "until": fx.data.valid_until.isoformat(),
                "doses": doses_authorized,
                "paid_until": paid_until.isoformat(),
            },
        ]
        refresh_authorisation(client, fx.policy)
        return
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
    if fx.before.state in LEFT_CARE:
        if data.outcome == "cleared":  # a fact all the same: the clearance is on record
            fx.after.prescriber = data.prescriber
            fx.after.pathway = PATHWAY_OF_PRESCRIBER[data.prescriber]
            _authorise(fx, data.doses_authorized)
        return
    if fx.target == "ineligible":
        fx.after.ineligible_reasons = ["R5"]
        fx.cancel_tasks_that_can_no_longer_happen(keep_owners=frozenset())
        return
    if data.outcome != "cleared":
        return  # not cleared, after a dosing overtook the evaluation: the R5 deviation stands
    fx.after.prescriber = data.prescriber
    fx.after.pathway = PATHWAY_OF_PRESCRIBER[data.prescriber]
    _authorise(fx, data.doses_authorized)
    if fx.before.state != "assessed":
        return  # overtaken by a dosing: preparation is no longer what comes next
    if fx.target == "prepared":
        fx.open_task(
            TaskCode.SCHEDULE_DOSING, Owner.SCHEDULER, fx.due_in(fx.policy.dosing_booking_within)
        )
        return
    fx.open_task(
        TaskCode.SCHEDULE_PREPARATION,
        Owner.SCHEDULER,
        fx.due_in(fx.policy.preparation_booking_within),
    )


def prescription_renewed(fx: Effects) -> None:
    _authorise(fx, fx.data.doses_authorized)
    fx.close_tasks(TaskCode.RENEW_HIGH_DOSE_PACKAGE, TaskCode.RENEW_LOW_DOSE_SUBSCRIPTION)
    if fx.before.state == "on_hold" and fx.target != "on_hold":
        fx.after.hold_reasons = []
        fx.after.hold_since = None
        fx.close_tasks(TaskCode.REVIEW_HOLD)


def clearance_revoked(fx: Effects) -> None:
    fx.after.clearance_revoked = True
    if fx.after.timeline:
        fx.after.revocations = [*fx.after.revocations, fx.at]
    if fx.after.state in LEFT_CARE:
        return  # recorded; a client out of care is not held
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
    if fx.after.timeline:
        fx.after.lapses = [*fx.after.lapses, fx.at]
    if fx.after.state in LEFT_CARE:
        return  # recorded; a client out of care is not held
    _hold_for(fx, "R9")
    fx.open_task(
        TaskCode.RENEW_LOW_DOSE_SUBSCRIPTION,
        renewal_owner(fx.release),
        fx.due_in(fx.policy.renewal_within),
    )


def refresh_authorisation(client: ClientSnapshot, policy: CarePolicy) -> None:
    """The clearance facts in force now, from the latest authorisation by event time (a
    late-arriving older renewal does not replace a newer one)."""
    latest = max(client.authorisations, key=lambda a: a["at"], default=None)
    if latest is None:
        return
    client.clearance_valid_until = latest["until"]
    client.clearance_revoked = any(latest["at"] <= revoked for revoked in client.revocations)
    if client.pathway == "high_dose":
        client.doses_authorized = latest["doses"] or policy.high_dose_default_doses
        client.doses_used = sum(1 for d in client.dosings if d["at"] >= latest["at"])
    else:
        client.subscription_paid_until = latest["paid_until"]
        client.subscription_active = not any(latest["at"] <= lapse for lapse in client.lapses)


def renewal_owner(release: PathwayRelease) -> str:
    """Who sees a lapsed subscription renewed. The client pays Joyous; from 2026.12.1 the
    task sits in the prescriber liaison's queue (a hold must sit in a staff queue), not
    only in the client's reminders."""
    return Owner.PRESCRIBER_LIAISON if release.queues_every_hold else Owner.CLIENT


def _hold_for(fx: Effects, reason: str) -> None:
    if reason not in fx.after.hold_reasons:
        fx.after.hold_reasons.append(reason)


HANDLERS = {
    "prescriber.evaluation_completed": evaluation_completed,
    "prescriber.prescription_renewed": prescription_renewed,
    "prescriber.clearance_revoked": clearance_revoked,
    "prescriber.subscription_lapsed": subscription_lapsed,
}
