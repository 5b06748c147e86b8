"""The demo clinic: the synthetic cohort's events, the staff who work the queue, and kapflow's
clock, run day by day up to a given "now".

Why: a demo dated in the past, run by `kapflow serve` at today's time, fires every deadline
at once and shows a clinic in collapse; and a cohort in which nobody ever completes a task
shows queues that only grow. Here the cohort's journeys end at `now` (the caller's clock: the
CLI reads the wall clock, the engine never does), and each simulated day is, in order:

1. the publishers' events of that day (the cohort, unchanged: its deliberate rule breaks and
   delivery faults included);
2. the staff's work: tasks no care event fulfils (billing, reminders, notifications,
   reviews, supervisor follow-ups…) are completed with `operations.task_completed`, most of
   them before they fall due and some late, so at `now` the queue holds what staff have
   not got to yet;
3. kapflow's clock (`tick`) at the end of the day: what fell due is recorded, so overdue
   tasks escalate and timers (subscription ends, inactivity) fire when they would have.

Deterministic for a given seed and `now`: the staff's choices are drawn from a hash of the
seed and the task id, never from a shared random stream, so they do not depend on the order
tasks are seen in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from kapflow.demo.cohort import OBSERVATION_DAYS, generate_cohort
from kapflow.service.clock import tick
from kapflow.service.ingest import IngestResult, IngestService
from kapflow.service.work_queue import OPERATIONS_SOURCE
from workflow.tasks import Task, TaskCode, iso

# Tasks only a care event closes (a booking, a chaperone's confirmation, the evaluation):
# staff do not tick these off by hand, the publishers' events do. Renewal requests and hold
# reviews are staff work (the liaison asks the prescriber; the clinician reviews the hold),
# which the renewal or the release closes if it comes first.
FULFILLED_BY_CARE_EVENTS = frozenset(
    {
        TaskCode.SCHEDULE_ASSESSMENT,
        TaskCode.SCHEDULE_PREPARATION,
        TaskCode.SCHEDULE_DOSING,
        TaskCode.SCHEDULE_INTEGRATION,
        TaskCode.CONFIRM_CHAPERONE,
        TaskCode.REFER_MEDICAL_EVALUATION,
        TaskCode.RESCHEDULE_APPOINTMENT,
    }
)
# How staff get through the rest of the queue: a share is done late (it escalates first).
LATE_SHARE = 0.08


@dataclass(slots=True)
class ClinicDay:
    """What one run produced, for the demo's summary."""

    now: str
    start: str
    results: list[IngestResult] = field(default_factory=list)
    clock: list[IngestResult] = field(default_factory=list)
    staff_completions: int = 0


def start_for(now: datetime) -> datetime:
    """The cohort's first enquiry: `OBSERVATION_DAYS` before `now`, so its journeys end then."""
    return (now - timedelta(days=OBSERVATION_DAYS)).astimezone(UTC)


def _draw(seed: int, task_id: str, purpose: str) -> float:
    """A number in [0, 1) fixed by the seed, the task and what it decides."""
    digest = hashlib.sha256(f"{seed}\x1f{task_id}\x1f{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def planned_completion(seed: int, task: Task) -> datetime:
    """When staff get to `task`: mostly before it falls due, sometimes after."""
    authored = datetime.fromisoformat(task.authored_on)
    due = datetime.fromisoformat(task.due)
    window = max(due - authored, timedelta(minutes=10))
    share = _draw(seed, task.id, "when")
    if _draw(seed, task.id, "late") < LATE_SHARE:
        return due + window * (0.2 + 1.3 * share)
    return authored + window * (0.1 + 0.85 * share)


def _staff_event(task: Task, at: str) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": f"staff-{task.id}",
        "source": OPERATIONS_SOURCE,
        "type": "operations.task_completed",
        "subject": task.for_,
        "time": at,
        "datacontenttype": "application/json",
        "data": {"task_id": task.id, "by_role": task.owner, "actor": "demo-staff"},
    }


def _days(start: datetime, now: datetime) -> Iterator[datetime]:
    """The end of each simulated day, the last one being `now` itself."""
    day_end = start.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    while day_end < now:
        yield day_end
        day_end += timedelta(days=1)
    yield now


def run_clinic(
    service: IngestService, now: datetime, clients: int = 300, seed: int = 7
) -> ClinicDay:
    """Run the cohort, the staff and the clock up to `now`; everything through `service`."""
    now = now.astimezone(UTC)
    start = start_for(now)
    report = ClinicDay(iso(now), iso(start))
    events = generate_cohort(clients=clients, seed=seed, start=start)
    pending = next(events, None)
    planned: dict[str, datetime] = {}
    last_seen: dict[str, str] = {}  # client → time of its latest event sent so far
    recording_clock = service.clock
    for day_end in _days(start, now):
        # The simulated clinic records each day at its end: what it sends that day is never
        # in its own future (TIME_IN_FUTURE), and `--known-at` replays follow its days.
        service.clock = lambda day_end=day_end: day_end  # type: ignore[misc]
        limit = iso(day_end)
        todays: list[dict[str, Any]] = []
        while pending is not None and pending["time"] <= limit:
            todays.append(pending)
            pending = next(events, None)
        for event in todays:
            last_seen[event["subject"]] = max(last_seen.get(event["subject"], ""), event["time"])
        report.results += service.ingest_batch(todays) if todays else []
        report.staff_completions += _staff_work(service, seed, day_end, planned, last_seen)
        ticked = tick(service, day_end)
        report.clock += ticked.fired
        report.results += ticked.expired_parked
    service.clock = recording_clock
    return report


def _staff_work(
    service: IngestService,
    seed: int,
    day_end: datetime,
    planned: dict[str, datetime],
    last_seen: dict[str, str],
) -> int:
    """Complete the open tasks staff would have done by the end of this day."""
    work: list[dict[str, Any]] = []
    for task in service.store.tasks(open_only=True, limit=10**7):
        if task.code in FULFILLED_BY_CARE_EVENTS:
            continue  # the client's next booking, confirmation or evaluation closes it
        if task.id not in planned:
            planned[task.id] = planned_completion(seed, task)
        if planned[task.id] > day_end:
            continue
        # Never before the client's latest recorded event: a client's history moves forward.
        at = max(iso(planned[task.id]), last_seen.get(task.for_, ""))
        work.append(_staff_event(task, at))
        last_seen[task.for_] = at
    work.sort(key=lambda event: (event["time"], event["subject"], event["id"]))
    if work:
        service.ingest_batch(work)
    return len(work)
