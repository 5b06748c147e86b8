"""SQL both adapters share: the text differs only in the parameter placeholder.

`SqlReads` holds the reads written the same way for SQLite (`?`) and PostgreSQL (`%s`);
an adapter supplies `placeholder` and `_query`, and keeps what really differs (how it
streams, locks and writes).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from kapflow.store.base import (
    ClientHistory,
    HistoryEntry,
    OutboxRef,
    OutboxRow,
    ParkedEvent,
    Receipt,
    RejectedRecord,
)
from kapflow.store.codec import StorageCodec, pack_hash, unpack_hash
from workflow.client import ClientSnapshot
from workflow.tasks import OPEN_STATUSES, Task

# Version 2 (issue 10): clients.next_due and the indexes every hot-path read needs.
# Version 3 (issues 9 and 10): the bulky JSON columns hold codec values (compressed, and
# encrypted when a key is set; store/codec.py) and the history hashes their 32 bytes.
# Version 4 (issue 10): new values are written in format 0x03 (zstd with a frozen
# dictionary). Nothing is rewritten: 0x01 values stay readable. The version is raised so
# that a release which cannot read 0x03 refuses the store ("newer than this kapflow")
# instead of failing on its first new value.
# Version 5 (issue 18): receipts.digest, the SHA-256 of the content each (source, id) was
# recorded with, so the same id with other content is refused (`ID_REUSED`), not taken for
# a duplicate. A nullable column added in place; receipts written before it have none.
# A store of an earlier version is migrated in place when it is opened.
SCHEMA_VERSION = "5"

# The columns stored through the codec, by table, with the key that walks the table.
ENCODED_COLUMNS: dict[str, tuple[str, tuple[str, ...]]] = {
    "history": ("position", ("event", "outcome")),
    "clients": ("client_id", ("snapshot",)),
    "tasks": ("task_id", ("task",)),
    "rejections": ("position", ("reasons", "original")),
    "parked": ("arrival", ("event", "reasons")),
}

# The open statuses as SQL literals, not parameters: a partial index on open tasks is
# used only when the query's WHERE visibly implies the index's own.
OPEN_STATUS_SQL = ", ".join(f"'{status}'" for status in sorted(OPEN_STATUSES))

RECEIPT_COLUMNS = "source, event_id, client_id, outcome, recorded_at, digest"

HISTORY_COLUMNS = (
    "client_id, seq, source, event_id, type, occurred_at, recorded_at, pathway_version,"
    " from_state, to_state, event, outcome, prev_hash, hash"
)

# Several clients' histories and snapshots (`client_histories`): `{ids}` is how the
# dialect tests a client_id against a list. Both search a key, (client_id, seq) and
# client_id; the history is ordered by its key, so each client's comes in seq order.
HISTORY_OF_CLIENTS = (
    f"SELECT {HISTORY_COLUMNS} FROM history WHERE client_id {{ids}} ORDER BY client_id, seq"
)
SNAPSHOTS_OF_CLIENTS = "SELECT client_id, snapshot FROM clients WHERE client_id {ids}"

# An outbox row with the history entry or rejection it points at.
OUTBOX_SELECT = (
    "SELECT o.position, o.kind, o.client_id, o.seq, o.key_source, o.key_id, o.recorded_at,"
    " h.client_id, h.seq, h.source, h.event_id, h.type, h.occurred_at, h.recorded_at,"
    " h.pathway_version, h.from_state, h.to_state, h.event, h.outcome, h.prev_hash, h.hash,"
    " r.key_source, r.key_id, r.source, r.event_id, r.client_id, r.type, r.recorded_at,"
    " r.reasons, r.original"
    " FROM outbox o"
    " LEFT JOIN history h ON o.kind = 'history' AND h.client_id = o.client_id"
    " AND h.seq = o.seq"
    " LEFT JOIN rejections r ON o.kind = 'rejection' AND r.key_source = o.key_source"
    " AND r.key_id = o.key_id"
)


def history_entry(row: Sequence[Any], codec: StorageCodec) -> HistoryEntry:
    """A row of HISTORY_COLUMNS as the entry it records (logical text, hex hashes)."""
    decode = codec.decode
    return HistoryEntry(
        row[0],
        row[1],
        row[2],
        row[3],
        row[4],
        row[5],
        row[6],
        row[7],
        row[8],
        row[9],
        decode(row[10]),
        decode(row[11]),
        unpack_hash(row[12]),
        unpack_hash(row[13]),
    )


def client_histories(
    client_ids: Sequence[str],
    history_rows: Iterable[Sequence[Any]],
    snapshot_rows: Iterable[Sequence[Any]],
    codec: StorageCodec,
) -> list[ClientHistory]:
    """Rows of HISTORY_OF_CLIENTS and SNAPSHOTS_OF_CLIENTS as one history per id asked."""
    entries: dict[str, list[HistoryEntry]] = {}
    for row in history_rows:
        entries.setdefault(row[0], []).append(history_entry(row, codec))
    snapshots = {client_id: snapshot_of(value, codec) for client_id, value in snapshot_rows}
    return [
        ClientHistory(client_id, entries.get(client_id, []), snapshots.get(client_id))
        for client_id in client_ids
    ]


def history_row(entry: HistoryEntry, codec: StorageCodec) -> tuple[Any, ...]:
    """An entry as the values of HISTORY_COLUMNS, as stored."""
    encode = codec.encode
    return (
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
        encode(entry.event),
        encode(entry.outcome),
        pack_hash(entry.prev_hash),
        pack_hash(entry.hash),
    )


def receipt_of(row: Sequence[Any]) -> Receipt:
    """A row of RECEIPT_COLUMNS as the receipt (the digest as hex, or None)."""
    source, event_id, client_id, outcome, recorded_at, digest = row
    return Receipt(
        source,
        event_id,
        client_id,
        outcome,
        recorded_at,
        None if digest is None else unpack_hash(digest),
    )


def receipt_row(receipt: Receipt) -> tuple[Any, ...]:
    """A receipt as the values of RECEIPT_COLUMNS: the digest as its 32 bytes."""
    return (
        receipt.source,
        receipt.event_id,
        receipt.client_id,
        receipt.outcome,
        receipt.recorded_at,
        None if receipt.digest is None else pack_hash(receipt.digest),
    )


# A receipt written again (a parked event applied later) keeps its digest when the new one
# has none: the content of an id never changes once recorded.
RECEIPT_REWRITE = (
    "ON CONFLICT (source, event_id) DO UPDATE SET outcome = excluded.outcome,"
    " client_id = excluded.client_id, digest = COALESCE(excluded.digest, receipts.digest)"
)


def rejected_record(row: Sequence[Any], codec: StorageCodec) -> RejectedRecord:
    """A rejections row (key_source … original) as the record."""
    key_source, key_id, source, event_id, client_id, type_, recorded_at = row[:7]
    return RejectedRecord(
        key_source,
        key_id,
        source,
        event_id,
        client_id,
        type_,
        recorded_at,
        codec.decode(row[7]),
        codec.decode(row[8]),
    )


def rejection_row(record: RejectedRecord, codec: StorageCodec) -> tuple[Any, ...]:
    return (
        record.key_source,
        record.key_id,
        record.source,
        record.event_id,
        record.client_id,
        record.type,
        record.recorded_at,
        codec.encode(record.reasons),
        codec.encode(record.original),
    )


def parked_event(row: Sequence[Any], codec: StorageCodec) -> ParkedEvent:
    """A parked row (source … reasons) as the event."""
    source, event_id, client_id, type_, occurred_at, recorded_at = row[:6]
    return ParkedEvent(
        source,
        event_id,
        client_id,
        type_,
        occurred_at,
        recorded_at,
        codec.decode(row[6]),
        codec.decode(row[7]),
    )


def parked_row(parked: ParkedEvent, codec: StorageCodec) -> tuple[Any, ...]:
    return (
        parked.source,
        parked.event_id,
        parked.client_id,
        parked.type,
        parked.occurred_at,
        parked.recorded_at,
        codec.encode(parked.event),
        codec.encode(parked.reasons),
    )


def snapshot_of(value: Any, codec: StorageCodec) -> ClientSnapshot:
    return ClientSnapshot.from_record(orjson.loads(codec.decode(value)))


def task_of(value: Any, codec: StorageCodec) -> Task:
    return Task.from_dict(orjson.loads(codec.decode(value)))


def outbox_rows(rows: list[Any], codec: StorageCodec) -> list[OutboxRow]:
    """Decode rows of OUTBOX_SELECT."""
    out: list[OutboxRow] = []
    for row in rows:
        ref = OutboxRef(*row[1:7])
        record: HistoryEntry | RejectedRecord = (
            history_entry(row[7:21], codec)
            if ref.kind == "history"
            else rejected_record(row[21:30], codec)
        )
        out.append((row[0], ref, record))
    return out


def task_filters(
    open_only: bool,
    owner: str | None,
    due_before: str | None,
    client_id: str | None,
    placeholder: str,
) -> tuple[str, list[Any]]:
    """The WHERE clause of a task query and its parameters."""
    clauses: list[str] = []
    params: list[Any] = []
    if open_only:
        clauses.append(f"status IN ({OPEN_STATUS_SQL})")
    if owner:
        clauses.append(f"owner = {placeholder}")
        params.append(owner)
    if due_before:
        clauses.append(f"due < {placeholder}")
        params.append(due_before)
    if client_id:
        clauses.append(f"client_id = {placeholder}")
        params.append(client_id)
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", params


class SqlReads:
    """Reads of the EventStore interface whose SQL is the same in both dialects."""

    placeholder: str
    codec: StorageCodec

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        raise NotImplementedError

    def tasks(
        self,
        *,
        open_only: bool = False,
        owner: str | None = None,
        due_before: str | None = None,
        client_id: str | None = None,
        limit: int = 10000,
    ) -> list[Task]:
        p = self.placeholder
        clauses, params = task_filters(open_only, owner, due_before, client_id, p)
        rows = self._query(
            f"SELECT task FROM tasks {clauses} ORDER BY due, task_id LIMIT {p}", [*params, limit]
        )
        return [task_of(row[0], self.codec) for row in rows]

    def task(self, task_id: str) -> Task | None:
        rows = self._query(f"SELECT task FROM tasks WHERE task_id = {self.placeholder}", [task_id])
        return task_of(rows[0][0], self.codec) if rows else None

    def clients_due(self, before: str, limit: int = 100_000) -> list[ClientSnapshot]:
        """Clients with a timer due before `before` that the clock has not recorded yet."""
        p = self.placeholder
        rows = self._query(
            f"SELECT snapshot FROM clients WHERE next_due < {p} ORDER BY next_due LIMIT {p}",
            (before, limit),
        )
        return [snapshot_of(row[0], self.codec) for row in rows]

    def tasks_due(self, before: str, limit: int = 100_000) -> list[Task]:
        """Open tasks due before `before` whose deadline the clock has not recorded yet."""
        p = self.placeholder
        rows = self._query(
            f"SELECT task FROM tasks WHERE fires_at < {p} ORDER BY fires_at, task_id LIMIT {p}",
            (before, limit),
        )
        return [task_of(row[0], self.codec) for row in rows]

    def open_task_counts(self, overdue_before: str) -> dict[str, tuple[int, int]]:
        """Open and overdue task counts per owner role, counted in the open-task index."""
        rows = self._query(
            "SELECT owner, count(*),"
            f" sum(CASE WHEN due < {self.placeholder} THEN 1 ELSE 0 END) FROM tasks"
            f" WHERE status IN ({OPEN_STATUS_SQL}) GROUP BY owner",
            (overdue_before,),
        )
        return {owner: (int(total), int(overdue or 0)) for owner, total, overdue in rows}

    def rejections(
        self, limit: int = 100, after: int = 0, client_id: str | None = None
    ) -> list[tuple[int, RejectedRecord]]:
        p = self.placeholder
        own = f" AND client_id = {p}" if client_id is not None else ""
        rows = self._query(
            "SELECT position, key_source, key_id, source, event_id, client_id, type,"
            f" recorded_at, reasons, original FROM rejections WHERE position > {p}{own}"
            f" ORDER BY position LIMIT {p}",
            (after, client_id, limit) if client_id is not None else (after, limit),
        )
        return [(row[0], rejected_record(row[1:], self.codec)) for row in rows]

    def parked_events(self, client_id: str | None = None) -> list[ParkedEvent]:
        sql = (
            "SELECT source, event_id, client_id, type, occurred_at, recorded_at, event, reasons"
            " FROM parked"
        )
        if client_id is None:
            rows = self._query(sql + " ORDER BY arrival")
        else:
            where = f" WHERE client_id = {self.placeholder} ORDER BY arrival"
            rows = self._query(sql + where, (client_id,))
        return [parked_event(row, self.codec) for row in rows]

    def outbox_after(self, position: int, limit: int = 500) -> list[OutboxRow]:
        p = self.placeholder
        rows = self._query(
            OUTBOX_SELECT + f" WHERE o.position > {p} ORDER BY o.position LIMIT {p}",
            (position, limit),
        )
        return outbox_rows(rows, self.codec)

    def unpublished(self, limit: int = 500) -> list[OutboxRow]:
        rows = self._query(
            OUTBOX_SELECT
            + f" WHERE o.published_at IS NULL ORDER BY o.position LIMIT {self.placeholder}",
            (limit,),
        )
        return outbox_rows(rows, self.codec)
