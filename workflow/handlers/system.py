"""What kapflow's own clock events do: overdue tasks escalate, timers fire."""

from __future__ import annotations

from datetime import date

from workflow.handlers.effects import Effects
from workflow.handlers.prescriber import renewal_owner
from workflow.tasks import Owner, Task, TaskCode, raise_priority
from workflow.timers import (
    CLEARANCE_RENEWAL,
    INACTIVITY,
    SUBSCRIPTION_END,
    Timer,
    timer_named,
)


def deadline_reached(fx: Effects) -> None:
    task_id = fx.data.task_id
    task = fx.after.open_tasks.get(task_id)
    if task is not None:
        escalate(fx, task)
        return
    timer = timer_named(fx.before, fx.policy, task_id)
    if timer is not None:
        TIMER_EFFECTS[timer.kind](fx, timer)
    # Otherwise the task was done, or the watched fact changed: recorded, nothing to do.


def escalate(fx: Effects, task: Task) -> None:
    """An overdue task: raise its priority and (once) ask a supervisor to see it done."""
    fx.update_task(task.with_priority(raise_priority(task.priority), fx.at))
    if task.code == TaskCode.SUPERVISE_OVERDUE_TASK:
        return  # a late supervisor task only rises in priority: no chain of supervisors
    fx.open_task(
        TaskCode.SUPERVISE_OVERDUE_TASK,
        task.owner,
        fx.due_in(fx.policy.supervisor_response_within),
        priority="urgent",
        about=task.id,
        note=f"overdue: {task.code}",
    )


def clearance_expiring(fx: Effects, timer: Timer) -> None:
    fx.open_task(
        TaskCode.RENEW_MEDICAL_CLEARANCE,
        Owner.PRESCRIBER_LIAISON,
        f"{date.fromisoformat(timer.basis).isoformat()}T00:00:00Z",
        about=timer.basis,
    )


def subscription_ran_out(fx: Effects, timer: Timer) -> None:
    # R9: a month without renewal is a lapse, as if Joyous had reported it.
    fx.after.subscription_active = False
    if fx.after.timeline:
        fx.after.lapses = [*fx.after.lapses, fx.at]
    if "R9" not in fx.after.hold_reasons:
        fx.after.hold_reasons.append("R9")
    fx.open_task(
        TaskCode.RENEW_LOW_DOSE_SUBSCRIPTION,
        renewal_owner(fx.release),
        fx.due_in(fx.policy.renewal_within),
        about=timer.basis,
    )


def client_inactive(fx: Effects, timer: Timer) -> None:
    fx.open_task(
        TaskCode.FOLLOW_UP_INACTIVE_CLIENT,
        Owner.CLINICIAN,
        fx.due_in(fx.policy.clinical_review_within),
        about=timer.basis,
    )


TIMER_EFFECTS = {
    CLEARANCE_RENEWAL: clearance_expiring,
    SUBSCRIPTION_END: subscription_ran_out,
    INACTIVITY: client_inactive,
}

HANDLERS = {"system.deadline_reached": deadline_reached}
