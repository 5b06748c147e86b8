"""When kapflow's clock next has work: the `next_due` and `fires_at` columns both adapters keep.

The clock must not load every client on every tick (issue 10: a tick costs in proportion
to what is due). So whenever the store writes a snapshot it also writes the earliest due
time among the client's timers (`workflow.timers.timers`) that the clock has not recorded
yet, and the clock reads only the clients whose `next_due` has passed, through an index.

A timer counts as recorded once its `system.deadline_reached` event has a receipt: firing
it again would only be a duplicate. Without that, every client whose inactivity timer
fired once would be read again on every tick for ever, and the cost of a tick would grow
with the store after all. Tasks get the same treatment: `tasks.fires_at` is the due time
of an open task whose deadline the clock has not recorded yet.

Looking receipts up for every timer and task a batch writes would cost a query per batch
and most of it for nothing: the clock records a deadline only once it is due, under an
event id that carries its due time. So the store keeps the latest due time the clock has
recorded (`clock_recorded_until`); a deadline due after it cannot have been recorded, and
only the rest (deadlines already past, rare while ingesting) are looked up.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable

from workflow.client import ClientSnapshot
from workflow.policy import CarePolicy
from workflow.tasks import OPEN_STATUSES, Task
from workflow.timers import CLOCK_SOURCE, Timer, timers

ReceiptKey = tuple[str, str]
# The `meta` row holding the latest due time the clock has recorded.
CLOCK_MARK = "clock_recorded_until"
# A clock mark later than any due time: look every key up (migrations, no mark known).
MAX_MARK = "\uffff"
# Which of these receipt keys the store already holds.
Lookup = Callable[[list[ReceiptKey]], Container[ReceiptKey]]


def deadline_event_id(task_id: str, due: str) -> str:
    """The id of the `system.deadline_reached` event recording a task's or timer's due time.

    Derived from what fell due and when, so a second tick, a restart or a second worker
    only produces duplicates (kapflow/service/clock.py records it under this id).
    """
    return f"deadline:{task_id}:{due}"


def deadline_key(timer: Timer) -> ReceiptKey:
    return (CLOCK_SOURCE, deadline_event_id(timer.id, timer.due))


def deadline_due(key: ReceiptKey) -> str | None:
    """The due time a clock receipt records (inverse of `deadline_event_id`), else None."""
    source, event_id = key
    if source != CLOCK_SOURCE or not event_id.startswith("deadline:"):
        return None
    _, _, due = event_id.removeprefix("deadline:").partition(":")  # task ids are UUIDs
    return due or None


def recorded_until(previous: str | None, keys: Iterable[ReceiptKey]) -> str | None:
    """The latest due time the clock has recorded, after recording these receipts."""
    dues = [due for due in map(deadline_due, keys) if due is not None]
    if previous is not None:
        dues.append(previous)
    return max(dues) if dues else None


def next_dues(
    snapshots: Iterable[ClientSnapshot],
    policy: CarePolicy,
    lookup: Lookup,
    recorded_now: Container[ReceiptKey] = (),
    clock_mark: str | None = MAX_MARK,
) -> dict[str, str | None]:
    """Each client's earliest due time among timers whose deadline is not recorded yet.

    `recorded_now` holds the receipts the current transaction writes; `lookup` says which
    of the other keys due by `clock_mark` the store already holds (one indexed read for
    all the clients; None: the clock has recorded nothing, so nothing to look up).
    """
    pending = {
        snapshot.client_id: [(deadline_key(t), t.due) for t in timers(snapshot, policy)]
        for snapshot in snapshots
    }
    return _earliest_unrecorded(pending, lookup, recorded_now, clock_mark)


def fire_times(
    tasks: Iterable[Task],
    lookup: Lookup,
    recorded_now: Container[ReceiptKey] = (),
    clock_mark: str | None = MAX_MARK,
) -> dict[str, str | None]:
    """Each task's due time while it is open and its deadline is not recorded yet, else None.

    An overdue task fires once (it escalates); without this, every task left open past its
    due time would be offered to the clock again on every tick, for ever.
    """
    pending = {
        task.id: (
            [((CLOCK_SOURCE, deadline_event_id(task.id, task.due)), task.due)]
            if task.status in OPEN_STATUSES
            else []
        )
        for task in tasks
    }
    return _earliest_unrecorded(pending, lookup, recorded_now, clock_mark)


def _earliest_unrecorded(
    pending: dict[str, list[tuple[ReceiptKey, str]]],
    lookup: Lookup,
    recorded_now: Container[ReceiptKey],
    clock_mark: str | None,
) -> dict[str, str | None]:
    unknown = {
        key: due for found in pending.values() for key, due in found if key not in recorded_now
    }
    maybe_stored = sorted(
        key for key, due in unknown.items() if clock_mark is not None and due <= clock_mark
    )
    stored = lookup(maybe_stored) if maybe_stored else frozenset()
    earliest: dict[str, str | None] = {}
    for name, found in pending.items():
        dues = [due for key, due in found if key in unknown and key not in stored]
        earliest[name] = min(dues) if dues else None
    return earliest
