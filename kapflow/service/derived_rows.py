"""What the store keeps beside the history, recomputed from it by `kapflow verify`.

Issue 18, finding 3: a verify that replays the chains alone misses an insider who edits
what the service reads instead of the history — a task closed, reassigned or postponed in
the `tasks` table, a client's `state` column, a receipt deleted or forged (a forged
receipt answers `duplicate` to the real event), a parked event, a rejection or an
unpublished outbox row deleted. Each of those rows is derived from the history (or stands
for a record), so each is recomputed and compared here:

- per client, with its history: the client row's columns against its snapshot, its task
  rows against the last change of each task in the history, its parked count, and the
  receipt of every entry;
- store-wide, in one pass per table: every receipt, parked event, rejection and outbox
  row stands for a record that is there, and the unpublished outbox has no holes.

What no history derives (a rejection, a parked event, and the order of everything) is
covered by the store head (service/store_head.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from kapflow.store.base import EventStore, HistoryEntry, Receipt, StoredRows, TaskRow
from kapflow.store.database import database_kind
from kapflow.store.due import fire_times, next_dues
from workflow.client import ClientSnapshot
from workflow.engine import ACCEPTED
from workflow.policy import CarePolicy
from workflow.tasks import OPEN_STATUSES, Task

Found = Callable[[str, int | None, str, str], None]  # client_id, seq, kind, detail
ReceiptKey = tuple[str, str]
# The task columns the service searches (the work queue, the clock) and the task field
# each must equal.
_TASK_COLUMNS = (("client_id", "for"), ("status", "status"), ("owner", "owner"), ("due", "due"))


# A check of stored due times, run once the batch's deadline receipts are read.
DueCheck = Callable[[Container[ReceiptKey]], None]


@dataclass(slots=True)
class StoredBatch:
    """A batch of clients' stored rows and the receipts their histories name, read
    together (a few statements per batch, never one per client). Which deadlines the
    clock has recorded is asked for the whole batch too: each client's checks of due
    times wait in `due_checks` until `settle` has read them."""

    rows: StoredRows
    receipts: dict[ReceiptKey, Receipt]
    asked: set[ReceiptKey] = field(default_factory=set)
    due_checks: list[DueCheck] = field(default_factory=list)

    def ask(self, keys: list[ReceiptKey]) -> Container[ReceiptKey]:
        """A `due.Lookup` that notes the keys asked and answers that none is recorded."""
        self.asked.update(keys)
        return frozenset()

    def settle(self, store: EventStore) -> None:
        recorded = store.receipts_of(sorted(self.asked)).keys() if self.asked else frozenset()
        for check in self.due_checks:
            check(recorded)
        self.asked.clear()
        self.due_checks.clear()


def read_batch(
    store: EventStore, histories: Sequence[tuple[str, list[HistoryEntry]]]
) -> StoredBatch:
    """The stored rows of these clients, and the receipts of their history entries."""
    rows = store.stored_rows([client_id for client_id, _ in histories])
    keys = [(entry.source, entry.event_id) for _, entries in histories for entry in entries]
    return StoredBatch(rows, store.receipts_of(keys))


def check_client_rows(
    client_id: str,
    entries: list[HistoryEntry],
    snapshot: ClientSnapshot | None,
    replayed: ClientSnapshot | None,
    batch: StoredBatch,
    policy: CarePolicy,
    found: Found,
) -> None:
    """Compare what the store keeps of one client beside its history with the history:
    `replayed` is the client its history gives (None when the replay stopped, the reason
    reported already), `snapshot` the one stored."""
    changes = [orjson.loads(entry.outcome) for entry in entries]
    _check_receipts(client_id, entries, changes, batch.receipts, found)
    _check_tasks(client_id, _last_changes(changes), batch, found)
    if replayed is not None:
        _check_client_row(client_id, replayed, batch, policy, found)
    if snapshot is not None:
        _check_parked(client_id, snapshot, batch, found)


def _check_receipts(
    client_id: str,
    entries: list[HistoryEntry],
    changes: list[dict[str, Any]],
    receipts: dict[ReceiptKey, Receipt],
    found: Found,
) -> None:
    # A history entry without its receipt would be recorded a second time if its event
    # came again; one with another outcome answers that event wrongly.
    for entry, change in zip(entries, changes, strict=True):
        outcome = change.get("outcome", ACCEPTED)
        receipt = receipts.get((entry.source, entry.event_id))
        if receipt is None:
            found(client_id, entry.seq, "receipt", f"event {entry.event_id} has no receipt")
        elif receipt.outcome != outcome or receipt.client_id != client_id:
            found(
                client_id,
                entry.seq,
                "receipt",
                f"receipt of {entry.event_id} says {receipt.outcome} for"
                f" {receipt.client_id}, history {outcome} for {client_id}",
            )
        elif receipt.digest is not None and _content_digest(entry) not in (None, receipt.digest):
            found(
                client_id,
                entry.seq,
                "receipt",
                f"event {entry.event_id} is not the content its receipt was recorded with",
            )


def _content_digest(entry: HistoryEntry) -> str | None:
    """The receipt digest of the entry's event (service/digest.py): the SHA-256 of the
    event as recorded, which is the text the history holds unless it carries a
    `traceparent` (left out of the digest; not checked then, rather than re-serialised)."""
    if '"traceparent"' in entry.event:
        return None
    try:
        data = entry.event.encode()
    except UnicodeEncodeError:  # as service/digest.py: a lone surrogate never raises
        data = entry.event.encode("utf-8", errors="surrogatepass")
    return hashlib.sha256(data).hexdigest()


def _last_changes(changes: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each task as the last history entry that opened or changed it left it."""
    tasks: dict[str, dict[str, Any]] = {}
    for change in changes:
        for task_change in change.get("tasks", ()):
            task = task_change["task"]
            tasks[task["id"]] = task
    return tasks


def _check_tasks(
    client_id: str, expected: dict[str, dict[str, Any]], batch: StoredBatch, found: Found
) -> None:
    matched: list[tuple[TaskRow, dict[str, Any]]] = []
    for row in batch.rows.tasks.get(client_id, []):
        task = expected.pop(row.task_id, None)
        if task is None:
            found(client_id, None, "task", f"task {row.task_id} is in no history entry")
            continue
        matched.append((row, task))
        differing = [column for column, name in _TASK_COLUMNS if getattr(row, column) != task[name]]
        if orjson.loads(row.task) != task:
            differing.append("task")
        if differing:
            found(
                client_id,
                None,
                "task",
                f"task {row.task_id} differs from its last recorded change in "
                + ",".join(differing),
            )
    for task_id in sorted(expected):
        found(client_id, None, "task", f"task {task_id} recorded in history has no task row")
    _check_fire_times(client_id, matched, batch, found)


def _check_fire_times(
    client_id: str, matched: list[tuple[TaskRow, dict[str, Any]]], batch: StoredBatch, found: Found
) -> None:
    # A stored due time may lag (a deadline recorded since, by an event that did not
    # rewrite the row), so only a later one than the history gives is a divergence: it
    # hides the deadline from the clock. Only an open task has one to hide.
    rows = {row.task_id: row for row, task in matched if task["status"] in OPEN_STATUSES}
    if not rows:
        return
    tasks = [Task.from_dict(task) for row, task in matched if row.task_id in rows]
    fire_times(tasks, batch.ask)

    def check(recorded: Container[ReceiptKey]) -> None:
        for task_id, due in fire_times(tasks, lambda _: recorded).items():
            row = rows[task_id]
            if due is not None and (row.fires_at is None or row.fires_at > due):
                found(
                    client_id,
                    None,
                    "task",
                    f"task {task_id} fires at {row.fires_at}, its deadline is {due}",
                )

    batch.due_checks.append(check)


def _check_client_row(
    client_id: str, replayed: ClientSnapshot, batch: StoredBatch, policy: CarePolicy, found: Found
) -> None:
    # The snapshot itself is compared with the replay (service/audit.py); these are the
    # columns searched beside it (`clients --state`, the clock's `next_due`).
    row = batch.rows.clients.get(client_id)
    if row is None:
        return
    if row.state != replayed.state or row.seq != replayed.seq:
        found(
            client_id,
            None,
            "client-row",
            f"client row says {row.state} at seq {row.seq}, its history {replayed.state}"
            f" at seq {replayed.seq}",
        )
    next_dues([replayed], policy, batch.ask)

    def check(recorded: Container[ReceiptKey]) -> None:
        # As for a task: a lagging next_due is harmless, a later one hides a timer.
        due = next_dues([replayed], policy, lambda _: recorded)[client_id]
        if due is not None and (row.next_due is None or row.next_due > due):
            found(
                client_id,
                None,
                "client-row",
                f"client row's next_due is {row.next_due}, its next timer falls due at {due}",
            )

    batch.due_checks.append(check)


def _check_parked(
    client_id: str, snapshot: ClientSnapshot, batch: StoredBatch, found: Found
) -> None:
    # The parked count is not replayed (no history records a parked event): it is held
    # against the parked events the store keeps for the client.
    parked = batch.rows.parked.get(client_id, 0)
    if parked != snapshot.parked:
        found(
            client_id,
            None,
            "parked",
            f"snapshot counts {snapshot.parked} parked events, the store holds {parked}",
        )


def check_rows_without_history(client_id: str, batch: StoredBatch, found: Found) -> None:
    """A client id without history can have no tasks and no parked events."""
    for row in batch.rows.tasks.get(client_id, []):
        found(client_id, None, "task", f"task {row.task_id} is in no history entry")


def _check_outbox_rows(store: EventStore, found: Found) -> None:
    # An entry gets an outbox row when it changed something consumers see (service/
    # recording.py `record_history`); every rejection gets one (its dead letter).
    entries, rejections = store.missing_from_outbox()
    for entry in entries:
        change = orjson.loads(entry.outcome)
        if change.get("tasks") or entry.from_state != entry.to_state or change.get("deviations"):
            found(
                entry.client_id,
                entry.seq,
                "outbox",
                "no outbox row for this entry, recorded after the oldest kept: an unpublished"
                " row was removed",
            )
    for key_source, key_id in rejections:
        found(
            "-",
            None,
            "outbox",
            f"no outbox row for rejection {key_source} {key_id}, recorded after the oldest"
            " kept: an unpublished row was removed",
        )


def check_store_rows(store: EventStore, found: Found) -> None:
    """Every receipt, parked event, rejection and outbox row stands for a record that is
    there; and (SQLite) no unpublished outbox row is missing."""
    for row in store.unbacked_rows():
        kind = {"receipts": "receipt", "rejections": "rejection"}.get(row.table, row.table)
        found(row.client_id or "-", None, kind, f"{row.detail} ({row.table} {row.key})")
    # SQLite has one writer, which stamps a batch after taking the lock, and hands out
    # outbox positions one after another: record times and positions follow the commits.
    # PostgreSQL's writers stamp with their own clocks and its identity may skip a value
    # when a commit fails, so neither a hole nor a later time proves a removal there.
    if database_kind(store.url) == "sqlite":
        _check_outbox_rows(store, found)
        _check_outbox_positions(store, found)


def _check_outbox_positions(store: EventStore, found: Found) -> None:
    unpublished, published = store.outbox_positions()
    # The relay publishes in position order and only published rows are pruned: from the
    # last published row on, every position must still be there.
    expected = (published + 1) if published is not None else (unpublished[0] if unpublished else 0)
    for position in unpublished:
        if position > expected:
            missing = f"{expected}" if position == expected + 1 else f"{expected}..{position - 1}"
            found("-", None, "outbox", f"unpublished outbox row(s) {missing} removed")
        expected = position + 1
