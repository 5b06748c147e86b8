"""Audit: replay a client's history, verify every recorded outcome and hash chain, export.

Replay is not a second implementation: it feeds the recorded events through the same
`engine.apply` that produced them.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TextIO

from events import CloudEvent, parse_event
from kapflow.service.ingest import compact_json
from kapflow.store.base import EventStore, HistoryEntry, entry_hash
from workflow.client import GENESIS_HASH, ClientSnapshot
from workflow.engine import Outcome, apply
from workflow.policy import DEFAULT_POLICY, CarePolicy
from workflow.states.pathway import PATHWAY_VERSION
from workflow.tasks import iso

# Snapshot fields not reproduced by a replay of history alone.
_NOT_REPLAYED = ("parked",)


def _event_of(entry: HistoryEntry) -> CloudEvent:
    event = parse_event(entry.event)
    if not isinstance(event, CloudEvent):
        raise ValueError(f"recorded event {entry.client_id}#{entry.seq} no longer parses")
    return event


@dataclass(slots=True)
class Replay:
    client: ClientSnapshot
    applied: int
    skipped: int


def replay(
    entries: Iterable[HistoryEntry],
    client_id: str,
    *,
    as_of: datetime | None = None,
    known_at: datetime | None = None,
    policy: CarePolicy = DEFAULT_POLICY,
) -> Replay:
    """Rebuild a client from its history.

    `as_of`: the events that happened (CloudEvents `time`) up to T.
    `known_at`: what kapflow had recorded by T (its record time).
    """
    as_of_text = iso(as_of) if as_of else None
    known_at_text = iso(known_at) if known_at else None
    client = ClientSnapshot(client_id)
    applied = skipped = 0
    for entry in entries:
        if as_of_text is not None and entry.occurred_at > as_of_text:
            continue
        if known_at_text is not None and entry.recorded_at > known_at_text:
            continue
        outcome = apply(client, _event_of(entry), policy)
        if outcome.accepted:
            client = outcome.client
            client.last_hash = entry.hash
            applied += 1
        else:
            # Seen without the events that came before it in time; not applicable then.
            skipped += 1
    return Replay(client, applied, skipped)


def replay_view(
    entries: list[HistoryEntry],
    client_id: str,
    as_of: datetime | None = None,
    known_at: datetime | None = None,
) -> dict[str, Any]:
    """The client object as it stood (SPEC §7 `kapflow replay ID --json`), for every runtime."""
    result = replay(entries, client_id, as_of=as_of, known_at=known_at)
    view = result.client.view()
    view.pop("parked_events", None)
    view["as_of"] = iso(as_of) if as_of else None
    view["known_at"] = iso(known_at) if known_at else None
    view["events_applied"] = result.applied
    if result.client.state == "new":
        view["state"] = None
    return view


@dataclass(frozen=True, slots=True)
class Divergence:
    client_id: str
    seq: int | None
    kind: str  # chain | gap | outcome | state | snapshot | version | unreadable
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "seq": self.seq,
            "kind": self.kind,
            "detail": self.detail,
        }


@dataclass(slots=True)
class VerifyReport:
    clients: int = 0
    entries: int = 0
    divergences: list[Divergence] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.divergences

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "clients": self.clients,
            "entries": self.entries,
            "pathway_version": PATHWAY_VERSION,
            "divergences": [d.as_dict() for d in self.divergences],
        }


def _verify_client(
    client_id: str,
    entries: list[HistoryEntry],
    stored: ClientSnapshot | None,
    policy: CarePolicy,
    report: VerifyReport,
) -> None:
    client = ClientSnapshot(client_id)
    previous_hash = GENESIS_HASH
    found = report.divergences.append
    for expected_seq, entry in enumerate(entries, start=1):
        report.entries += 1
        if entry.seq != expected_seq:
            found(Divergence(client_id, entry.seq, "gap", f"expected seq {expected_seq}"))
        if entry.prev_hash != previous_hash:
            found(Divergence(client_id, entry.seq, "chain", "prev_hash does not link"))
        if entry_hash(entry) != entry.hash:
            found(Divergence(client_id, entry.seq, "chain", "entry hash does not match content"))
        previous_hash = entry.hash
        if entry.pathway_version != PATHWAY_VERSION:
            found(
                Divergence(
                    client_id,
                    entry.seq,
                    "version",
                    f"recorded by pathway {entry.pathway_version}; this is {PATHWAY_VERSION}",
                )
            )
            return
        try:
            event = _event_of(entry)
        except ValueError as error:
            found(Divergence(client_id, entry.seq, "unreadable", str(error)))
            return
        outcome: Outcome = apply(client, event, policy)
        if not outcome.accepted:
            codes = ",".join(r.code for r in outcome.reasons)
            found(
                Divergence(
                    client_id, entry.seq, "outcome", f"replay gives {outcome.outcome} ({codes})"
                )
            )
            return
        if outcome.to_state != entry.to_state or outcome.from_state != entry.from_state:
            found(
                Divergence(
                    client_id,
                    entry.seq,
                    "state",
                    f"recorded {entry.from_state}->{entry.to_state}, replay gives "
                    f"{outcome.from_state}->{outcome.to_state}",
                )
            )
        if compact_json(outcome.record()) != entry.outcome:
            found(Divergence(client_id, entry.seq, "outcome", "recorded tasks/reasons differ"))
        client = outcome.client
        client.last_hash = entry.hash
    if stored is None:
        if entries:
            found(Divergence(client_id, None, "snapshot", "history without a client snapshot"))
        return
    replayed = client.to_record()
    current = stored.to_record()
    for name in _NOT_REPLAYED:
        replayed.pop(name, None)
        current.pop(name, None)
    if replayed != current:
        differing = sorted(k for k in current if current.get(k) != replayed.get(k))
        found(Divergence(client_id, None, "snapshot", "snapshot differs in " + ",".join(differing)))


def verify(store: EventStore, policy: CarePolicy = DEFAULT_POLICY) -> VerifyReport:
    """Re-run every history through the engine; check every chain and snapshot."""
    report = VerifyReport()
    seen: set[str] = set()
    current_id: str | None = None
    current: list[HistoryEntry] = []

    def finish(client_id: str, entries: list[HistoryEntry]) -> None:
        report.clients += 1
        seen.add(client_id)
        _verify_client(client_id, entries, store.get_client(client_id), policy, report)

    for entry in store.iter_history():
        if entry.client_id != current_id:
            if current_id is not None:
                finish(current_id, current)
            current_id, current = entry.client_id, []
        current.append(entry)
    if current_id is not None:
        finish(current_id, current)
    for client_id in store.client_ids():
        if client_id not in seen:
            stored = store.get_client(client_id)
            if stored is not None and stored.seq > 0:
                report.divergences.append(
                    Divergence(client_id, None, "gap", "client has a snapshot but no history")
                )
    return report


EXPORT_COLUMNS = (
    "client_id",
    "seq",
    "occurred_at",
    "recorded_at",
    "type",
    "source",
    "event_id",
    "from_state",
    "to_state",
    "pathway_version",
    "tasks_opened",
    "tasks_closed",
    "reasons",
    "prev_hash",
    "hash",
)


def export_jsonl(entries: Iterable[HistoryEntry], out: TextIO) -> int:
    count = 0
    for entry in entries:
        out.write(compact_json(entry.as_dict()) + "\n")
        count += 1
    return count


def _csv_row(entry: HistoryEntry) -> list[Any]:
    outcome = json.loads(entry.outcome)
    opened = [c["task"]["code"] for c in outcome["tasks"] if c["change"] == "opened"]
    closed = [c["task"]["code"] for c in outcome["tasks"] if c["change"] == "closed"]
    return [
        entry.client_id,
        entry.seq,
        entry.occurred_at,
        entry.recorded_at,
        entry.type,
        entry.source,
        entry.event_id,
        entry.from_state,
        entry.to_state,
        entry.pathway_version,
        ";".join(opened),
        ";".join(closed),
        ";".join(outcome.get("reasons", [])),
        entry.prev_hash,
        entry.hash,
    ]


def export_csv(entries: Iterable[HistoryEntry], out: TextIO) -> int:
    writer = csv.writer(out)
    writer.writerow(EXPORT_COLUMNS)
    count = 0
    for entry in entries:
        writer.writerow(_csv_row(entry))
        count += 1
    return count


def csv_text(entries: Iterable[HistoryEntry]) -> Iterator[str]:
    """CSV export as chunks of text, for streaming HTTP responses."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(EXPORT_COLUMNS)
    for entry in entries:
        writer.writerow(_csv_row(entry))
        if buffer.tell() > 64_000:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()
