"""What the operations team's events do: close a task fulfilled outside the pathway."""

from __future__ import annotations

from workflow.handlers.effects import Effects


def task_completed(fx: Effects) -> None:
    task = fx.after.open_tasks.get(fx.data.task_id)
    if task is not None:
        fx.close_task(task, fx.data.resolution)
    # An unknown or already closed task: recorded, nothing to close.


HANDLERS = {"operations.task_completed": task_completed}
