"""What kapflow's own clock events do: a task past its due time is escalated."""

from __future__ import annotations

from kapflow.workflow.handlers.effects import Effects
from kapflow.workflow.tasks import raise_priority


def deadline_reached(fx: Effects) -> None:
    task = fx.after.open_tasks.get(fx.data.task_id)
    if task is None:
        return  # fulfilled before its deadline fired: recorded, nothing to escalate
    fx.update_task(task.with_priority(raise_priority(task.priority), fx.at))


HANDLERS = {"system.deadline_reached": deadline_reached}
