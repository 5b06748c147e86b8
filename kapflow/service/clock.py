"""kapflow's clock: turns the passing of time into recorded events.

The engine never reads a clock. Whoever runs kapflow (the `serve` ticker, each Kafka
worker for the clients of its partitions, or an operator with `kapflow tick --now T`)
ticks one `CareClock`: it asks what fell due, and records one `system.deadline_reached`
event per task deadline or timer through that runtime's way of recording events, then
expires stale parked events the same way. The runtimes differ only in that way (the
service directly, serve's single writer, the worker's events topic).

The event id is derived from the task and its due time, and the event `time` is the due
time itself, so firing twice (a restart, two workers, two ticks) is a duplicate, and a
replay reproduces it exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from kapflow.service.ingest import IngestResult, IngestService
from kapflow.store.base import EventStore
from kapflow.store.due import deadline_event_id
from workflow.policy import CarePolicy
from workflow.tasks import iso
from workflow.timers import CLOCK_SOURCE, timers

Owns = Callable[[str], bool]
MAX_ROUNDS = 5


@dataclass(slots=True)  # a value: never mutated after construction
class Deadline:
    client_id: str
    task_id: str  # an open task's id, or a timer id
    kind: str  # "task" or "timer"
    code: str  # the task code, or the timer kind
    due: str
    owner: str | None = None
    priority: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "task_id": self.task_id,
            "kind": self.kind,
            "code": self.code,
            "due": self.due,
            "owner": self.owner,
            "priority": self.priority,
        }

    def event(self) -> dict[str, Any]:
        """The `system.deadline_reached` CloudEvent that records this deadline."""
        return {
            "specversion": "1.0",
            "id": deadline_event_id(self.task_id, self.due),
            "source": CLOCK_SOURCE,
            "type": "system.deadline_reached",
            "subject": self.client_id,
            "time": self.due,
            "datacontenttype": "application/json",
            "data": {"task_id": self.task_id},
        }


def deadlines(
    store: EventStore, policy: CarePolicy, until: datetime, owns: Owns | None = None
) -> list[Deadline]:
    """Every task deadline and timer due at or before `until`, earliest first."""
    limit = iso(until + timedelta(seconds=1))  # `due_before` is exclusive
    found = [
        Deadline(t.for_, t.id, "task", t.code, t.due, t.owner, t.priority)
        # Only open tasks whose deadline is not recorded yet (an index on `fires_at`).
        for t in store.tasks_due(limit, limit=10**9)
    ]
    # Only clients with a timer due that is not recorded yet (an index on `next_due`).
    for client in store.clients_due(limit, limit=10**9):
        for timer in timers(client, policy):
            if timer.due < limit:
                found.append(Deadline(client.client_id, timer.id, "timer", timer.kind, timer.due))
    if owns is not None:
        found = [d for d in found if owns(d.client_id)]
    return sorted(found, key=lambda d: (d.due, d.client_id, d.task_id))


@dataclass(slots=True)
class TickReport:
    now: str
    fired: list[IngestResult] = field(default_factory=list)
    expired_parked: list[IngestResult] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        outcomes: dict[str, int] = {}
        for result in self.fired:
            outcomes[result.outcome] = outcomes.get(result.outcome, 0) + 1
        return {
            "now": self.now,
            "deadlines": len(self.fired),
            "outcomes": outcomes,
            "expired_parked": len(self.expired_parked),
        }


Record = Callable[[list[dict[str, Any]]], list[IngestResult]]


def fire_deadlines(
    record: Record,
    store: EventStore,
    policy: CarePolicy,
    now: datetime,
    owns: Owns | None = None,
) -> list[IngestResult]:
    """Record every deadline due by `now` through `record` (a service or a single writer).

    An escalation opens a supervisor task whose own due time may already have passed (event
    time is the missed deadline): repeat until nothing new falls due. Supervisor tasks do
    not escalate into further supervisor tasks, so this ends within three rounds.
    """
    fired: list[IngestResult] = []
    for _ in range(MAX_ROUNDS):
        due = deadlines(store, policy, now, owns)
        if not due:
            break
        results = record([deadline.event() for deadline in due])
        fired.extend(results)
        if not any(result.outcome == "accepted" for result in results):
            break
    return fired


Expire = Callable[[datetime, Owns | None], list[IngestResult]]


@dataclass(slots=True)
class CareClock:
    """kapflow's one clock: `tick(now)` records what fell due by `now` through `record` and
    expires parked events past the parking window through `expire`."""

    store: EventStore
    policy: CarePolicy
    record: Record
    expire: Expire

    @classmethod
    def over(cls, service: IngestService) -> CareClock:
        """The clock that records straight through `service` (CLI, tests, the demo)."""
        return cls(service.store, service.policy, service.ingest_batch, service.expire_parked)

    def tick(self, now: datetime, owns: Owns | None = None) -> TickReport:
        report = TickReport(iso(now))
        report.fired = fire_deadlines(self.record, self.store, self.policy, now, owns)
        report.expired_parked = self.expire(now, owns)
        return report


def tick(service: IngestService, now: datetime, owns: Owns | None = None) -> TickReport:
    """Record what fell due by `now`, and expire parked events past the parking window."""
    return CareClock.over(service).tick(now, owns)
