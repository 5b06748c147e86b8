"""Events from the operations team's tools: closing a task that no care event fulfils.

Some tasks are fulfilled outside the pathway (an invoice sent, a prescriber notified, a
reminder delivered); this event records that, so the task closes and its deadline stops.
"""

from __future__ import annotations

from typing import Literal

from events.envelope import CloudEvent, Code, EventData

Role = Literal["scheduler", "clinician", "billing", "prescriber_liaison", "client"]


class TaskCompletedData(EventData):
    task_id: Code
    resolution: Literal["completed", "cancelled"] = "completed"
    by_role: Role


class TaskCompleted(CloudEvent):
    type: Literal["operations.task_completed"]
    data: TaskCompletedData


OPERATIONS_EVENTS: tuple[type[CloudEvent], ...] = (TaskCompleted,)
