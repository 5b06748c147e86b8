"""SQL both adapters share: the text differs only in the parameter placeholder.

`SqlReads` holds the reads written the same way for SQLite (`?`) and PostgreSQL (`%s`);
an adapter supplies `placeholder` and `_query`, and keeps what really differs (how it
streams, locks and writes).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import orjson

from kapflow.store.base import (
    ClientHistory,
    ClientRow,
    HistoryEntry,
    OutboxRef,
    OutboxRow,
    ParkedEvent,
    Receipt,
    RejectedRecord,
    StoredRows,
    TaskRow,
    Unbacked,
)
from kapflow.store.codec import StorageCodec, pack_hash, row_context, unpack_hash
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

# The columns that name a row, to which each sealed value of it is bound (store/codec.py,
# format 0x04): stable from the insert on, unlike `position` and `arrival`, which the
# database hands out.
ROW_BINDING: dict[str, tuple[str, ...]] = {
    "history": ("client_id", "seq"),
    "clients": ("client_id",),
    "tasks": ("task_id",),
    "rejections": ("key_source", "key_id"),
    "parked": ("source", "event_id"),
}

# Whether a store holds any codec value at all (a writer with a key may mark only an
# empty store encrypted; store/codec.py `key_check_to_write`).
HOLDS_VALUES = "SELECT " + " OR ".join(f"EXISTS (SELECT 1 FROM {t})" for t in ENCODED_COLUMNS)


# Where each value is stored, as its seal's associated data: one helper per table.
def history_context(client_id: str, seq: int, column: str) -> bytes:
    return row_context("history", column, client_id, seq)


def snapshot_context(client_id: str) -> bytes:
    return row_context("clients", "snapshot", client_id)


def task_context(task_id: str) -> bytes:
    return row_context("tasks", "task", task_id)


def rejection_context(key_source: str, key_id: str, column: str) -> bytes:
    return row_context("rejections", column, key_source, key_id)


def parked_context(source: str, event_id: str, column: str) -> bytes:
    return row_context("parked", column, source, event_id)


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


# `kapflow verify`: rows that stand for another row which is not there. Each is a search
# of a key or unique index (history by (source, event_id) has none: SQLite builds a
# transient one for the join, PostgreSQL hashes it), so one pass over each table.
UNBACKED_SELECTS = (
    # A receipt answers `duplicate` to the event it names: it must stand for a record.
    "SELECT 'receipts', r.source || ' ' || r.event_id, r.client_id, 'receipt ' || r.outcome"
    " || ' with no ' || CASE r.outcome WHEN 'parked' THEN 'parked event'"
    " WHEN 'rejected' THEN 'rejected-log row' ELSE 'history entry' END"
    " FROM receipts r"
    " LEFT JOIN history h ON r.outcome IN ('accepted', 'deviation')"
    " AND h.source = r.source AND h.event_id = r.event_id"
    " LEFT JOIN parked p ON r.outcome = 'parked' AND p.source = r.source"
    " AND p.event_id = r.event_id"
    " LEFT JOIN rejections j ON r.outcome = 'rejected' AND j.key_source = r.source"
    " AND j.key_id = r.event_id"
    " WHERE h.client_id IS NULL AND p.client_id IS NULL AND j.key_id IS NULL",
    "SELECT 'parked', p.source || ' ' || p.event_id, p.client_id, 'parked event with no'"
    " || ' parked receipt' FROM parked p LEFT JOIN receipts r ON r.source = p.source"
    " AND r.event_id = p.event_id WHERE r.outcome IS NULL OR r.outcome <> 'parked'",
    "SELECT 'rejections', j.key_source || ' ' || j.key_id, j.client_id, 'rejected-log row'"
    " || ' with no rejected receipt' FROM rejections j LEFT JOIN receipts r"
    " ON r.source = j.key_source AND r.event_id = j.key_id"
    " WHERE r.outcome IS NULL OR r.outcome <> 'rejected'",
    "SELECT 'outbox', CAST(o.position AS TEXT), o.client_id, 'outbox row pointing at no '"
    " || CASE o.kind WHEN 'history' THEN 'history entry' ELSE 'rejected-log row' END"
    " FROM outbox o LEFT JOIN history h ON o.kind = 'history' AND h.client_id = o.client_id"
    " AND h.seq = o.seq LEFT JOIN rejections j ON o.kind = 'rejection'"
    " AND j.key_source = o.key_source AND j.key_id = o.key_id"
    " WHERE h.client_id IS NULL AND j.key_id IS NULL",
    # Tasks of a client with neither a client row nor history: the per-client checks,
    # which read tasks by client id, cannot meet them.
    "SELECT 'tasks', t.task_id, t.client_id, 'task of a client with no history' FROM tasks t"
    " WHERE NOT EXISTS (SELECT 1 FROM clients c WHERE c.client_id = t.client_id)"
    " AND NOT EXISTS (SELECT 1 FROM history h WHERE h.client_id = t.client_id)",
)


def history_entry(row: Sequence[Any], codec: StorageCodec) -> HistoryEntry:
    """A row of HISTORY_COLUMNS as the entry it records (logical text, hex hashes)."""
    decode = codec.decode
    client_id, seq = row[0], row[1]
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
        decode(row[10], history_context(client_id, seq, "event")),
        decode(row[11], history_context(client_id, seq, "outcome")),
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
    snapshots = {
        client_id: snapshot_of(client_id, value, codec) for client_id, value in snapshot_rows
    }
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
        encode(entry.event, history_context(entry.client_id, entry.seq, "event")),
        encode(entry.outcome, history_context(entry.client_id, entry.seq, "outcome")),
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
        codec.decode(row[7], rejection_context(key_source, key_id, "reasons")),
        codec.decode(row[8], rejection_context(key_source, key_id, "original")),
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
        codec.encode(
            record.reasons, rejection_context(record.key_source, record.key_id, "reasons")
        ),
        codec.encode(
            record.original, rejection_context(record.key_source, record.key_id, "original")
        ),
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
        codec.decode(row[6], parked_context(source, event_id, "event")),
        codec.decode(row[7], parked_context(source, event_id, "reasons")),
    )


def parked_row(parked: ParkedEvent, codec: StorageCodec) -> tuple[Any, ...]:
    return (
        parked.source,
        parked.event_id,
        parked.client_id,
        parked.type,
        parked.occurred_at,
        parked.recorded_at,
        codec.encode(parked.event, parked_context(parked.source, parked.event_id, "event")),
        codec.encode(parked.reasons, parked_context(parked.source, parked.event_id, "reasons")),
    )


def snapshot_of(client_id: str, value: Any, codec: StorageCodec) -> ClientSnapshot:
    return ClientSnapshot.from_record(
        orjson.loads(codec.decode(value, snapshot_context(client_id)))
    )


def snapshot_value(client: ClientSnapshot, codec: StorageCodec) -> bytes:
    """A client's snapshot as stored in clients.snapshot."""
    return codec.encode(
        orjson.dumps(client.to_record()).decode(), snapshot_context(client.client_id)
    )


def task_of(task_id: str, value: Any, codec: StorageCodec) -> Task:
    return Task.from_dict(orjson.loads(codec.decode(value, task_context(task_id))))


def task_value(task: Task, codec: StorageCodec) -> bytes:
    """A task as stored in tasks.task."""
    return codec.encode(orjson.dumps(task.as_dict()).decode(), task_context(task.id))


# `kapflow rotate-key`: the rows of a table a chunk at a time, with what names each row.
def reseal_select(table: str, placeholder: str) -> str:
    key, columns = ENCODED_COLUMNS[table]
    p = placeholder
    return (
        f"SELECT {key}, {', '.join(ROW_BINDING[table])}, {', '.join(columns)} FROM {table}"
        f" WHERE {key} > {p} ORDER BY {key} LIMIT {p}"
    )


def reseal_update(table: str, placeholder: str) -> str:
    key, columns = ENCODED_COLUMNS[table]
    assignments = ", ".join(f"{column} = {placeholder}" for column in columns)
    return f"UPDATE {table} SET {assignments} WHERE {key} = {placeholder}"


def resealed(
    table: str, rows: Sequence[Sequence[Any]], codec: StorageCodec
) -> list[tuple[Any, ...]]:
    """The rows of `reseal_select` holding a value not sealed and bound with the write key,
    as parameters of `reseal_update`: every value of the row sealed again, bound to it.

    Each value is read as the store's mode allows: a store already bound refuses a clear
    value here too, so a forged row is never sealed into looking genuine.
    """
    columns = ENCODED_COLUMNS[table][1]
    naming = len(ROW_BINDING[table])
    out: list[tuple[Any, ...]] = []
    for row in rows:
        values = row[1 + naming :]
        if not any(map(codec.needs_reseal, values)):
            continue
        key = row[1 : 1 + naming]
        contexts = [row_context(table, column, *key) for column in columns]
        out.append(
            (
                *(
                    codec.encode(codec.decode(v, c), c)
                    for v, c in zip(values, contexts, strict=True)
                ),
                row[0],
            )
        )
    return out


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
            f"SELECT task_id, task FROM tasks {clauses} ORDER BY due, task_id LIMIT {p}",
            [*params, limit],
        )
        return [task_of(row[0], row[1], self.codec) for row in rows]

    def task(self, task_id: str) -> Task | None:
        rows = self._query(f"SELECT task FROM tasks WHERE task_id = {self.placeholder}", [task_id])
        return task_of(task_id, rows[0][0], self.codec) if rows else None

    def clients_due(self, before: str, limit: int = 100_000) -> list[ClientSnapshot]:
        """Clients with a timer due before `before` that the clock has not recorded yet."""
        p = self.placeholder
        rows = self._query(
            f"SELECT client_id, snapshot FROM clients WHERE next_due < {p}"
            f" ORDER BY next_due LIMIT {p}",
            (before, limit),
        )
        return [snapshot_of(row[0], row[1], self.codec) for row in rows]

    def tasks_due(self, before: str, limit: int = 100_000) -> list[Task]:
        """Open tasks due before `before` whose deadline the clock has not recorded yet."""
        p = self.placeholder
        rows = self._query(
            f"SELECT task_id, task FROM tasks WHERE fires_at < {p}"
            f" ORDER BY fires_at, task_id LIMIT {p}",
            (before, limit),
        )
        return [task_of(row[0], row[1], self.codec) for row in rows]

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

    # Reads for `kapflow verify` --------------------------------------------------------
    def _in_chunks(
        self, sql: str, values: Sequence[Any], params: Sequence[Any] = ()
    ) -> Iterator[Any]:
        """`sql` with `{ids}` as an IN list, run over `values` 500 at a time."""
        ordered = sorted(set(values))
        for start in range(0, len(ordered), 500):
            chunk = ordered[start : start + 500]
            ids = "IN (" + ",".join([self.placeholder] * len(chunk)) + ")"
            yield from self._query(sql.format(ids=ids), [*params, *chunk])

    def stored_rows(self, client_ids: Sequence[str]) -> StoredRows:
        rows = StoredRows()
        for client_id, state, seq, next_due in self._in_chunks(
            "SELECT client_id, state, seq, next_due FROM clients WHERE client_id {ids}",
            client_ids,
        ):
            rows.clients[client_id] = ClientRow(client_id, state, seq, next_due)
        for row in self._in_chunks(
            "SELECT task_id, client_id, status, owner, due, task, fires_at FROM tasks"
            " WHERE client_id {ids}",
            client_ids,
        ):
            task_id, client_id, status, owner, due, value, fires_at = row
            text = self.codec.decode(value, task_context(task_id))
            task = TaskRow(task_id, client_id, status, owner, due, text, fires_at)
            rows.tasks.setdefault(task.client_id, []).append(task)
        for tasks in rows.tasks.values():
            tasks.sort(key=lambda task: task.task_id)  # in the query, a sort the index spares
        for client_id, count in self._in_chunks(
            "SELECT client_id, count(*) FROM parked WHERE client_id {ids} GROUP BY client_id",
            client_ids,
        ):
            rows.parked[client_id] = int(count)
        return rows

    def receipts_of(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Receipt]:
        # One search of the primary key per source: a batch of clients names few sources.
        by_source: dict[str, list[str]] = {}
        for source, event_id in keys:
            by_source.setdefault(source, []).append(event_id)
        found: dict[tuple[str, str], Receipt] = {}
        for source, ids in sorted(by_source.items()):
            sql = f"SELECT {RECEIPT_COLUMNS} FROM receipts WHERE source = {self.placeholder}"
            for row in self._in_chunks(sql + " AND event_id {ids}", ids, (source,)):
                found[(source, row[1])] = receipt_of(row)
        return found

    def unbacked_rows(self) -> Iterator[Unbacked]:
        for sql in UNBACKED_SELECTS:
            for table, key, client_id, detail in self._query(sql):
                yield Unbacked(table, key, client_id, detail)

    def missing_from_outbox(self) -> tuple[list[HistoryEntry], list[tuple[str, str]]]:
        # Only rows published are pruned, in position order, so whatever was recorded in a
        # later second than the oldest row still there must still have its row.
        oldest = "(SELECT recorded_at FROM outbox ORDER BY position LIMIT 1)"
        columns = ", ".join(f"h.{column.strip()}" for column in HISTORY_COLUMNS.split(","))
        history = self._query(
            f"SELECT {columns} FROM history h LEFT JOIN outbox o ON o.kind = 'history'"
            " AND o.client_id = h.client_id AND o.seq = h.seq"
            f" WHERE h.recorded_at > {oldest} AND o.position IS NULL"
            " ORDER BY h.client_id, h.seq"
        )
        rejections = self._query(
            "SELECT j.key_source, j.key_id FROM rejections j LEFT JOIN outbox o"
            " ON o.kind = 'rejection' AND o.key_source = j.key_source AND o.key_id = j.key_id"
            f" WHERE j.recorded_at > {oldest} AND o.position IS NULL ORDER BY j.position"
        )
        entries = [history_entry(row, self.codec) for row in history]
        return entries, [(row[0], row[1]) for row in rejections]

    def outbox_positions(self) -> tuple[list[int], int | None]:
        [(published,)] = self._query(
            "SELECT max(position) FROM outbox WHERE published_at IS NOT NULL"
        )
        unpublished = self._query(
            "SELECT position FROM outbox WHERE published_at IS NULL ORDER BY position"
        )
        return [int(row[0]) for row in unpublished], published

    def history_links(self, after: int, limit: int) -> list[tuple[int, str, int, str]]:
        p = self.placeholder
        rows = self._query(
            f"SELECT position, client_id, seq, hash FROM history WHERE position > {p}"
            f" ORDER BY position LIMIT {p}",
            (after, limit),
        )
        return [(int(row[0]), row[1], int(row[2]), unpack_hash(row[3])) for row in rows]

    def last_positions(self) -> tuple[int, int]:
        [(history, rejections)] = self._query(
            "SELECT (SELECT max(position) FROM history), (SELECT max(position) FROM rejections)"
        )
        return int(history or 0), int(rejections or 0)
