"""What a handler may do besides the transition: update facts, open and close tasks."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal

from events.envelope import CloudEvent
from workflow.client import ClientSnapshot
from workflow.policy import CarePolicy
from workflow.releases import CURRENT_RELEASE, PathwayRelease
from workflow.tasks import Task, TaskCode, iso, task_id_for


@dataclass(slots=True)  # a value: never mutated after construction
class TaskEffect:
    """What one event did to one task; published as `events.outputs.TaskChange`."""

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
    release: PathwayRelease = CURRENT_RELEASE
    task_changes: list[TaskEffect] = field(default_factory=list)
    at: str = ""

    def __post_init__(self) -> None:
        if not self.at:
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
        raised_by: tuple[str, str, str] | None = None,
    ) -> Task:
        """Open a task raised by this event (or, `raised_by`, by an earlier recorded one:
        its source, id and time)."""
        source, event_id, raised_at = raised_by or (self.event.source, self.event.id, self.at)
        task = Task(
            id=task_id_for(
                self.after.client_id,
                source,
                event_id,
                code,
                about or "",
                raised_at=raised_at if self.release.time_ordered_task_ids else None,
            ),
            status="requested",
            priority=priority,
            code=code,
            for_=self.after.client_id,
            owner=owner,
            focus=event_id,
            authored_on=self.at,
            due=due,
            last_modified=self.at,
            amount_usd=None if amount_usd is None else f"{amount_usd:.2f}",
            note=note,
            about=about,
        )
        if task.id in self.after.open_tasks:
            return self.after.open_tasks[task.id]
        if (
            self.release.derives_from_facts
            and code in CANNOT_HAPPEN_AFTER_EXIT
            and self.after.state in LEFT_CARE
        ):
            return task  # the client has left care: this can no longer happen (SPEC §4)
        self.after.open_tasks[task.id] = task
        self.task_changes.append(TaskEffect("opened", task))
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

    def cancel_tasks_that_can_no_longer_happen(self, keep_owners: frozenset[str]) -> None:
        """The client left care (withdrawal, completion, ineligibility): SPEC §4."""
        if not self.release.keeps_duties_on_exit:
            self.cancel_open_tasks(keep_owners=keep_owners)
            return
        for task in list(self.after.open_tasks.values()):
            if task.code in CANNOT_HAPPEN_AFTER_EXIT:
                self._close(task, "cancelled")

    def update_task(self, task: Task) -> None:
        self.after.open_tasks[task.id] = task
        self.task_changes.append(TaskEffect("updated", task))

    def close_task(self, task: Task, status: str = "completed", note: str | None = None) -> None:
        self._close(task, status, note)

    def _close(self, task: Task, status: str, note: str | None = None) -> None:
        del self.after.open_tasks[task.id]
        closed = task.with_status(status, self.at)
        if note is not None:
            closed = closed.revised(at=self.at, note=note)
        self.task_changes.append(TaskEffect("closed", closed))


LEFT_CARE = frozenset({"ineligible", "withdrawn", "completed"})
# SPEC §4: leaving care cancels only what can no longer happen — scheduling, preparation,
# dosing and what leads to them. Safety duties (R10 notification, R11 follow-up), the
# after-dosing abstinence reminder, deviation and hold reviews, clinical reviews and billing
# (R12) stay open until someone completes them.
CANNOT_HAPPEN_AFTER_EXIT = frozenset(
    {
        TaskCode.SCHEDULE_ASSESSMENT,
        TaskCode.REFER_MEDICAL_EVALUATION,
        TaskCode.VERIFY_INSURANCE_BENEFITS,
        TaskCode.SCHEDULE_PREPARATION,
        TaskCode.SCHEDULE_DOSING,
        TaskCode.CONFIRM_CHAPERONE,
        TaskCode.ABSTINENCE_REMINDER_BEFORE,
        TaskCode.SCHEDULE_INTEGRATION,
        TaskCode.RESCHEDULE_APPOINTMENT,
        TaskCode.RENEW_HIGH_DOSE_PACKAGE,
        TaskCode.RENEW_LOW_DOSE_SUBSCRIPTION,
        TaskCode.RENEW_MEDICAL_CLEARANCE,
        TaskCode.FOLLOW_UP_INACTIVE_CLIENT,
    }
)
