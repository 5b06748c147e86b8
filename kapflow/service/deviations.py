"""The deviation report: every protocol deviation kapflow recorded, for auditors and the
clinical lead (`kapflow deviations`, `GET /v1/deviations`).

A deviation is a history entry whose recorded outcome says `deviation` (SPEC §3): a fact
of care recorded although it broke a rule, with a `review-protocol-deviation` task. A
later fact may re-judge an earlier dosing at the dosing's own time (a clearance that was in
force then, delivered late): its entry lists the dosing under `rejudged`, and `now: []`
means the deviation is resolved. A dosing recorded within the protocol that a late fact
shows broke a rule after all (a revocation dated before it) is reported too, as revealed.

This is a report, not a hot path: it reads the whole history once, one client at a time in
sequence order (`EventStore.iter_history`), parses only the entries that mention a
deviation, and reads each review task's status from the store's tasks.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from kapflow.service.csv_cells import csv_cells
from kapflow.service.ingest import compact_json
from kapflow.service.outbox import REVIEW_CODE
from kapflow.store.base import EventStore, HistoryEntry

OPEN, RESOLVED, REVIEWED = "open", "resolved", "reviewed"
STATUSES = (OPEN, RESOLVED, REVIEWED)
_CLOSED_TASK = frozenset({"completed", "cancelled"})


@dataclass(slots=True)
class DeviationRow:
    """One deviation: the entry that recorded the fact, the rules it broke, its review."""

    client_id: str
    seq: int
    event_id: str
    event_type: str
    occurred_at: str
    recorded_at: str
    pathway_version: str
    rules: list[str]
    reasons: list[dict[str, Any]]
    review_task_id: str | None = None
    status: str = OPEN
    resolved_by_event_id: str | None = None
    # Set when the dosing was recorded within the protocol and a late fact revealed the break.
    revealed_by_event_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "seq": self.seq,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "occurred_at": self.occurred_at,
            "recorded_at": self.recorded_at,
            "pathway_version": self.pathway_version,
            "rules": self.rules,
            "reasons": self.reasons,
            "review_task_id": self.review_task_id,
            "status": self.status,
            "resolved_by_event_id": self.resolved_by_event_id,
            "revealed_by_event_id": self.revealed_by_event_id,
        }


COLUMNS = (
    "client_id",
    "seq",
    "event_id",
    "event_type",
    "occurred_at",
    "recorded_at",
    "pathway_version",
    "rules",
    "reasons",
    "review_task_id",
    "status",
    "resolved_by_event_id",
    "revealed_by_event_id",
)


@dataclass(slots=True)
class _ClientDeviations:
    """One client's deviations, keyed by the deviating event's id, as its history is read."""

    entries: dict[str, HistoryEntry] = field(default_factory=dict)  # every entry, by event id
    rows: dict[str, DeviationRow] = field(default_factory=dict)

    def read(self, entry: HistoryEntry) -> None:
        self.entries[entry.event_id] = entry
        text = entry.outcome
        if '"deviation' not in text and '"rejudged"' not in text:
            return  # most entries: no JSON parsing
        outcome = json.loads(text)
        if outcome.get("outcome") == "deviation":
            reasons = list(outcome.get("deviations", []))
            self.rows[entry.event_id] = DeviationRow(
                entry.client_id,
                entry.seq,
                entry.event_id,
                entry.type,
                entry.occurred_at,
                entry.recorded_at,
                entry.pathway_version,
                list(dict.fromkeys(reason["code"] for reason in reasons)),
                reasons,
                review_task_id=_review_task(outcome, entry.event_id),
            )
        for item in outcome.get("rejudged", ()):
            self._rejudged(entry, outcome, item)

    def _rejudged(self, entry: HistoryEntry, outcome: dict[str, Any], item: dict[str, Any]) -> None:
        event_id = str(item["event_id"])
        row = self.rows.get(event_id)
        if row is None:
            dosing = self.entries.get(event_id)
            if dosing is None or not item["now"]:
                return
            row = self.rows[event_id] = DeviationRow(
                dosing.client_id,
                dosing.seq,
                dosing.event_id,
                dosing.type,
                dosing.occurred_at,
                dosing.recorded_at,
                dosing.pathway_version,
                [],
                [],
                revealed_by_event_id=entry.event_id,
            )
        if item["now"]:
            row.rules = list(dict.fromkeys([*row.rules, *item["now"]]))
            row.resolved_by_event_id = None
        else:
            row.resolved_by_event_id = entry.event_id
        row.review_task_id = _review_task(outcome, event_id) or row.review_task_id


def _review_task(outcome: dict[str, Any], focus: str) -> str | None:
    for change in outcome["tasks"]:
        task = change["task"]
        if task["code"] == REVIEW_CODE and task["focus"] == focus:
            return str(task["id"])
    return None


def recorded_deviations(
    store: EventStore,
    *,
    since: str | None = None,
    until: str | None = None,
    open_only: bool = False,
    client_id: str | None = None,
) -> Iterator[DeviationRow]:
    """Every deviation whose event happened (`occurred_at`) in [since, until], by client
    and sequence; `open_only`: only those whose review is still open; `client_id`: only
    that client's (one history read instead of the whole store).

    Status: `resolved` when a later fact re-judged the dosing and no rule is broken any
    more; `reviewed` when its review task was closed by someone; `open` otherwise.
    """
    current: str | None = None
    client = _ClientDeviations()
    for entry in store.history(client_id) if client_id else store.iter_history():
        if entry.client_id != current:
            yield from _finish(store, client, since, until, open_only)
            current, client = entry.client_id, _ClientDeviations()
        client.read(entry)
    yield from _finish(store, client, since, until, open_only)


def _finish(
    store: EventStore,
    client: _ClientDeviations,
    since: str | None,
    until: str | None,
    open_only: bool,
) -> Iterator[DeviationRow]:
    for row in sorted(client.rows.values(), key=lambda r: r.seq):
        if (since is not None and row.occurred_at < since) or (
            until is not None and row.occurred_at > until
        ):
            continue
        row.status = _status(store, row)
        if open_only and row.status != OPEN:
            continue
        yield row


def _status(store: EventStore, row: DeviationRow) -> str:
    if row.resolved_by_event_id is not None:
        return RESOLVED
    task = store.task(row.review_task_id) if row.review_task_id else None
    if task is not None and task.status in _CLOSED_TASK:
        return REVIEWED
    return OPEN


def write_deviations(rows: Iterable[DeviationRow], out: TextIO, fmt: str = "jsonl") -> int:
    """JSON lines (one object per deviation), or CSV with `COLUMNS` (lists joined by `;`,
    reasons as their codes' messages `CODE: message`)."""
    writer = csv.writer(out) if fmt == "csv" else None
    if writer is not None:
        writer.writerow(COLUMNS)
    count = 0
    for row in rows:
        record = row.as_dict()
        if writer is not None:
            record["rules"] = ";".join(row.rules)
            record["reasons"] = ";".join(f"{r['code']}: {r['message']}" for r in row.reasons)
            writer.writerow(csv_cells(record[c] for c in COLUMNS))
        else:
            out.write(compact_json(record) + "\n")
        count += 1
    return count
