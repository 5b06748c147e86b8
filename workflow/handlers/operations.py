"""What the operations team's events do to the work queue: complete, claim, cancel, reassign.

A task that is unknown or already closed when the event arrives is left alone: the event is
still recorded (it happened), it just has nothing left to change.
"""

from __future__ import annotations

from dataclasses import replace

from workflow.handlers.effects import Effects


def task_completed(fx: Effects) -> None:
    task = fx.after.open_tasks.get(fx.data.task_id)
    if task is not None:
        fx.close_task(task, fx.data.resolution)


def task_claimed(fx: Effects) -> None:
    task = fx.after.open_tasks.get(fx.data.task_id)
    if task is not None and task.status != "in-progress":
        fx.update_task(replace(task, status="in-progress", last_modified=fx.at))


def task_cancelled(fx: Effects) -> None:
    task = fx.after.open_tasks.get(fx.data.task_id)
    if task is not None:
        why = f"cancelled: {fx.data.reason}"
        note = f"{task.note}; {why}" if task.note else why
        fx.close_task(replace(task, note=note), "cancelled")


def task_reassigned(fx: Effects) -> None:
    task = fx.after.open_tasks.get(fx.data.task_id)
    if task is not None and task.owner != fx.data.to_role:
        fx.update_task(replace(task, owner=fx.data.to_role, last_modified=fx.at))


HANDLERS = {
    "operations.task_completed": task_completed,
    "operations.task_claimed": task_claimed,
    "operations.task_cancelled": task_cancelled,
    "operations.task_reassigned": task_reassigned,
}
