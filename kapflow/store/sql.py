"""SQL both adapters share: the text differs only in the parameter placeholder.

`SqlReads` holds the reads written the same way for SQLite (`?`) and PostgreSQL (`%s`);
an adapter supplies `placeholder` and `_query`, and keeps what really differs (how it
streams, locks and writes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from kapflow.store.base import (
    HistoryEntry,
    OutboxRef,
    OutboxRow,
    ParkedEvent,
    RejectedRecord,
)
from workflow.tasks import OPEN_STATUSES, Task

HISTORY_COLUMNS = (
    "client_id, seq, source, event_id, type, occurred_at, recorded_at, pathway_version,"
    " from_state, to_state, event, outcome, prev_hash, hash"
)

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


def outbox_rows(rows: list[Any]) -> list[OutboxRow]:
    """Decode rows of OUTBOX_SELECT."""
    out: list[OutboxRow] = []
    for row in rows:
        ref = OutboxRef(*row[1:7])
        record: HistoryEntry | RejectedRecord = (
            HistoryEntry(*row[7:21]) if ref.kind == "history" else RejectedRecord(*row[21:30])
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
        statuses = sorted(OPEN_STATUSES)
        clauses.append(f"status IN ({', '.join(placeholder for _ in statuses)})")
        params.extend(statuses)
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
        return [Task.from_dict(orjson.loads(row[0])) for row in rows]

    def rejections(self, limit: int = 100, after: int = 0) -> list[tuple[int, RejectedRecord]]:
        p = self.placeholder
        rows = self._query(
            "SELECT position, key_source, key_id, source, event_id, client_id, type,"
            f" recorded_at, reasons, original FROM rejections WHERE position > {p}"
            f" ORDER BY position LIMIT {p}",
            (after, limit),
        )
        return [(row[0], RejectedRecord(*row[1:])) for row in rows]

    def parked_events(self, client_id: str | None = None) -> list[ParkedEvent]:
        sql = (
            "SELECT source, event_id, client_id, type, occurred_at, recorded_at, event, reasons"
            " FROM parked"
        )
        if client_id is None:
            return [ParkedEvent(*row) for row in self._query(sql + " ORDER BY arrival")]
        where = f" WHERE client_id = {self.placeholder} ORDER BY arrival"
        return [ParkedEvent(*row) for row in self._query(sql + where, (client_id,))]

    def outbox_after(self, position: int, limit: int = 500) -> list[OutboxRow]:
        p = self.placeholder
        rows = self._query(
            OUTBOX_SELECT + f" WHERE o.position > {p} ORDER BY o.position LIMIT {p}",
            (position, limit),
        )
        return outbox_rows(rows)

    def unpublished(self, limit: int = 500) -> list[OutboxRow]:
        rows = self._query(
            OUTBOX_SELECT
            + f" WHERE o.published_at IS NULL ORDER BY o.position LIMIT {self.placeholder}",
            (limit,),
        )
        return outbox_rows(rows)
