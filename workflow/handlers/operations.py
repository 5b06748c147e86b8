"""What the operations team's events do to the work queue: complete, claim, cancel, reassign;
and the review a break-glass read opens.

A task that is unknown or already closed when the event arrives is left alone: the event is
still recorded (it happened), it just has nothing left to change. The person or service
that acted (the event's `actor`) is kept on the task as its claimant, completer or
canceller; an event recorded before actors were named (`actor` None) sets none of them, so
its replay gives the task it gave then.
"""

from __future__ import annotations

from dataclasses import replace

from workflow.handlers.effects import Effects
from workflow.tasks import Owner, TaskCode


def task_completed(fx: Effects) -> None:
    task = fx.after.open_tasks.get(fx.data.task_id)
    if task is None:
        return
    actor = fx.data.actor
    if actor is not None:
        who = "completed_by" if fx.data.resolution == "completed" else "cancelled_by"
        task = replace(task, **{who: actor})
    fx.close_task(task, fx.data.resolution)


def task_claimed(fx: Effects) -> None:
    task = fx.after.open_tasks.get(fx.data.task_id)
    if task is not None and task.status != "in-progress":
        claimed_by = fx.data.actor if fx.data.actor is not None else task.claimed_by
        fx.update_task(
            replace(task, status="in-progress", last_modified=fx.at, claimed_by=claimed_by)
        )


def task_cancelled(fx: Effects) -> None:
    task = fx.after.open_tasks.get(fx.data.task_id)
    if task is not None:
        why = f"cancelled: {fx.data.reason}"
        note = f"{task.note}; {why}" if task.note else why
        cancelled_by = fx.data.actor if fx.data.actor is not None else task.cancelled_by
        fx.close_task(replace(task, note=note, cancelled_by=cancelled_by), "cancelled")


def task_reassigned(fx: Effects) -> None:
    task = fx.after.open_tasks.get(fx.data.task_id)
    if task is not None and task.owner != fx.data.to_role:
        fx.update_task(replace(task, owner=fx.data.to_role, last_modified=fx.at))


def break_glass_invoked(fx: Effects) -> None:
    # Issue 18: every emergency read opens a review; the note names who and why (codes only).
    fx.open_task(
        TaskCode.REVIEW_BREAK_GLASS_ACCESS,
        Owner.CLINICIAN,
        fx.due_in(fx.policy.break_glass_review_within),
        priority="urgent",
        note=f"break-glass by {fx.data.actor}: {fx.data.reason}, {fx.data.minutes} min",
    )


HANDLERS = {
    "operations.task_completed": task_completed,
    "operations.task_claimed": task_claimed,
    "operations.task_cancelled": task_cancelled,
    "operations.task_reassigned": task_reassigned,
    "operations.break_glass_invoked": break_glass_invoked,
}
