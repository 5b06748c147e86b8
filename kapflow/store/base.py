"""The store interface: what the service layer needs from a database, and nothing more.

One transaction per batch: the service layer reads what it needs inside the transaction
(receipts, client snapshots, parked events), computes every outcome with the engine, and
hands the adapter one `BatchWrites` to write before commit. Adapters (SQLite, PostgreSQL)
differ only in SQL; tests/test_store.py runs the same suite against both.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from workflow.client import ClientSnapshot
from workflow.tasks import Task


@dataclass(slots=True)  # a value: never mutated after construction
class HistoryEntry:
    """One accepted event in a client's history, hash-chained to the previous entry."""

    client_id: str
    seq: int
    source: str
    event_id: str
    type: str
    occurred_at: str
    recorded_at: str
    pathway_version: str
    from_state: str
    to_state: str
    event: str  # the CloudEvent as kapflow recorded it (JSON)
    outcome: str  # the recorded outcome (JSON): states, task changes, reasons
    prev_hash: str
    hash: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "seq": self.seq,
            "source": self.source,
            "event_id": self.event_id,
            "type": self.type,
            "occurred_at": self.occurred_at,
            "recorded_at": self.recorded_at,
            "pathway_version": self.pathway_version,
            "from_state": self.from_state,
            "to_state": self.to_state,
            "event": json.loads(self.event),
            "outcome": json.loads(self.outcome),
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


def chain_hash(
    prev_hash: str,
    client_id: str,
    seq: int,
    source: str,
    event_id: str,
    type_: str,
    occurred_at: str,
    recorded_at: str,
    pathway_version: str,
    from_state: str,
    to_state: str,
    event: str,
    outcome: str,
) -> str:
    """SHA-256 over the previous hash and every recorded field of the entry."""
    material = "\x1e".join(
        (
            prev_hash,
            client_id,
            str(seq),
            source,
            event_id,
            type_,
            occurred_at,
            recorded_at,
            pathway_version,
            from_state,
            to_state,
            event,
            outcome,
        )
    )
    return hashlib.sha256(material.encode()).hexdigest()


def entry_hash(entry: HistoryEntry) -> str:
    return chain_hash(
        entry.prev_hash,
        entry.client_id,
        entry.seq,
        entry.source,
        entry.event_id,
        entry.type,
        entry.occurred_at,
        entry.recorded_at,
        entry.pathway_version,
        entry.from_state,
        entry.to_state,
        entry.event,
        entry.outcome,
    )


@dataclass(slots=True)  # a value: never mutated after construction
class ClientHistory:
    """A client's history in seq order with its snapshot, read together (`snapshot` is
    None when the store has no client row for the id; `entries` is empty when it has no
    history)."""

    client_id: str
    entries: list[HistoryEntry]
    snapshot: ClientSnapshot | None


@dataclass(slots=True)  # a value: never mutated after construction
class ParkedEvent:
    source: str
    event_id: str
    client_id: str
    type: str
    occurred_at: str
    recorded_at: str
    event: str  # JSON
    reasons: str  # JSON


@dataclass(slots=True)  # a value: never mutated after construction
class RejectedRecord:
    key_source: str
    key_id: str
    source: str | None
    event_id: str | None
    client_id: str | None
    type: str | None
    recorded_at: str
    reasons: str  # JSON list of reason objects
    original: str  # the original message text (dead letter)


@dataclass(slots=True)  # a value: never mutated after construction
class OutboxRef:
    """A transactional-outbox row: points at what was recorded, rendered when published.

    `kind` "history" → the (client_id, seq) history entry (its state and task changes);
    `kind` "rejection" → the rejected record keyed (key_source, key_id).
    """

    kind: str
    client_id: str | None
    seq: int | None
    key_source: str | None
    key_id: str | None
    recorded_at: str


OutboxRow = tuple[int, OutboxRef, "HistoryEntry | RejectedRecord"]


@dataclass(slots=True)  # a value: never mutated after construction
class Receipt:
    """The outcome recorded for (`source`, `event_id`), and the SHA-256 (hex) of the content
    it was recorded with (service/identity.py): the same id with other content is not a
    duplicate. None for receipts written before digests were kept (schema version 5)."""

    source: str
    event_id: str
    client_id: str | None
    outcome: str
    recorded_at: str
    digest: str | None = None


@dataclass(slots=True)  # a value: never mutated after construction
class TaskRow:
    """A tasks row as stored: its columns, and the task it holds (JSON text)."""

    task_id: str
    client_id: str
    status: str
    owner: str
    due: str
    task: str
    fires_at: str | None


@dataclass(slots=True)  # a value: never mutated after construction
class ClientRow:
    """A clients row's columns beside its snapshot (what reads and the clock search)."""

    client_id: str
    state: str
    seq: int
    next_due: str | None


@dataclass(slots=True)
class StoredRows:
    """What the store keeps about some clients beside their history (`kapflow verify`
    recomputes each from the history): client rows, task rows and parked-event counts,
    by client id (a client the store has nothing of is absent)."""

    clients: dict[str, ClientRow] = field(default_factory=dict)
    tasks: dict[str, list[TaskRow]] = field(default_factory=dict)
    parked: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)  # a value: never mutated after construction
class Unbacked:
    """A row that the row it stands for is missing from (`kapflow verify`): `table` holds
    it, `key` names it, `detail` says what is missing."""

    table: str
    key: str
    client_id: str | None
    detail: str


@dataclass(slots=True)
class BatchWrites:
    """Everything one batch changes, written by the adapter in one transaction."""

    history: list[HistoryEntry] = field(default_factory=list)
    receipts: dict[tuple[str, str], Receipt] = field(default_factory=dict)
    rejections: list[RejectedRecord] = field(default_factory=list)
    parked_added: dict[tuple[str, str], ParkedEvent] = field(default_factory=dict)
    parked_removed: set[tuple[str, str]] = field(default_factory=set)
    clients: dict[str, ClientSnapshot] = field(default_factory=dict)
    tasks: dict[str, Task] = field(default_factory=dict)
    outbox: list[OutboxRef] = field(default_factory=list)


class StoreTransaction(Protocol):
    """Reads inside the write transaction (PostgreSQL locks the client rows it returns)."""

    def receipts(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], Receipt]: ...

    def clients(self, client_ids: list[str]) -> dict[str, ClientSnapshot]: ...

    def parked(self, client_id: str) -> list[ParkedEvent]: ...

    # A client's history in seq order (a late fact re-derives the client from its facts).
    def history(self, client_id: str) -> list[HistoryEntry]: ...

    def write(self, batch: BatchWrites) -> None: ...


class StoreError(Exception):
    """A database problem the caller may retry (lost connection, lock conflict)."""


class UnstorableData(Exception):
    """The database refused a value of the batch itself (a character PostgreSQL text cannot
    hold, a constraint the data breaks): retried, the same batch fails the same way.

    Deliberately not a `StoreError`, which means "the store is unwell, retry": a caller
    that gets this must find the input at fault (see service/isolation), not wait.
    """


class EventStore(Protocol):
    url: str
    # The schema version this store was migrated from when it was opened, or None.
    migrated_from: str | None

    def transaction(self) -> AbstractContextManager[StoreTransaction]: ...

    # Reads ------------------------------------------------------------------------------
    def get_client(self, client_id: str) -> ClientSnapshot | None: ...

    def clients(self, state: str | None = None, limit: int = 1000) -> list[ClientSnapshot]: ...

    def client_ids(self) -> Iterator[str]: ...

    def count_by_state(self) -> dict[str, int]: ...

    def clients_due(self, before: str, limit: int = 100_000) -> list[ClientSnapshot]: ...

    def tasks_due(self, before: str, limit: int = 100_000) -> list[Task]: ...

    def open_task_counts(self, overdue_before: str) -> dict[str, tuple[int, int]]: ...

    def history(self, client_id: str) -> list[HistoryEntry]: ...

    def iter_history(self) -> Iterator[HistoryEntry]: ...

    # Several clients' histories and snapshots, one per id asked and in that order, read
    # at one moment in a couple of statements however many ids (`kapflow verify` reads
    # its clients a batch at a time: a statement per client cost a round trip each).
    def client_histories(self, client_ids: Sequence[str]) -> list[ClientHistory]: ...

    def tasks(
        self,
        *,
        open_only: bool = False,
        owner: str | None = None,
        due_before: str | None = None,
        client_id: str | None = None,
        limit: int = 10000,
    ) -> list[Task]: ...

    def task(self, task_id: str) -> Task | None: ...

    def rejections(
        self, limit: int = 100, after: int = 0, client_id: str | None = None
    ) -> list[tuple[int, RejectedRecord]]: ...

    def parked_events(self, client_id: str | None = None) -> list[ParkedEvent]: ...

    def outbox_after(self, position: int, limit: int = 500) -> list[OutboxRow]: ...

    def unpublished(self, limit: int = 500) -> list[OutboxRow]: ...

    def mark_published(self, positions: list[int], at: str) -> None: ...

    def prune_outbox(self, published_before: str) -> int: ...

    def stats(self) -> dict[str, int]: ...
    # Reads for `kapflow verify` (service/audit.py, service/store_head.py) ------------------
    def stored_rows(self, client_ids: Sequence[str]) -> StoredRows: ...

    def receipts_of(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Receipt]: ...

    # Receipts with no record behind them, parked events and rejections with no receipt,
    # outbox rows pointing at nothing, tasks of a client the store does not know.
    def unbacked_rows(self) -> Iterator[Unbacked]: ...

    # History entries and rejections (keys) recorded after the oldest outbox row still
    # kept, that have no outbox row.
    def missing_from_outbox(self) -> tuple[list[HistoryEntry], list[tuple[str, str]]]: ...

    # Unpublished outbox positions (ascending) and the greatest published one, or None.
    def outbox_positions(self) -> tuple[list[int], int | None]: ...

    # (position, client_id, seq, hash) of history rows after `after`, by position.
    def history_links(self, after: int, limit: int) -> list[tuple[int, str, int, str]]: ...

    # The greatest position of the history and of the rejected log (0 when empty).
    def last_positions(self) -> tuple[int, int]: ...

    # Re-encode every stored codec value not sealed with the store cipher's first key, one
    # transaction per chunk, yielding how many each rewrote (`kapflow rotate-key`).
    def reseal(self, chunk: int = 500) -> Iterator[int]: ...

    def close(self) -> None: ...
