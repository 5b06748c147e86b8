"""Every hold sits in someone's queue (release 2026.12.1 on).

SPEC §1: a hold stops the pathway until it is released, so a client on hold with no open
task is a client nobody is asked about. After every fact, each reason a client is held for
has an open staff task naming who resolves it: the prescriber liaison sees a lapsed Joyous
subscription renewed (R9); a clinician reviews a severe reaction (R10), a revoked clearance
(R5) or their own hold.
"""

from __future__ import annotations

from workflow.handlers.effects import Effects
from workflow.tasks import Owner, TaskCode

# Hold reason → (task code, owner, what it asks).
HOLD_RESOLVERS: dict[str, tuple[str, str, str]] = {
    "R9": (
        TaskCode.RENEW_LOW_DOSE_SUBSCRIPTION,
        Owner.PRESCRIBER_LIAISON,
        "R9: the Joyous subscription lapsed; see it renewed to release the hold",
    ),
    "R5": (TaskCode.REVIEW_HOLD, Owner.CLINICIAN, "R5: medical clearance revoked"),
    "R10": (TaskCode.REVIEW_HOLD, Owner.CLINICIAN, "R10: severe adverse reaction"),
}
_ANY_HOLD = (TaskCode.REVIEW_HOLD, Owner.CLINICIAN, "hold: review and decide on release")


def queue_the_hold(fx: Effects) -> None:
    client = fx.after
    if client.state != "on_hold":
        return
    for reason in client.hold_reasons or ["HOLD"]:
        code, owner, note = HOLD_RESOLVERS.get(reason, _ANY_HOLD)
        queued = any(
            task.code == code and task.owner != Owner.CLIENT for task in client.open_tasks.values()
        )
        if not queued:
            fx.open_task(
                code,
                owner,
                fx.due_in(fx.policy.hold_review_within),
                priority="urgent",
                about=f"hold-{reason}",
                note=note,
            )
