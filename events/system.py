"""Events kapflow records from its own clock: time enters the engine only as events."""

from __future__ import annotations

from typing import Literal

from events.envelope import CloudEvent, Code, EventData

# The CloudEvents `source` kapflow uses for the events its own clock emits.
SYSTEM_SOURCE = "urn:kapflow:clock"


class DeadlineReachedData(EventData):
    task_id: Code


class DeadlineReached(CloudEvent):
    type: Literal["system.deadline_reached"]
    data: DeadlineReachedData


SYSTEM_EVENTS: tuple[type[CloudEvent], ...] = (DeadlineReached,)
