"""What a handler may do besides the transition: update facts, open and close tasks."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal

from events.envelope import CloudEvent
from workflow.client import ClientSnapshot
from workflow.policy import CarePolicy
from workflow.tasks import Task, iso, task_id_for


@dataclass(slots=True)  # a value: never mutated after construction
class TaskChange:
    change: str  # opened | updated | closed
    task: Task

    def as_dict(self) -> dict[str, object]:
        return {"change": self.change, "task": self.task.as_dict()}


@dataclass(slots=True)
class Effects:
    """The working copy of one event's effects on a client."""

    event: CloudEvent
    before: ClientSnapshot
    after: ClientSnapshot
    policy: CarePolicy
    target: str
    task_changes: list[TaskChange] = field(default_factory=list)
    at: str = ""

    def __post_init__(self) -> None:
        self.at = iso(self.event.time)

    @property
    def data(self):  # type: ignore[no-untyped-def]
        return self.event.data

    def due_in(self, delta: timedelta) -> str:
        return iso(self.event.time + delta)

    def open_task(
        self,
        code: str,
        owner: str,
        due: str,
        *,
        priority: str = "routine",
        about: str | None = None,
        amount_usd: Decimal | None = None,
        note: str | None = None,
    ) -> Task:
        task = Task(
            id=task_id_for(
                self.after.client_id, self.event.source, self.event.id, code, about or ""
            ),
            status="requested",
            priority=priority,
            code=code,
            for_=self.after.client_id,
            owner=owner,
            focus=self.event.id,
            authored_on=self.at,
            due=due,
            last_modified=self.at,
            amount_usd=None if amount_usd is None else f"{amount_usd:.2f}",
            note=note,
            about=about,
        )
        if task.id in self.after.open_tasks:
            return self.after.open_tasks[task.id]
        self.after.open_tasks[task.id] = task
        self.task_changes.append(TaskChange("opened", task))
        return task

    def close_tasks(self, *codes: str, about: str | None = None, status: str = "completed") -> None:
        """Close the open tasks with these codes (and, if given, about this appointment)."""
        wanted = set(codes)
        for task in list(self.after.open_tasks.values()):
            if task.code in wanted and (about is None or task.about == about):
                self._close(task, status)

    def cancel_open_tasks(self, keep_owners: frozenset[str] = frozenset()) -> None:
        for task in list(self.after.open_tasks.values()):
            if task.owner not in keep_owners:
                self._close(task, "cancelled")

    def update_task(self, task: Task) -> None:
        self.after.open_tasks[task.id] = task
        self.task_changes.append(TaskChange("updated", task))

    def close_task(self, task: Task, status: str = "completed") -> None:
        self._close(task, status)

    def _close(self, task: Task, status: str) -> None:
        del self.after.open_tasks[task.id]
        self.task_changes.append(TaskChange("closed", task.with_status(status, self.at)))
